"""The seven benchmark tasks: data, label sets, head, metrics and fine-tuning defaults.

Defaults suit small BERTs (hidden 256, ~13 M parameters) as well as base-size ones: a higher
learning rate than BERT-base fine-tuning usually takes, warm-up, and more epochs for the small
tagging sets; the best epoch on validation is kept, so generous epoch counts cost time, not score.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

import numpy as np

from compresso.evaluation.config import EvaluateConfig, FinetuneOverrides
from compresso.evaluation.data import (
    LOCAL_READERS,
    DataError,
    Example,
    RawSplits,
    carve_validation,
    fixed_subset,
    label_notes,
)


@dataclass(frozen=True)
class FinetuneSettings:
    lr: float
    epochs: int
    batch_size: int
    max_length: int
    eval_batch_size: int = 256
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    patience: int | None = 3
    """Stop after this many epochs without a better validation score (None: run every epoch)."""
    head: Literal["cross", "siamese"] = "cross"
    """Sentence-pair regression only. ``siamese``: each sentence encoded alone, mean-pooled, and the
    cosine of the two vectors trained (MSE) towards the scaled score, as Sentence-BERT's
    CosineSimilarityLoss; ``cross``: the pair encoded as one sequence with a one-output head."""

    def with_overrides(self, *overrides: FinetuneOverrides | None) -> FinetuneSettings:
        out = self
        for o in overrides:
            if o is not None:
                out = replace(out, **o.model_dump(exclude_none=True))
        return out


Kind = Literal["tagging", "classification", "regression"]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    kind: Kind
    dataset: str
    headline: str
    metrics: tuple[str, ...]
    defaults: FinetuneSettings
    value_range: tuple[float, float] | None = None  # regression targets
    entity_level: bool = False  # tagging scored on BIO entities (seqeval), not on tags
    own_finetune: FinetuneOverrides | None = None
    """A custom task's own ``finetune:`` (wins over ``evaluate.finetune``)."""
    defaults_from: str | None = None
    """Why ``defaults`` are what they are (custom tasks: chosen by the task's shape)."""
    columns_read: str | None = None
    """What the task reads from its files, in words (custom tasks)."""


TASKS: dict[str, TaskSpec] = {
    "upos": TaskSpec("upos", "UPOS", "tagging", "ro_rrt", "macro_f1", ("macro_f1", "accuracy"),
                     FinetuneSettings(lr=2e-4, epochs=20, batch_size=16, max_length=256)),
    "xpos": TaskSpec("xpos", "XPOS", "tagging", "ro_rrt", "macro_f1", ("macro_f1", "accuracy"),
                     FinetuneSettings(lr=3e-4, epochs=30, batch_size=16, max_length=256)),
    "ner": TaskSpec("ner", "NER", "tagging", "ronec", "f1_macro", ("f1_macro", "f1_micro"),
                    FinetuneSettings(lr=2e-4, epochs=30, batch_size=16, max_length=512), entity_level=True),
    "sapn": TaskSpec("sapn", "SAPN", "classification", "laroseda", "accuracy", ("accuracy", "macro_f1"),
                     FinetuneSettings(lr=1e-4, epochs=3, batch_size=32, max_length=256, patience=2)),
    "sar": TaskSpec("sar", "SAR", "classification", "laroseda", "macro_f1", ("macro_f1", "accuracy"),
                    FinetuneSettings(lr=1e-4, epochs=4, batch_size=32, max_length=256, patience=2)),
    # the siamese head starts from the pretrained encoder's own sentence geometry (its untrained
    # mean-pooled cosine already scores Pearson ~50 on RO-STS) and converges in a few epochs;
    # docs/evaluation.md, "STS", has the measurements behind these settings
    "sts": TaskSpec("sts", "STS", "regression", "ro_sts", "pearson", ("pearson", "spearman"),
                    FinetuneSettings(lr=1e-4, epochs=6, batch_size=32, max_length=128, patience=2,
                                     head="siamese"), value_range=(0.0, 5.0)),
    "di": TaskSpec("di", "DI", "classification", "moroco", "macro_f1", ("macro_f1", "accuracy"),
                   FinetuneSettings(lr=1e-4, epochs=5, batch_size=32, max_length=512, patience=2)),
}

MANY_TAGS = 40
"""A tagging task with more tags than this is XPOS-like (RRT: 17 UPOS tags, hundreds of XPOS ones)."""


def shape_defaults(kind: Kind, n_labels: int | None, entity: bool, pairs: bool) -> tuple[FinetuneSettings, str]:
    """Starting settings for a custom task, from the built-in task of the same shape, and the reason
    in words: entity tagging (BIO tags) from NER, tagging with more than ``MANY_TAGS`` tags from XPOS,
    other tagging from UPOS; two classes from SAPN, more from SAR; sentence-pair regression from
    STS (siamese head), single-text regression from STS with the cross head. Early stopping ends
    a run once validation stops improving, so the epoch maxima are generous."""
    n = n_labels or 0
    if kind == "tagging":
        if entity:
            return TASKS["ner"].defaults, f"NER's settings (entity tagging, {n} BIO tags)"
        if n > MANY_TAGS:
            return TASKS["xpos"].defaults, f"XPOS's settings (tagging with {n} tags, more than {MANY_TAGS})"
        return TASKS["upos"].defaults, f"UPOS's settings (tagging with {n} tags, at most {MANY_TAGS})"
    if kind == "classification":
        if n <= 2:
            return TASKS["sapn"].defaults, f"SAPN's settings (classification, {n} classes)"
        return TASKS["sar"].defaults, f"SAR's settings (classification, {n} classes)"
    if pairs:
        return TASKS["sts"].defaults, "STS's settings (sentence-pair regression)"
    # single texts: nothing to encode apart
    return replace(TASKS["sts"].defaults, head="cross"), "STS's settings with head: cross (single-text regression)"


def effective_settings(spec: TaskSpec, cfg: EvaluateConfig) -> tuple[FinetuneSettings, dict[str, str]]:
    """A task's fine-tuning settings and where each came from. The more specific setting wins:
    the task's defaults < ``evaluate.finetune`` (and ``--set finetune.*``) < a custom task's own
    ``finetune:`` < ``evaluate.per_task.<task>``."""
    settings = spec.defaults
    default = f"default: {spec.defaults_from}" if spec.defaults_from else "default"
    sources = {f.name: default for f in fields(FinetuneSettings)}
    for source, overrides in (("evaluate.finetune", cfg.finetune), ("the task's finetune", spec.own_finetune),
                              (f"evaluate.per_task.{spec.name}", cfg.per_task.get(spec.name))):
        if overrides is not None:
            settings = settings.with_overrides(overrides)
            sources.update(dict.fromkeys(overrides.model_dump(exclude_none=True), source))
    return settings, sources


METRIC_TITLES = {"macro_f1": "macro-F1", "accuracy": "accuracy", "f1_macro": "entity F1 macro",
                 "f1_micro": "entity F1 micro", "pearson": "Pearson", "spearman": "Spearman"}


@dataclass
class TaskData:
    spec: TaskSpec
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    labels: list[str] | None
    """Class names in head order (None for regression)."""
    label_prior: np.ndarray | None
    """Training label frequencies: the prediction for a word the tokenizer truncated away."""
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def _examples(task: str, records: list) -> list[Example]:
    if task == "upos":
        return [Example(r.words, r.upos, id=r.id) for r in records]
    if task == "xpos":
        return [Example(r.words, r.xpos, id=r.id) for r in records]
    if task == "ner":
        return [Example(r.tokens, r.tags, id=r.id) for r in records]
    if task == "sapn":
        return [Example(r.title, "negative" if r.rating <= 2 else "positive", r.content, r.id) for r in records]
    if task == "sar":
        return [Example(r.title, str(r.rating), r.content, r.id) for r in records]
    if task == "sts":
        return [Example(r.sentence1, float(r.score), r.sentence2) for r in records]
    if task == "di":
        return [Example(r.text, "moldavian" if r.dialect == 1 else "romanian", id=r.id) for r in records]
    raise KeyError(task)


def validation_share(n_train: int, cfg: EvaluateConfig) -> float:
    """Share of a training file to hold out when a dataset has no validation split:
    ``validation_fraction``, raised to reach ``min_validation_examples`` but never above 25%, for
    files of at least twice that many examples (smaller ones, e.g. test fixtures, keep the
    fraction). docs/evaluation.md, "Validation size", says why."""
    if n_train < 2 * cfg.min_validation_examples:
        return cfg.validation_fraction
    return max(cfg.validation_fraction, min(cfg.min_validation_examples / n_train, 0.25))


FIXED_LABELS = {"sapn": ["negative", "positive"], "sar": ["1", "2", "4", "5"], "di": ["moldavian", "romanian"]}


def _label_set(task: str, splits: list[list[Example]]) -> list[str]:
    if task in FIXED_LABELS:
        return FIXED_LABELS[task]
    # Every tag seen in any split, so that a test tag absent from train still counts as an error.
    seen = {tag for split in splits for ex in split for tag in ex.label}
    return sorted(seen, key=lambda t: (t != "O", t))


def _prior(task: str, train: list[Example], labels: list[str]) -> np.ndarray:
    counts = Counter(tag for ex in train for tag in (ex.label if isinstance(ex.label, list) else [ex.label]))
    prior = np.array([counts.get(label, 0) for label in labels], dtype=np.float64) + 1e-3
    return prior / prior.sum()


class DatasetCache:
    """Reads each dataset once per evaluation (SAPN and SAR share LaRoSeDa, UPOS and XPOS RRT)."""

    def __init__(self, config: EvaluateConfig):
        self.config = config
        self._raw: dict[str, RawSplits] = {}

    def raw(self, dataset: str, task: str) -> RawSplits:
        if dataset not in self._raw:
            if self.config.source == "local":
                self._raw[dataset] = LOCAL_READERS[dataset](Path(self.config.data_dir).expanduser())
            else:
                from compresso.evaluation.hub import hub_splits

                self._raw[dataset] = hub_splits(dataset, self.config.hub_datasets.get(task))
        return self._raw[dataset]

    def task(self, task: str) -> TaskData:
        custom = self.config.custom_task(task)
        if custom is not None:  # the user's own files (compresso.evaluation.custom_tasks)
            from compresso.evaluation.custom_tasks import custom_task_data

            return custom_task_data(custom, self.config)
        spec = TASKS[task]
        raw = self.raw(spec.dataset, task)
        return finish_task_data(spec, raw, self.config, None, examples=lambda records: _examples(task, records))


def finish_task_data(spec: TaskSpec, raw: RawSplits, cfg: EvaluateConfig, labels: list[str] | None,
                     examples) -> TaskData:
    """Examples, validation split (carved from train when missing), label set, prior and quick-run
    subsets: the same for every task, built-in or custom. ``labels`` None: every tag seen (tagging)
    or the task's fixed classes."""
    task = spec.name
    notes = list(raw.notes)
    train, test = examples(raw.train), examples(raw.test)
    if raw.validation is not None:
        validation = examples(raw.validation)
    else:
        fraction = validation_share(len(train), cfg)
        try:
            train, validation = carve_validation(train, fraction)
        except DataError as exc:
            raise DataError(f"{task}: {raw.sources.get('train', 'train')}: {exc} (and there is no validation "
                            f"file)") from None
        notes.append(f"no validation split: {len(validation)} training examples "
                     f"({fraction:.0%}, fixed seed) held out for choosing the best epoch")
    if labels is None and spec.kind != "regression":
        labels = _label_set(task, [train, validation, test])
    prior = None if labels is None else _prior(task, train, labels)
    full = (len(train), len(validation), len(test))
    train = fixed_subset(train, cfg.max_train_examples)
    validation = fixed_subset(validation, cfg.max_eval_examples)
    test = fixed_subset(test, cfg.max_eval_examples)
    if (len(train), len(validation), len(test)) != full:
        notes.append(f"quick run: subsets of {len(train)}/{len(validation)}/{len(test)} out of "
                     f"{full[0]}/{full[1]}/{full[2]} train/validation/test examples")
    for name, split in (("train", train), ("validation", validation), ("test", test)):
        if not split:
            raise DataError(f"{task}: the {name} split is empty ({raw.sources.get(name, '?')})")
    if labels is not None:
        notes += label_notes(task, spec.kind == "tagging", train, test, labels)
    return TaskData(spec, train, validation, test, labels, prior, dict(raw.sources), notes)
