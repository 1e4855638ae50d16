"""Task models: the folder a user deploys, and the one reader and writer of it.

A task model is a ``save_pretrained`` folder that plain transformers loads as it is: a token- or
sequence-classification model with ``id2label``/``label2id``, or (STS's siamese head) a bare
encoder plus the files sentence-transformers reads. What the head was trained for travels in the
config as ``config.compresso_task`` (``TaskHead``); a model is a task model iff its config has it.

Inference goes through evaluation's own ``encode`` and ``predict``: a task model gives the same
labels whether it is scored by the evaluation suite, used as a teacher or served.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from compresso.evaluation.data import Example
from compresso.evaluation.features import Encoded, encode
from compresso.evaluation.finetune import SiameseRegressor, Predictions, predict
from compresso.evaluation.tasks import TASKS, FinetuneSettings, TaskData, TaskSpec, shape_defaults

CONFIG_KEY = "compresso_task"
POOLING_DIR = "1_Pooling"
KINDS = ("tagging", "classification", "regression")


class TaskModelError(ValueError):
    """A folder or model is not the task model that was asked for (no task block, another task,
    labels missing from its head); the message says which and what was expected."""


@dataclass(frozen=True)
class TaskHead:
    """What a task model's head was trained for (``config.compresso_task``)."""

    task: str
    title: str
    kind: Literal["tagging", "classification", "regression"]
    labels: list[str] | None
    """Class names in head order (output i is labels[i]); None for regression."""
    head: Literal["cross", "siamese"] = "cross"
    pooling: Literal["mean"] | None = None
    """Siamese head: how token states become the sentence vector."""
    value_range: tuple[float, float] | None = None
    """Regression: the head's output 0..1 maps linearly onto this range of scores."""
    pair: bool = False
    """The task's examples are text pairs (encoded as a pair, or apart for the siamese head)."""
    max_length: int = 512
    """Sub-tokens per sequence the model was trained with (longer input is truncated)."""
    entity_level: bool = False
    """Tagging scored on BIO entities (seqeval) rather than on tags."""
    source: dict[str, Any] = field(default_factory=dict)
    """Where the training data came from: ``{"dataset": ...}`` or ``{"files": {...}}``."""

    def to_dict(self) -> dict:
        out = asdict(self)
        out["value_range"] = list(self.value_range) if self.value_range is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> TaskHead:
        if not isinstance(data, dict):
            raise TaskModelError(f"{where}: {CONFIG_KEY} is a {type(data).__name__}, expected a mapping")
        missing = [k for k in ("task", "kind") if k not in data]
        if missing:
            raise TaskModelError(f"{where}: {CONFIG_KEY} lacks {', '.join(missing)}")
        if data["kind"] not in KINDS:
            raise TaskModelError(f"{where}: {CONFIG_KEY}.kind is {data['kind']!r}; expected one of {', '.join(KINDS)}")
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("value_range") is not None:
            values["value_range"] = tuple(float(v) for v in values["value_range"])
        if values.get("labels") is not None:
            values["labels"] = [str(label) for label in values["labels"]]
        values.setdefault("title", data["task"])
        head = cls(**values)
        if head.kind != "regression" and not head.labels:
            raise TaskModelError(f"{where}: a {head.kind} head without labels")
        if head.kind == "regression" and head.value_range is None:
            raise TaskModelError(f"{where}: a regression head without value_range")
        return head

    @property
    def spec(self) -> TaskSpec:
        """The task's ``TaskSpec`` as encoding, prediction and scoring need it (a built-in task's
        own, with this head's range and entity scoring; a custom task's from its kind)."""
        base = TASKS.get(self.task)
        if base is not None and base.kind == self.kind:
            return replace(base, value_range=self.value_range, entity_level=self.entity_level)
        if self.kind == "regression":
            headline, metrics = "pearson", ("pearson", "spearman")
        elif self.kind == "tagging" and self.entity_level:
            headline, metrics = "f1_macro", ("f1_macro", "f1_micro")
        else:
            headline, metrics = "macro_f1", ("macro_f1", "accuracy")
        defaults, _ = shape_defaults(self.kind, len(self.labels) if self.labels else None, self.entity_level,
                                     self.pair)
        return TaskSpec(self.task, self.title, self.kind, "custom", headline, metrics, defaults,
                        value_range=self.value_range, entity_level=self.entity_level)

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels or [])}

    def describe(self) -> str:
        """One line for errors and logs: ``NER (tagging, 9 labels)``."""
        what = f"{len(self.labels)} labels" if self.labels else \
            f"scores {self.value_range[0]:g}-{self.value_range[1]:g}" if self.value_range else "scores"
        return f"{self.title} ({self.kind}, {what}{', siamese' if self.head == 'siamese' else ''})"


def head_for(data: TaskData, settings: FinetuneSettings, max_length: int, cfg=None) -> TaskHead:
    """The head block of a model fine-tuned on ``data`` with ``settings``; ``cfg`` (the
    ``EvaluateConfig`` the data was read with) goes into ``source`` so that the task's data can be
    read again from the head alone (``task_data_for``)."""
    spec = data.spec
    pair = any(ex.text_pair is not None for ex in data.train[:100])
    source: dict[str, Any] = {"files": {k: _absolute(v) for k, v in data.sources.items()}}
    if cfg is not None:
        custom = cfg.custom_task(spec.name)
        if custom is not None:
            declared = custom.model_dump(mode="json", exclude_defaults=True)
            declared["files"] = {k: _absolute(v) for k, v in custom.files.items()}
            source["custom_task"] = declared
        else:
            source["dataset"] = spec.dataset
            source["source"] = cfg.source
            if cfg.source == "local":
                source["data_dir"] = _absolute(cfg.data_dir)
            elif spec.name in cfg.hub_datasets:
                source["hub_dataset"] = cfg.hub_datasets[spec.name].model_dump(mode="json")
        source["validation_fraction"] = cfg.validation_fraction
        source["min_validation_examples"] = cfg.min_validation_examples
        for cap in ("max_train_examples", "max_eval_examples"):  # a quick run's subsets, read again alike
            if getattr(cfg, cap) is not None:
                source[cap] = getattr(cfg, cap)
    elif not spec.dataset.startswith("custom:"):
        source["dataset"] = spec.dataset
    siamese = settings.head == "siamese" and spec.kind == "regression"
    return TaskHead(task=spec.name, title=spec.title, kind=spec.kind, labels=list(data.labels) if data.labels else None,
                    head="siamese" if siamese else "cross", pooling="mean" if siamese else None,
                    value_range=tuple(spec.value_range) if spec.value_range else None, pair=pair,
                    max_length=int(max_length), entity_level=spec.entity_level, source=source)


def _absolute(path: str) -> str:
    p = Path(str(path)).expanduser()
    return str(p.resolve()) if p.exists() else str(path)


def data_config(task, data_dir: str | None = None, source: str = "local", hub_dataset=None, **settings):
    """The ``EvaluateConfig`` that reads one task's data: ``task`` a built-in task's name or a
    custom task (``CustomTask`` or its mapping); ``settings`` any further ``EvaluateConfig`` field
    (``max_train_examples``, ``validation_fraction``, ...)."""
    from compresso.evaluation.config import CustomTask, EvaluateConfig

    values: dict[str, Any] = {k: v for k, v in settings.items() if v is not None}
    if isinstance(task, (CustomTask, dict)):
        custom = task if isinstance(task, CustomTask) else CustomTask.model_validate(task)
        values |= {"custom_tasks": [custom], "tasks": [custom.name]}
    else:
        values |= {"tasks": [task], "source": source}
        if data_dir is not None:
            values["data_dir"] = data_dir
        if hub_dataset is not None:
            values["hub_datasets"] = {task: hub_dataset}
    return EvaluateConfig.model_validate(values)


def read_task_data(cfg) -> TaskData:
    """The one task of ``cfg`` (``data_config``) read as evaluation reads it; ``DataError`` names
    the file when it cannot be read."""
    from compresso.evaluation.tasks import DatasetCache

    return DatasetCache(cfg).task(cfg.tasks[0])


def task_data_for(head: TaskHead, max_train_examples: int | None = None,
                  max_eval_examples: int | None = None) -> TaskData:
    """The data a task model was fine-tuned on, read again from its head's ``source`` (its own
    validation carving and, unless ``max_*`` say otherwise, its own fixed subsets). Raises
    ``TaskModelError`` when the head does not say where the data is."""
    src = head.source or {}
    caps = {"max_train_examples": max_train_examples or src.get("max_train_examples"),
            "max_eval_examples": max_eval_examples or src.get("max_eval_examples"),
            "validation_fraction": src.get("validation_fraction"),
            "min_validation_examples": src.get("min_validation_examples")}
    if "custom_task" in src:
        cfg = data_config(src["custom_task"], **caps)
    elif "dataset" in src and head.task in TASKS:
        cfg = data_config(head.task, src.get("data_dir"), src.get("source", "local"), src.get("hub_dataset"), **caps)
    else:
        raise TaskModelError(f"the {head.title} model does not record where its data is (its "
                             f"{CONFIG_KEY}.source names no dataset or custom task); name the task's data "
                             f"in the stage's parameters")
    return read_task_data(cfg)


def _config_dict(config_or_folder) -> tuple[dict | None, str]:
    if config_or_folder is None:
        return None, "model"
    if isinstance(config_or_folder, dict):
        return config_or_folder, "config"
    if isinstance(config_or_folder, (str, Path)):
        path = Path(config_or_folder).expanduser()
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            return None, str(file)
        try:
            return json.loads(file.read_text()), str(file)
        except (OSError, ValueError) as exc:
            raise TaskModelError(f"{file}: cannot read it as JSON: {exc}") from None
    if isinstance(config_or_folder, torch.nn.Module):
        if isinstance(config_or_folder, SiameseRegressor):
            config_or_folder = config_or_folder.encoder
        config_or_folder = getattr(config_or_folder, "config", None)
        if config_or_folder is None:
            return None, "model"
    value = getattr(config_or_folder, CONFIG_KEY, None)
    return ({CONFIG_KEY: value} if value is not None else {}), type(config_or_folder).__name__


def task_head(config_or_folder) -> TaskHead | None:
    """The task block of a config (a ``PretrainedConfig``, a dict, a model, a folder or its
    config.json), or None when it is no task model (a hub id is no folder: None)."""
    data, where = _config_dict(config_or_folder)
    if not data or data.get(CONFIG_KEY) is None:
        return None
    return TaskHead.from_dict(data[CONFIG_KEY], where)


def model_class(head_or_kind: TaskHead | str, siamese: bool = False):
    """The transformers auto class of a task model: token or sequence classification, or the bare
    encoder under a siamese head."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

    kind = head_or_kind.kind if isinstance(head_or_kind, TaskHead) else head_or_kind
    if isinstance(head_or_kind, TaskHead):
        siamese = head_or_kind.head == "siamese"
    if siamese:
        return AutoModel
    return AutoModelForTokenClassification if kind == "tagging" else AutoModelForSequenceClassification


def head_kwargs(kind: str, labels: Sequence[str] | None) -> dict:
    """``from_pretrained`` keywords for a fresh head of this kind."""
    if kind == "regression":
        return {"num_labels": 1, "problem_type": "regression"}
    labels = list(labels)
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}}


def load_for_task(ref, spec: TaskSpec, labels: Sequence[str] | None, head: str, **load_kwargs):
    """A model to fine-tune on a task: ``ref`` (a hub id, a folder, or a ``ModelBundle`` already in
    memory) under the task's head, as a ``ModelBundle``. The siamese head wraps the bare encoder
    (``SiameseRegressor``); a new classification head is initialised from torch's current seed.

    A bundle in memory keeps its encoder weights: its backbone is moved under the new head."""
    from compresso.models import load_bundle
    from compresso.strategy import ModelBundle

    siamese = head == "siamese"
    cls = model_class(spec.kind, siamese)
    kwargs = {} if siamese else head_kwargs(spec.kind, labels)
    if isinstance(ref, ModelBundle):
        bundle = ref
        model = _rehead(bundle.model, cls, kwargs)
        bundle = ModelBundle(model, bundle.tokenizer, list(bundle.lineage), bundle.format)
    else:
        from compresso.evaluation.runner import quiet_transformers

        from compresso.recipe import saved_format

        if saved_format(str(ref)) == "transformers" and task_head(ref) is not None:
            load_kwargs.setdefault("ignore_mismatched_sizes", True)  # another task's head: replaced
        with quiet_transformers():  # "some weights are newly initialized": expected for a task head
            bundle = load_bundle(ref, model_class=cls, **load_kwargs, **kwargs)
        if hasattr(bundle.model.config, CONFIG_KEY):  # a task model's backbone under a new, untrained head
            delattr(bundle.model.config, CONFIG_KEY)
    if siamese:
        if getattr(bundle.model, "pooler", None) is not None:
            # BERT's [CLS] pooler: unused by mean pooling (and freshly initialised for an MLM
            # checkpoint); without it the encoder returns only the states that are used
            bundle.model.pooler = None
        bundle.model = SiameseRegressor(bundle.model)
    return bundle


def _rehead(model: torch.nn.Module, cls, kwargs: dict) -> torch.nn.Module:
    """``model``'s encoder weights under the head ``cls`` builds (through a state dict in memory:
    the same path as ``from_pretrained`` from a saved folder, without the disk)."""
    import tempfile

    from compresso.evaluation.runner import quiet_transformers

    if isinstance(model, SiameseRegressor):
        model = model.encoder
    with tempfile.TemporaryDirectory(prefix="compresso-rehead-") as tmp:
        config = model.config
        task_block = getattr(config, CONFIG_KEY, None)
        if task_block is not None:  # the new head is not the old one's task
            delattr(config, CONFIG_KEY)
        try:
            model.save_pretrained(tmp, safe_serialization=True)
        finally:
            if task_block is not None:
                setattr(config, CONFIG_KEY, task_block)
        with quiet_transformers():
            return cls.from_pretrained(tmp, attn_implementation="sdpa", ignore_mismatched_sizes=True, **kwargs)


def attach_head(model: torch.nn.Module, head: TaskHead) -> torch.nn.Module:
    """Write ``head`` into the model's config (and its label maps) and return what
    ``save_pretrained`` saves: the model itself, or the encoder of a siamese regressor."""
    saved = model.encoder if isinstance(model, SiameseRegressor) else model
    config = saved.config
    if head.labels is not None:
        config.id2label = dict(enumerate(head.labels))
        config.label2id = head.label2id
    setattr(config, CONFIG_KEY, head.to_dict())
    return saved


def write_pooling_files(folder: Path, head: TaskHead, hidden_size: int) -> None:
    """The files sentence-transformers reads beside a siamese task model (encoder + mean pooling)."""
    from compresso.strategy import write_json

    folder = Path(folder)
    write_json(folder / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"}])
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": head.max_length, "do_lower_case": False})
    write_json(folder / POOLING_DIR / "config.json", {
        "word_embedding_dimension": int(hidden_size), "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": head.pooling == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False})


def save_task_model(model: torch.nn.Module, tokenizer, head: TaskHead, folder: Path,
                    lineage: list[dict] | None = None) -> Path:
    """Save a task model as a folder plain transformers (and, for a siamese head,
    sentence-transformers) loads: weights (safetensors), config with the task block, tokenizer,
    ``compresso.json``."""
    from compresso.models import save_bundle
    from compresso.strategy import ModelBundle

    folder = Path(folder)
    save_bundle(ModelBundle(attach_head(model, head), tokenizer, list(lineage or [])), folder)
    return folder


def load_task_model(folder, device: torch.device | str = "cpu"):
    """``(model, tokenizer, head)`` of a task model folder, on ``device`` (an INT8 model stays on
    the CPU, where it runs) in eval mode; the model under a siamese head comes wrapped in
    ``SiameseRegressor``. Raises ``TaskModelError`` for a
    folder that is no task model."""
    from compresso.models import load_bundle

    head = task_head(folder)
    if head is None:
        raise TaskModelError(f"{folder} is not a task model: its config.json has no {CONFIG_KEY} block "
                             f"(fine-tune it on a task first, e.g. with the finetune strategy)")
    from compresso.evaluation.runner import quiet_transformers

    with quiet_transformers():
        bundle = load_bundle(folder, model_class=model_class(head))
    model = bundle.model
    if head.head == "siamese":
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        model = SiameseRegressor(model)
    if isinstance(model, torch.nn.Module):
        inner = model.encoder if isinstance(model, SiameseRegressor) else model
        if not getattr(inner, "runs_on_cpu_only", False):  # an INT8 model runs on the CPU whatever is asked
            model = model.to(torch.device(device))
        model = model.eval()
    return model, bundle.tokenizer, head


def check_head(head: TaskHead | None, spec: TaskSpec, labels: Sequence[str] | None, who: str) -> np.ndarray | None:
    """Check that a task model (``who`` names it: ``stage 03-kd, teacher cased-ner``) was fine-tuned
    for this task; returns, for a classification or tagging task, the model's output column of each
    of the task's labels. Raises ``TaskModelError`` naming the labels it lacks."""
    if head is None:
        raise TaskModelError(f"{who} is not a task model (its config has no {CONFIG_KEY} block); fine-tune it "
                             f"on {spec.title} first")
    if head.task != spec.name:
        raise TaskModelError(f"{who} was fine-tuned on {head.describe()}, not on {spec.title} ({spec.kind})")
    if head.kind != spec.kind:
        raise TaskModelError(f"{who} has a {head.kind} head, but {spec.title} is a {spec.kind} task")
    if spec.kind == "regression":
        return None
    index = head.label2id
    missing = [label for label in labels if label not in index]
    if missing:
        raise TaskModelError(f"{who} lacks label(s) {', '.join(map(repr, missing))} of {spec.title}; its head has "
                             f"{', '.join(map(repr, head.labels))}")
    return np.array([index[label] for label in labels], dtype=np.int64)


def pad_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def as_examples(head: TaskHead, texts: Sequence) -> list[Example]:
    """Unlabelled examples: word lists (tagging), strings or ``(text, pair)`` tuples."""
    out = []
    for t in texts:
        if isinstance(t, Example):
            out.append(t)
        elif head.kind == "tagging":
            if isinstance(t, str):
                raise TypeError(f"{head.title} is a tagging task: give each text as a list of words")
            out.append(Example(list(t), None))
        elif isinstance(t, (tuple, list)):
            out.append(Example(t[0], None, t[1]))
        else:
            out.append(Example(t, None))
    return out


def encode_for(head: TaskHead, tokenizer, examples: Sequence[Example]) -> Encoded:
    """Token ids of ``examples`` as the task model was trained on them (its max_length, pairs
    apart for a siamese head); labels are kept when the examples carry them."""
    labelled = all(ex.label is not None for ex in examples)
    index = head.label2id if labelled and head.labels else None
    return encode(head.spec, list(examples), tokenizer, head.max_length, index,
                  pairs_apart=head.head == "siamese")


def predict_examples(model: torch.nn.Module, tokenizer, head: TaskHead, examples: Sequence, device=None,
                     batch_size: int = 256, prior: np.ndarray | None = None,
                     encoded: Encoded | None = None, use_autocast: bool = True) -> Predictions:
    """Evaluation's ``predict`` on ``examples`` (or their ``encoded`` form): class probabilities
    per example or per word, or scores in the task's units. A word the tokenizer truncated away
    gets ``prior`` (default: uniform)."""
    from compresso.evaluation.finetune import module_device

    if device is None:
        device = module_device(model) if isinstance(model, torch.nn.Module) else torch.device("cpu")
    device = torch.device(device)
    if encoded is None:
        encoded = encode_for(head, tokenizer, as_examples(head, examples))
    if prior is None and head.labels:
        prior = np.full(len(head.labels), 1.0 / len(head.labels))
    return predict(model, encoded, head.spec, device, batch_size, pad_id(tokenizer), prior,
                   use_autocast=use_autocast and device.type == "cuda")


def labels_of(head: TaskHead, pred: Predictions) -> list:
    """Readable predictions: a label per example (classification), a label per word (tagging), a
    score per example (regression)."""
    if pred.kind == "regression":
        return [float(v) for v in pred.values]
    names = np.asarray(head.labels, dtype=object)
    ids = pred.label_ids()
    if pred.kind == "classification":
        return list(names[ids])
    return [list(names[rows]) for rows in pred.per_example(ids)]


def predict_labels(model: torch.nn.Module, tokenizer, head: TaskHead, texts: Sequence, device=None) -> list:
    """``labels_of(predict_examples(...))``: what a served task model answers for ``texts``."""
    return labels_of(head, predict_examples(model, tokenizer, head, texts, device))


# --- fine-tuning: the one path that evaluation's jobs and the finetune strategy share ---------------

_ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl")


def usable_max_length(model, tokenizer, wanted: int) -> int:
    """``wanted``, capped by the tokenizer's and the position embeddings' limits."""
    limits = []
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and tok_limit < 100_000:
        limits.append(tok_limit)
    if isinstance(model, SiameseRegressor):
        model = model.encoder
    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        limits.append(positions - (2 if getattr(config, "model_type", "") in _ROBERTA_LIKE else 0))
    return min([wanted] + limits)


@dataclass
class TrainedTaskModel:
    bundle: Any
    """The ``ModelBundle``: the fine-tuned model (at its best epoch) and its tokenizer."""
    encoded: dict[str, Encoded]
    outcome: Any
    """``finetune``'s ``TrainOutcome``."""
    max_length: int
    encoding: str = "encoded"
    """How the splits were had: "encoded", or what the caller's ``encode_splits`` said."""

    def head(self, data: TaskData, settings: FinetuneSettings, cfg=None) -> TaskHead:
        return head_for(data, settings, self.max_length, cfg)


def train_task_model(ref, data: TaskData, settings: FinetuneSettings, device: torch.device, seed: int,
                     on_epoch=None, encode_splits=None, checkpoint: Path | None = None) -> TrainedTaskModel:
    """Fine-tune ``ref`` (hub id, folder or ``ModelBundle``) on ``data``: load it under the task's
    head (seeded), encode train/validation/test, run evaluation's ``finetune`` loop choosing the
    best epoch on the task's headline metric. ``encode_splits(splits, spec, tokenizer, max_length,
    label_index, pairs_apart) -> (encoded, how)`` lets a caller share encodings (evaluation's
    cache); ``checkpoint`` makes the loop resumable (see ``finetune``)."""
    from compresso.evaluation import scoring
    from compresso.evaluation.finetune import finetune

    torch.manual_seed(seed)  # the task head's initialisation
    bundle = load_for_task(ref, data.spec, data.labels, settings.head)
    if bundle.tokenizer is None:
        raise TaskModelError(f"{ref if isinstance(ref, (str, Path)) else 'the input model'} holds no tokenizer; "
                             f"save one beside the model (tokenizer.save_pretrained)")
    max_length = usable_max_length(bundle.model, bundle.tokenizer, settings.max_length)
    index = {label: i for i, label in enumerate(data.labels)} if data.labels else None
    splits = {"train": data.train, "validation": data.validation, "test": data.test}
    apart = settings.head == "siamese"
    if encode_splits is None:
        enc = {name: encode(data.spec, examples, bundle.tokenizer, max_length, index, pairs_apart=apart)
               for name, examples in splits.items()}
        how = "encoded"
    else:
        enc, how = encode_splits(splits, data.spec, bundle.tokenizer, max_length, index, apart)
    outcome = finetune(
        bundle.model, data.spec, settings, enc["train"], enc["validation"],
        lambda pred: scoring.score(data.spec, data.validation, data.labels, pred)[data.spec.headline],
        torch.device(device), seed, pad_id(bundle.tokenizer), data.label_prior, on_epoch, checkpoint)
    return TrainedTaskModel(bundle, enc, outcome, max_length, how)


# --- scoring a task model as it is -----------------------------------------------------------------


def in_task_order(pred: Predictions, columns: np.ndarray | None) -> Predictions:
    """``pred`` with its class columns in the task's label order (``check_head``'s columns): a head
    with labels the task lacks loses them, and each row is renormalised over the task's labels."""
    if columns is None or pred.probs is None:
        return pred
    if np.array_equal(columns, np.arange(pred.probs.shape[1])):
        return pred
    probs = pred.probs[:, columns]
    probs = probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)
    return Predictions(pred.kind, probs, pred.values, pred.offsets)


def head_order_prior(prior: np.ndarray | None, columns: np.ndarray | None, head: TaskHead) -> np.ndarray | None:
    """A prior over the task's labels, laid out over the head's outputs (zero for labels the task lacks)."""
    if prior is None or columns is None:
        return prior
    out = np.zeros(len(head.labels), dtype=np.float64)
    out[columns] = prior
    return out


def model_input_batches(head: TaskHead, tokenizer, examples: Sequence[Example], input_names: Sequence[str],
                        batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Padded batches of the inputs a task model sees for ``examples`` (a pair as one sequence, or,
    under a siamese head, each sentence alone), keyed by ``input_names``: calibration text for
    INT8 in the form the model is served."""
    from compresso.evaluation.features import collate, sorted_batches

    enc = encode_for(head, tokenizer, list(examples))
    parts = [enc] if enc.second is None else [enc, enc.second]
    out = []
    for part in parts:
        part = replace(part, second=None, word_pos=None)
        for idx in sorted_batches(part.lengths, batch_size):
            batch = collate(part, idx, pad_id(tokenizer), with_labels=False)
            if "token_type_ids" in input_names and "token_type_ids" not in batch:
                batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
            out.append({k: batch[k] for k in input_names})
    return out
