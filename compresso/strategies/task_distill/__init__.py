"""``task_distill``: a task model trained from fine-tuned teacher task models."""

from compresso.strategies.task_distill.params import TaskDistillParams
from compresso.strategies.task_distill.strategy import TaskDistillStrategy

__all__ = ["TaskDistillStrategy", "TaskDistillParams"]
