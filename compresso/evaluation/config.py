"""The ``evaluate:`` and ``report:`` sections of a recipe (and of ``compresso evaluate --set``).

Every field has a working default, so ``evaluate: {}`` runs the whole benchmark. Unknown keys
are errors: the recipe loader maps them to YAML lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

TaskName = Literal["upos", "xpos", "ner", "sapn", "sar", "di", "sts"]
ALL_TASKS: tuple[str, ...] = ("upos", "xpos", "ner", "sapn", "sar", "di", "sts")  # the paper's column order


MAX_SCORE = 1e12
"""Largest regression score magnitude a custom task may hold: training scales scores in float32,
and a value past this is a unit or parsing error far more often than a real score."""


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
    head: Literal["siamese", "cross"] | None = Field(
        None, description="Sentence-pair regression (STS): `siamese` encodes each sentence alone and trains the "
                          "cosine of their mean-pooled states; `cross` encodes the pair as one sequence.")


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
    warmup: int = Field(3, ge=0, description="Untimed CPU passes before timing (caches, allocator, threads).")
    repeats: int = Field(20, ge=3, description="Timed CPU passes at least; the median and its spread are reported.")
    min_seconds: PositiveFloat = Field(1.0, description="Time each measurement for at least this long.")


CONLLU_TAGS = ("upos", "xpos", "feats", "deprel")
"""The CoNLL-U columns a ``format: conllu`` task can tag with (besides ``misc:<key>``)."""

FORMAT_BY_SUFFIX = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".conllu": "conllu"}
ACCEPTED_FORMATS = ("csv (.csv, .tsv), json (.json, .jsonl), conllu (.conllu); tagging tasks also read plain "
                    "conll files (any other suffix)")


class CustomTask(_Strict):
    """A task on the user's own files (``evaluate.custom_tasks``; read by
    ``compresso.evaluation.custom_tasks``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Name in `tasks:`, reports and results.")
    title: str | None = Field(None, description="Column title in the report (default: the name).")
    kind: Literal["classification", "regression", "tagging"]
    format: Literal["csv", "json", "conll", "conllu"] | None = Field(
        None, description="File format; default from the suffix (.csv/.tsv → csv, .json/.jsonl → json, "
                          ".conllu → conllu, any other suffix → conll for tagging).")
    files: dict[Literal["train", "validation", "test"], str] = Field(
        description="train and test files (validation optional: carved from train when missing). Relative "
                    "paths start from the task file's folder (--task-file), or from the current directory "
                    "(a recipe's evaluate.custom_tasks, the Python API).")
    delimiter: str | None = Field(None, description="CSV column separator (default: tab for .tsv, else comma).")
    text: str = Field("text", description="Column with the text (the first sentence of a pair).")
    text_pair: str | None = Field(None, description="Column with the second sentence of a pair.")
    label: str = Field("label", description="Column with the class (classification) or score (regression).")
    labels: list[str] | None = Field(None, description="Class names in this order (default: sorted as found).")
    value_range: tuple[float, float] | None = Field(
        None, description="Regression: lowest and highest score; scores outside it are refused (default: the "
                          "training scores' range).")
    tag: str | None = Field(
        None, description="CoNLL-U: the column that holds the tags: upos, xpos, feats, deprel, or misc:KEY for "
                          "the value of KEY in the MISC column (e.g. misc:NER). Required with format: conllu.")
    token_column: int = Field(1, description="Plain CoNLL: column of the word, counting from 1 as the CoNLL-U "
                                             "specification does.")
    tag_column: int | None = Field(None, description="Plain CoNLL: column of the tag, counting from 1 (default: "
                                                     "the last column).")
    entity_scoring: bool | None = Field(
        None, description="Tagging: score entities (seqeval, BIO tags) instead of tags; default: yes when every "
                          "tag is O or starts with B-/I-.")
    finetune: FinetuneOverrides = Field(default_factory=FinetuneOverrides,
                                        description="Fine-tuning settings for this task: win over the defaults "
                                                    "and evaluate.finetune; evaluate.per_task wins over them.")

    @field_validator("token_column", "tag_column")
    @classmethod
    def _one_based(cls, v, info: ValidationInfo):
        if v is not None and v < 1:
            hint = " (leave tag_column out for the last column)" if info.field_name == "tag_column" else ""
            raise ValueError(f"columns count from 1, as in the CoNLL-U specification (FORM is column 2, UPOS "
                             f"column 4); {v} is not a column{hint}")
        return v

    @field_validator("tag")
    @classmethod
    def _tag(cls, v):
        if v is None:
            return v
        if v.lower() in CONLLU_TAGS:
            return v.lower()
        if v.lower().startswith("misc:") and v[5:].strip():
            return "misc:" + v[5:].strip()
        raise ValueError(f"expected upos, xpos, feats, deprel or misc:KEY (a key of the MISC column); got {v!r}")

    @model_validator(mode="after")
    def _check(self):
        if "train" not in self.files or "test" not in self.files:
            raise ValueError("files needs at least train and test")
        if self.kind == "tagging" and self.text_pair:
            raise ValueError("text_pair is for classification and regression tasks")
        if self.value_range is not None:
            low, high = self.value_range
            if low >= high:
                raise ValueError("value_range: the lowest score must be below the highest")
            if max(abs(low), abs(high)) > MAX_SCORE:
                raise ValueError(f"value_range: scores beyond ±{MAX_SCORE:g} are not supported")
        if self.labels is not None and len(set(self.labels)) < 2:
            raise ValueError("labels: a task needs at least two classes")
        formats = {}
        for split, path in self.files.items():
            if not path.strip() or "\x00" in path:
                problem = "an empty path" if not path.strip() else "a NUL character in the path"
                raise ValueError(f"files.{split}: {problem}")
            fmt = self.file_format(path)
            if self.kind == "tagging" and fmt not in ("conll", "conllu"):
                raise ValueError(f"files.{split}: tagging tasks read CoNLL-U or plain CoNLL files (one word per "
                                 f"line), not {fmt} ({path})")
            if self.kind != "tagging" and fmt in ("conll", "conllu"):
                raise ValueError(f"files.{split}: {fmt} files are for tagging tasks; a {self.kind} task reads "
                                 f"csv or json ({path})")
            formats[split] = fmt
        conllu = "conllu" in formats.values()
        if conllu and self.tag is None:
            raise ValueError("CoNLL-U files need tag: upos, xpos, feats, deprel or misc:KEY (the column that "
                             "holds the tags)")
        if self.tag is not None and not conllu:
            raise ValueError("tag: is for CoNLL-U files (format: conllu); plain CoNLL files take token_column "
                             "and tag_column")
        # values, not model_fields_set: a dumped and re-read config (worker processes) names every key
        given = {"token_column"} if self.token_column != 1 else set()
        given |= {"tag_column"} if self.tag_column is not None else set()
        if conllu and given:
            raise ValueError(f"{' and '.join(sorted(given))}: CoNLL-U files are read by column name (tag: "
                             f"{self.tag}); leave the column numbers out")
        return self

    def file_format(self, path: str) -> str:
        """The format of one of the task's files: ``format``, else from the suffix."""
        if self.format:
            return self.format
        suffix = Path(path).suffix.lower()
        if suffix in FORMAT_BY_SUFFIX:
            return FORMAT_BY_SUFFIX[suffix]
        if self.kind == "tagging":
            return "conll"
        raise ValueError(f"cannot tell the format of {path} from its suffix {suffix or '(none)'!r}; accepted: "
                         f"{ACCEPTED_FORMATS}; or set format: csv or json")

    def columns_read(self) -> str:
        """What the task reads from its files, in words (for the report)."""
        if self.kind == "tagging":
            if self.tag is not None:
                return f"CoNLL-U FORM → {self.tag.upper() if self.tag in CONLLU_TAGS else self.tag}"
            return (f"CoNLL column {self.token_column} (word) → "
                    f"{'the last column' if self.tag_column is None else f'column {self.tag_column}'} (tag)")
        text = f"text {self.text!r}" + (f", text_pair {self.text_pair!r}" if self.text_pair else "")
        return f"{text} → {'score' if self.kind == 'regression' else 'label'} {self.label!r}"


class EvaluateConfig(_Strict):
    # custom_tasks comes first: the checks of `tasks` and `per_task` read it
    custom_tasks: list[CustomTask] = Field(default_factory=list,
                                           description="Tasks on your own CSV/JSON/CoNLL-U/CoNLL files "
                                                       "(docs/evaluation.md).")
    tasks: list[str] = Field(default_factory=list,
                             description="Tasks to run, in this order (a list or 'upos,sapn'; 'all' = the built-in "
                                         "ones): built-in task names and custom tasks' names. Default: every "
                                         "built-in task, or every custom task when custom_tasks are declared.")
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
                                        description="Settings applied to every task (over the defaults; a custom "
                                                    "task's own `finetune` and `per_task` win over them).")
    per_task: dict[str, FinetuneOverrides] = Field(default_factory=dict,
                                                   description="Settings for one task (win over `finetune` and over a "
                                                               "custom task's own `finetune`).")
    loyalty: bool = Field(True, description="Loyalty of every student to every teacher.")
    efficiency: EfficiencyConfig = Field(default_factory=EfficiencyConfig)

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, v):
        if isinstance(v, str):
            v = list(ALL_TASKS) if v.strip() == "all" else [t.strip() for t in v.split(",") if t.strip()]
        return v

    @field_validator("custom_tasks")
    @classmethod
    def _custom_names(cls, v: list[CustomTask]):
        names = [t.name for t in v]
        dup = sorted({n for n in names if names.count(n) > 1} | (set(names) & set(ALL_TASKS)))
        if dup:
            raise ValueError(f"name(s) {', '.join(dup)} repeated or taken by a built-in task")
        return v

    @field_validator("tasks", "per_task")
    @classmethod
    def _known_tasks(cls, v, info: ValidationInfo):
        known = list(ALL_TASKS) + [t.name for t in info.data.get("custom_tasks") or []]
        names = list(v)
        unknown = [t for t in names if t not in known]
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(known)}")
        dup = sorted({t for t in names if names.count(t) > 1})
        if dup:
            raise ValueError(f"tasks repeated: {', '.join(dup)}")
        return v

    @model_validator(mode="after")
    def _default_tasks(self):
        if not self.tasks:
            self.tasks = [t.name for t in self.custom_tasks] or list(ALL_TASKS)
        return self

    def custom_task(self, name: str) -> CustomTask | None:
        return next((t for t in self.custom_tasks if t.name == name), None)

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
