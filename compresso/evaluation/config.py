"""The ``evaluate:`` and ``report:`` sections of a recipe (and of ``compresso evaluate --set``).

Every field has a working default, so ``evaluate: {}`` runs the whole benchmark. Unknown keys
are errors: the recipe loader maps them to YAML lines.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator

TaskName = Literal["upos", "xpos", "ner", "sapn", "sar", "di", "sts"]
ALL_TASKS: tuple[str, ...] = ("upos", "xpos", "ner", "sapn", "sar", "di", "sts")  # the paper's column order


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class FinetuneOverrides(_Strict):
    """Fine-tuning settings; any field left out keeps the task's default (see docs/evaluation.md)."""

    lr: PositiveFloat | None = Field(None, description="Peak learning rate (AdamW).")
    epochs: PositiveInt | None = Field(None, description="Training epochs; the best one on validation is kept.")
    batch_size: PositiveInt | None = Field(None, description="Training batch size (sequences).")
    eval_batch_size: PositiveInt | None = Field(None, description="Batch size for validation and test passes.")
    max_length: int | None = Field(None, ge=8, le=4096, description="Maximum sequence length in sub-tokens.")
    warmup_ratio: float | None = Field(None, ge=0.0, lt=1.0, description="Share of steps with linear warm-up.")
    weight_decay: float | None = Field(None, ge=0.0, description="AdamW weight decay (not on biases/LayerNorm).")
    max_grad_norm: float | None = Field(None, gt=0.0, description="Gradient clipping norm.")
    patience: PositiveInt | None = Field(None, description="Early stopping: epochs without a better validation "
                                                           "score before training stops.")


class HubDataset(_Strict):
    """Where ``source: hub`` finds a task's data: a dataset id with optional config and revision."""

    path: str
    name: str | None = None
    revision: str | None = None


class EfficiencyConfig(_Strict):
    """How size and speed are measured; ``efficiency: false`` turns it off."""

    enabled: bool = True
    gpu: bool = Field(True, description="Measure GPU throughput when CUDA is available.")
    gpu_batch_size: PositiveInt = 128
    gpu_seq_length: PositiveInt = 128
    cpu: bool = Field(True, description="Measure CPU latency.")
    cpu_batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 8])
    cpu_seq_length: PositiveInt = 128
    cpu_threads: PositiveInt = 2
    min_seconds: PositiveFloat = Field(1.0, description="Time each measurement for at least this long.")


class EvaluateConfig(_Strict):
    tasks: list[TaskName] = Field(default_factory=lambda: list(ALL_TASKS),
                                  description="Tasks to run, in this order (a list or 'upos,sapn'; 'all').")
    source: Literal["local", "hub"] = Field("local", description="Read the authors' files from data_dir, or "
                                                                  "the Hugging Face hub through `datasets`.")
    data_dir: str = Field("../shared/data", description="Folder holding ro_rrt/, ronec/, laroseda/, ro_sts/, moroco/.")
    hub_datasets: dict[TaskName, HubDataset] = Field(default_factory=dict,
                                                     description="Per-task hub dataset overrides (source: hub).")
    models: list[str] | None = Field(None, description="Names of the models to evaluate (teacher names, stage "
                                                       "folder names); default: every teacher and the final stage.")
    seeds: PositiveInt = Field(3, description="Fine-tuning runs per model and task (seed, seed+1, ...); "
                                              "scores are reported as mean ± std.")
    jobs: PositiveInt | None = Field(None, description="Fine-tuning jobs run at once (worker processes); default: "
                                                       "sized from free GPU memory and CPU cores, or one per "
                                                       "core pair on CPU. 1 runs them one by one in-process.")
    threads_per_job: PositiveInt | None = Field(None, description="Intra-op threads of each job; default: on CPU "
                                                                  "its share of the cores (at most 2), 1 on GPU. "
                                                                  "Runs are bit-identical on CPU for equal counts.")
    bootstrap_resamples: int = Field(1000, ge=100, description="Paired bootstrap resamples of the test set "
                                                               "(differences between models).")
    max_train_examples: PositiveInt | None = Field(None, description="Train on a fixed random subset (quick runs).")
    max_eval_examples: PositiveInt | None = Field(None, description="Cap validation and test sets (quick runs).")
    validation_fraction: float = Field(0.1, gt=0.0, le=0.5,
                                       description="Share of train held out when a dataset has no validation split.")
    min_validation_examples: PositiveInt = Field(250, description="Hold out at least this many examples when "
                                                                  "carving (at most 25% of train; files of "
                                                                  "fewer than twice as many keep the fraction).")
    finetune: FinetuneOverrides = Field(default_factory=FinetuneOverrides,
                                        description="Settings applied to every task.")
    per_task: dict[TaskName, FinetuneOverrides] = Field(default_factory=dict,
                                                        description="Settings for one task (win over `finetune`).")
    loyalty: bool = Field(True, description="Loyalty of every student to every teacher.")
    efficiency: EfficiencyConfig = Field(default_factory=EfficiencyConfig)

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, v):
        if isinstance(v, str):
            v = list(ALL_TASKS) if v.strip() == "all" else [t.strip() for t in v.split(",") if t.strip()]
        return v

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, v: list[str]):
        if not v:
            raise ValueError("name at least one task")
        dup = sorted({t for t in v if v.count(t) > 1})
        if dup:
            raise ValueError(f"tasks repeated: {', '.join(dup)}")
        return v

    @field_validator("efficiency", mode="before")
    @classmethod
    def _efficiency(cls, v):
        return {"enabled": v} if isinstance(v, bool) else v

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v):
        return [m.strip() for m in v.split(",") if m.strip()] if isinstance(v, str) else v


class ReportConfig(_Strict):
    title: str | None = Field(None, description="Heading of report.md.")
    formats: list[Literal["markdown", "json"]] = Field(default_factory=lambda: ["markdown", "json"],
                                                       description="report.md and/or results.json.")
    plots: bool = Field(True, description="Write scores.png, loyalty.png and efficiency.png.")
    plot_dpi: PositiveInt = 150
    decimals: int = Field(2, ge=0, le=6, description="Decimals for scores (loyalty gets two more).")
