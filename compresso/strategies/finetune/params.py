"""The ``finetune`` strategy's parameters: the task, where its data is, and the fine-tuning settings
(each left out keeps the task's default, as in evaluation)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from compresso.evaluation.config import ALL_TASKS, CustomTask, EvaluateConfig, FinetuneOverrides, HubDataset
from compresso.strategy import StrategyParams

_EVAL = EvaluateConfig.model_fields


class TaskDataParams(StrategyParams):
    """Which task a stage trains on and where its data is: shared by the stages that train task
    models (``finetune``, task distillation), read through evaluation's own task readers."""

    task: str | CustomTask = Field(
        description="A built-in task (upos, xpos, ner, sapn, sar, di, sts), or your own task as a mapping in the "
                    "form of an `evaluate.custom_tasks` entry (name, kind, files, columns; see docs/evaluation.md).")
    data_dir: str = Field(_EVAL["data_dir"].default, description="Built-in tasks: the folder holding ro_rrt/, "
                                                                 "ronec/, laroseda/, ro_sts/, moroco/.")
    source: Literal["local", "hub"] = Field("local", description="Built-in tasks: read the authors' files from "
                                                                 "data_dir, or the Hugging Face hub.")
    hub_dataset: HubDataset | None = Field(None, description="Built-in task, source: hub: the dataset to read "
                                                             "instead of the default one.")
    max_train_examples: int | None = Field(None, ge=1, description=_EVAL["max_train_examples"].description)
    max_eval_examples: int | None = Field(None, ge=1, description=_EVAL["max_eval_examples"].description)
    validation_fraction: float = Field(_EVAL["validation_fraction"].default, gt=0.0, le=0.5,
                                       description=_EVAL["validation_fraction"].description)
    min_validation_examples: int = Field(_EVAL["min_validation_examples"].default, ge=1,
                                         description=_EVAL["min_validation_examples"].description)

    @field_validator("task", mode="before")
    @classmethod
    def _task(cls, v):
        if isinstance(v, str) and v not in ALL_TASKS:
            raise ValueError(f"unknown task {v!r}; a built-in task is one of {', '.join(ALL_TASKS)}, and your own "
                             f"task is given as a mapping (name, kind, files, ...)")
        return v

    @property
    def task_name(self) -> str:
        return self.task if isinstance(self.task, str) else self.task.name

    def data_config(self) -> EvaluateConfig:
        """The evaluation settings that read this task's data (and carry the fine-tuning settings
        when the class has them)."""
        from compresso.evaluation.task_model import data_config

        cfg = data_config(self.task, self.data_dir, self.source, self.hub_dataset,
                          max_train_examples=self.max_train_examples, max_eval_examples=self.max_eval_examples,
                          validation_fraction=self.validation_fraction,
                          min_validation_examples=self.min_validation_examples)
        if isinstance(self, FinetuneOverrides):
            cfg = cfg.model_copy(update={"finetune": self.overrides()})
        return cfg

    def overrides(self) -> FinetuneOverrides:
        """The fine-tuning settings given (the flat ``FinetuneOverrides`` fields of a subclass)."""
        return FinetuneOverrides.model_validate(self.model_dump(include=set(FinetuneOverrides.model_fields)))


class FinetuneParams(FinetuneOverrides, TaskDataParams):
    """``lr``, ``epochs``, ``batch_size``, ``eval_batch_size``, ``max_length``, ``warmup_ratio``,
    ``weight_decay``, ``max_grad_norm``, ``patience`` and ``head`` are evaluation's fine-tuning
    settings (``FinetuneOverrides``), given flat."""

    seed: int | None = Field(None, ge=0, description="Seed of the head's initialisation and the batch order; "
                                                     "default: the recipe's seed.")
