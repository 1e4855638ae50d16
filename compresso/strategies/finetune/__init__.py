"""Task fine-tuning as a stage: a model a user deploys (``finetune``).

The stage reads the task's data, fine-tunes and picks the best epoch with evaluation's own task
definitions, readers and loop (``compresso.evaluation``), and saves a task model
(``compresso.evaluation.task_model``): a folder plain transformers loads, with the task's labels.
"""

from __future__ import annotations

from compresso.strategies.finetune.params import FinetuneParams, TaskDataParams
from compresso.strategies.finetune.strategy import FinetuneStrategy

__all__ = ["FinetuneStrategy", "FinetuneParams", "TaskDataParams"]
