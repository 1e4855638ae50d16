"""Structured pruning of BERT-family encoders: whole attention heads and FFN channels.

torch-pruning does the structural work: its dependency graph, traced once per step, finds every
tensor coupled to a head or an FFN channel (query/key/value rows and the attention output's
columns; the intermediate layer's rows and the output layer's columns), its group importance
estimators score them, and ``group.prune()`` cuts them. This module decides *how many* units
each layer keeps (ratio or absolute size, uniform or per layer, or ranked across layers), runs
the optional iterative schedule, and persists the result.

Persistence: a model whose layers all keep every head and the same FFN width is still a plain
transformers model (``config.intermediate_size`` is updated) and is saved as such. Anything else
(heads removed, or per-layer widths) cannot be described by a transformers 5 config; it is saved
as ``format: prune``: ``save_pretrained`` weights (safetensors) and config, plus
``prune_layout.json`` with every layer's shapes, and ``load`` rebuilds the model from the config,
resizes each layer to the stored shapes and loads the weights strictly.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from compresso.strategy import (
    BUNDLE_META,
    CompressionStrategy,
    InputPath,
    ModelBundle,
    RunContext,
    StrategyError,
    StrategyParams,
    write_json,
)

LAYOUT_FILE = "prune_layout.json"
LAYOUT_VERSION = 1

# --------------------------------------------------------------------------------------------
# Parameters


class PruneTarget(StrategyParams):
    """How much of one kind of unit (heads or FFN channels) to remove.

    Exactly one of ``ratio`` (fraction *removed*) or ``keep`` (number *kept*). Either is a single
    value for every layer, a list with one value per layer, or a mapping ``{layer_index: value}``
    (layers not named are left alone).
    """

    ratio: float | list[float] | dict[int, float] | None = Field(
        None, description="Fraction of units removed, 0 <= ratio < 1: one value, one per layer, or {layer: value}.")
    keep: int | list[int] | dict[int, int] | None = Field(
        None, description="Number of units kept (>= 1): one value, one per layer, or {layer: value}.")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.ratio is None) == (self.keep is None):
            raise ValueError("give exactly one of ratio (fraction removed) or keep (number kept)")
        values = _values(self.ratio if self.ratio is not None else self.keep)
        if self.ratio is not None:
            bad = [(where, v) for where, v in values if not 0 <= v < 1]
            if bad:
                where, v = bad[0]
                raise ValueError(f"ratio{where} is {v}: a ratio is the fraction removed and must be "
                                 f">= 0 and < 1")
        else:
            bad = [(where, v) for where, v in values if v < 1]
            if bad:
                where, v = bad[0]
                raise ValueError(f"keep{where} is {v}: at least one unit must be kept")
        if isinstance(self.ratio if self.ratio is not None else self.keep, dict):
            negative = [k for k in (self.ratio or self.keep) if k < 0]
            if negative:
                raise ValueError(f"layer index {negative[0]} is negative")
        return self

    @property
    def is_single(self) -> bool:
        return not isinstance(self.ratio if self.ratio is not None else self.keep, (list, dict))

    def kept_per_layer(self, sizes: list[int], round_to: int = 1) -> list[int]:
        """Units kept in each layer, given each layer's current size."""
        spec = self.ratio if self.ratio is not None else self.keep
        n = len(sizes)
        if isinstance(spec, list):
            if len(spec) != n:
                raise StrategyError(f"a per-layer list needs one value per layer: the model has {n} "
                                    f"layers, the list has {len(spec)}")
            per_layer: list[Any] = list(spec)
        elif isinstance(spec, dict):
            out_of_range = [k for k in spec if k >= n]
            if out_of_range:
                raise StrategyError(f"layer index {out_of_range[0]} does not exist: the model has {n} "
                                    f"layers (0..{n - 1})")
            per_layer = [spec.get(i) for i in range(n)]
        else:
            per_layer = [spec] * n
        kept = []
        for size, value in zip(sizes, per_layer):
            if value is None:
                kept.append(size)
            elif self.ratio is not None:
                k = round_half_up(size * (1 - value))
                if round_to > 1 and value > 0:
                    k = max(round_to, round_half_up(k / round_to) * round_to)
                kept.append(min(size, k))
            else:
                kept.append(int(value))
        return kept


def round_half_up(x: float) -> int:
    # Python's round() sends 2.5 to 2 and 3.5 to 4; sizes should not depend on parity. The small
    # epsilon absorbs float error such as 1024 * (1 - 0.3) = 716.8000000000001.
    return int(math.floor(x + 0.5 + 1e-9))


def _values(spec) -> list[tuple[str, float]]:
    if isinstance(spec, list):
        return [(f"[{i}]", v) for i, v in enumerate(spec)]
    if isinstance(spec, dict):
        return [(f"[{k}]", v) for k, v in spec.items()]
    return [("", spec)]


def _shorthand(value):
    # ``heads: 0.25`` is short for ``heads: {ratio: 0.25}``.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"ratio": value}
    return value


class PruneParams(StrategyParams):
    heads: PruneTarget | None = Field(
        None, description="Attention heads to remove (whole heads; head size is unchanged). A number is a ratio.")
    ffn: PruneTarget | None = Field(
        None, description="FFN (intermediate) channels to remove. A number is a ratio.")
    importance: Literal["magnitude", "taylor"] = Field(
        "magnitude", description="magnitude: L2 norm of each unit's weights (no data). taylor: |weight x gradient| "
                                 "of the masked-LM loss on `corpus` (needs a masked-LM model).")
    scope: Literal["layer", "global"] = Field(
        "layer", description="layer: every layer reaches its own target. global: the same total is removed, "
                             "ranking units of all layers together (widths then differ per layer).")
    steps: int = Field(1, ge=1, le=100, description="Iterative schedule: reach the target in this many equal "
                                                    "steps, re-scoring importance after each.")
    round_to: int = Field(1, ge=1, description="Round FFN widths computed from a ratio to a multiple of this "
                                               "(8 or 64 suit GPU kernels).")
    # Calibration text for taylor importance (the same corpus keys as distill).
    corpus: list[InputPath] = Field(
        default_factory=list, description="Text files, one document per line (.txt, .gz, .xz, .bz2).")
    dataset: str | None = Field(None, description="Instead of `corpus`: a Hugging Face dataset id, streamed.")
    dataset_config: str | None = None
    dataset_split: str = "train"
    text_field: str = "text"
    max_documents: int | None = Field(
        20000, ge=1, description="Calibration documents are a seeded random sample of the corpus's first "
                                 "max_documents documents (null: the whole corpus).")
    calibration_batches: int = Field(8, ge=1, description="Batches of masked-LM loss for taylor importance.")
    batch_size: int = Field(16, ge=1, description="Documents per calibration batch.")
    seq_len: int = Field(128, ge=8, le=4096, description="Calibration documents are cut to this many tokens.")
    mask_prob: float = Field(0.15, gt=0, lt=1)

    @field_validator("heads", "ffn", mode="before")
    @classmethod
    def _number_is_ratio(cls, value):
        return _shorthand(value)

    @field_validator("corpus", mode="before")
    @classmethod
    def _one_file(cls, value):
        return [value] if isinstance(value, (str, Path)) else value

    @model_validator(mode="after")
    def _consistent(self):
        if self.heads is None and self.ffn is None:
            raise ValueError("nothing to prune: give heads and/or ffn (a ratio such as 0.25, or "
                             "{ratio: ...} / {keep: ...})")
        if self.importance == "taylor" and bool(self.corpus) == bool(self.dataset):
            raise ValueError("importance: taylor needs calibration text: either `corpus` (text files) or "
                             "`dataset` (a hub dataset id)" + (", not both" if self.corpus else ""))
        if self.importance == "magnitude" and (self.corpus or self.dataset):
            raise ValueError("calibration text (corpus/dataset) is only read by importance: taylor; remove it "
                             "or set importance: taylor")
        if self.scope == "global":
            for kind in ("heads", "ffn"):
                target = getattr(self, kind)
                if target is not None and not target.is_single:
                    raise ValueError(f"scope: global ranks all layers together and needs one {kind} value, "
                                     f"not a per-layer list or mapping")
            if self.round_to > 1:
                raise ValueError("round_to applies to scope: layer only")
        return self


# --------------------------------------------------------------------------------------------
# Architectures


@dataclass(frozen=True)
class Architecture:
    """Where heads and FFN channels live in one family of encoders."""

    name: str
    model_types: tuple[str, ...]
    layers_path: str          # from the base model to the ModuleList of layers
    attention: str            # module holding the head-count attributes, from a layer
    query: str
    key: str
    value: str
    attention_out: str
    ffn_in: str
    ffn_out: str
    head_count_attrs: tuple[str, ...]   # attributes on `attention` that count heads
    head_width_attrs: tuple[str, ...]   # attributes on `attention` equal to heads * head_dim
    ffn_config_key: str
    heads_config_key: str

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return _get(model.base_model, self.layers_path)


_BERT_LIKE = dict(
    layers_path="encoder.layer", attention="attention.self",
    query="attention.self.query", key="attention.self.key", value="attention.self.value",
    attention_out="attention.output.dense", ffn_in="intermediate.dense", ffn_out="output.dense",
    head_count_attrs=("num_attention_heads",), head_width_attrs=("all_head_size",),
    ffn_config_key="intermediate_size", heads_config_key="num_attention_heads",
)

# Verified (tests/test_prune.py builds each): tracing, pruning, save and reload.
ARCHITECTURES = (
    Architecture(name="BERT-like", model_types=("bert", "roberta", "xlm-roberta", "camembert", "electra"),
                 **_BERT_LIKE),
    Architecture(
        name="DistilBERT", model_types=("distilbert",), layers_path="transformer.layer",
        attention="attention", query="attention.q_lin", key="attention.k_lin", value="attention.v_lin",
        attention_out="attention.out_lin", ffn_in="ffn.lin1", ffn_out="ffn.lin2",
        head_count_attrs=("n_heads",), head_width_attrs=(), ffn_config_key="hidden_dim",
        heads_config_key="n_heads"),
)
SUPPORTED = ", ".join(t for a in ARCHITECTURES for t in a.model_types)


def _get(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def architecture_of(model: nn.Module) -> Architecture:
    """The architecture description for ``model``, or a StrategyError naming what is supported."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    arch = next((a for a in ARCHITECTURES if model_type in a.model_types), None)
    if arch is None:
        raise StrategyError(f"prune supports encoders of type {SUPPORTED}; got "
                            f"{type(model).__name__} (model_type {model_type!r})")
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise StrategyError(f"prune supports encoders only; this {model_type} is configured as a decoder "
                            f"(is_decoder / add_cross_attention)")
    try:
        layers = arch.layers(model)
        for layer in layers:
            for path in (arch.query, arch.key, arch.value, arch.attention_out, arch.ffn_in, arch.ffn_out):
                if not isinstance(_get(layer, path), nn.Linear):
                    raise TypeError(f"{path} is {type(_get(layer, path)).__name__}, not Linear")
            attention = _get(layer, arch.attention)
            for attr in (*arch.head_count_attrs, "attention_head_size"):
                if not hasattr(attention, attr):
                    raise TypeError(f"{arch.attention} has no attribute {attr}")
    except (AttributeError, TypeError) as exc:
        raise StrategyError(f"{type(model).__name__} has model_type {model_type!r} but not the module structure "
                            f"prune knows for {arch.name} models ({exc}); supported: {SUPPORTED}") from None
    return arch


@dataclass
class LayerShape:
    heads: int
    head_dim: int
    ffn: int

    def as_dict(self) -> dict:
        return {"heads": self.heads, "head_dim": self.head_dim, "ffn": self.ffn}


def layer_shapes(model: nn.Module, arch: Architecture | None = None) -> list[LayerShape]:
    """Each layer's head count, head size and FFN width, read from the weights themselves."""
    arch = arch or architecture_of(model)
    shapes = []
    for layer in arch.layers(model):
        head_dim = _get(layer, arch.attention).attention_head_size
        shapes.append(LayerShape(heads=_get(layer, arch.query).out_features // head_dim, head_dim=head_dim,
                                 ffn=_get(layer, arch.ffn_in).out_features))
    return shapes


def config_describes(model: nn.Module, arch: Architecture | None = None) -> bool:
    """True when a transformers config (with intermediate size updated) can describe the model."""
    arch = arch or architecture_of(model)
    shapes = layer_shapes(model, arch)
    heads = getattr(model.config, arch.heads_config_key)
    return all(s.heads == heads for s in shapes) and len({s.ffn for s in shapes}) == 1


def _set_head_count(attention: nn.Module, arch: Architecture, heads: int) -> None:
    # The attention forward reshapes with attention_head_size and -1, so these attributes only
    # have to be truthful (outputs, cache shapes and anyone inspecting the model read them).
    for attr in arch.head_count_attrs:
        setattr(attention, attr, heads)
    for attr in arch.head_width_attrs:
        setattr(attention, attr, heads * attention.attention_head_size)


def _resized(linear: nn.Linear, out_features: int, in_features: int) -> nn.Linear:
    if (linear.out_features, linear.in_features) == (out_features, in_features):
        return linear
    return nn.Linear(in_features, out_features, bias=linear.bias is not None,
                     device=linear.weight.device, dtype=linear.weight.dtype)


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(root, parent) if parent else root, name, module)


def resize_to_layout(model: nn.Module, shapes: list[LayerShape] | list[dict]) -> nn.Module:
    """Give a model built from its (unpruned) config the pruned shapes, ready for load_state_dict.

    The new Linear weights are uninitialised; load the pruned weights next. Other strategies that
    rebuild a pruned model from a config (e.g. a quantized one) can use this too.
    """
    arch = architecture_of(model)
    shapes = [s if isinstance(s, LayerShape) else LayerShape(**s) for s in shapes]
    layers = arch.layers(model)
    if len(shapes) != len(layers):
        raise ValueError(f"the layout has {len(shapes)} layers, the model {len(layers)}")
    for i, (layer, shape) in enumerate(zip(layers, shapes)):
        attention = _get(layer, arch.attention)
        if attention.attention_head_size != shape.head_dim:
            raise ValueError(f"layer {i}: head size {attention.attention_head_size} in the config, "
                             f"{shape.head_dim} in the layout")
        width = shape.heads * shape.head_dim
        for path in (arch.query, arch.key, arch.value):
            linear = _get(layer, path)
            _set(layer, path, _resized(linear, width, linear.in_features))
        out = _get(layer, arch.attention_out)
        _set(layer, arch.attention_out, _resized(out, out.out_features, width))
        ffn_in, ffn_out = _get(layer, arch.ffn_in), _get(layer, arch.ffn_out)
        _set(layer, arch.ffn_in, _resized(ffn_in, shape.ffn, ffn_in.in_features))
        _set(layer, arch.ffn_out, _resized(ffn_out, ffn_out.out_features, shape.ffn))
        _set_head_count(attention, arch, shape.heads)
    return model


def write_layout(model: nn.Module, path: Path) -> None:
    """Write ``prune_layout.json`` (every layer's head count, head size, FFN width) into ``path``."""
    write_json(Path(path) / LAYOUT_FILE, {
        "format_version": LAYOUT_VERSION,
        "architecture": type(model).__name__,
        "model_type": model.config.model_type,
        "layers": [s.as_dict() for s in layer_shapes(model)],
    })


def write_layout_if_pruned(model: nn.Module, path: Path) -> bool:
    """``write_layout`` when ``model`` has shapes its config cannot describe; never raises for a
    model of another family (nothing to record then). Returns whether a layout was written."""
    try:
        arch = architecture_of(model)
    except StrategyError:
        return False
    if config_describes(model, arch):
        return False
    write_layout(model, path)
    return True


def read_layout(path: Path) -> dict | None:
    """The ``prune_layout.json`` in ``path``, checked, or None when there is none."""
    layout_path = Path(path) / LAYOUT_FILE
    if not layout_path.is_file():
        return None
    layout = json.loads(layout_path.read_text())
    if layout.get("format_version") != LAYOUT_VERSION:
        raise ValueError(f"{layout_path}: format_version {layout.get('format_version')!r} is not "
                         f"{LAYOUT_VERSION}; written by another compresso version")
    return layout


def apply_saved_layout(model: nn.Module, path: Path) -> bool:
    """Resize ``model`` (built from the config in ``path``) to the layout saved there, if any.

    For other formats that persist a pruned model (e.g. INT8 weights of one): call
    ``write_layout`` when saving and this right after building the fp32 model when loading.
    """
    layout = read_layout(path)
    if layout is None:
        return False
    resize_to_layout(model, layout["layers"])
    return True


# --------------------------------------------------------------------------------------------
# Calibration text and gradients (taylor importance)


def sample_documents(corpus, count: int, seed: int, max_documents: int | None = None) -> list[str]:
    """A seeded uniform sample (reservoir) of ``count`` documents among the first ``max_documents``.

    ``corpus`` is anything ``compresso.corpus.as_corpus`` takes (files or a hub dataset id) or a
    ``Corpus``; documents are streamed, so only the sample is held in memory.
    """
    from compresso.corpus import CorpusError, as_corpus, raw_documents

    rng = random.Random(seed)
    sample: list[str] = []
    try:
        source = as_corpus(corpus)
        for seen, text in enumerate(raw_documents(source), start=1):
            if len(sample) < count:
                sample.append(text)
            else:
                j = rng.randrange(seen)
                if j < count:
                    sample[j] = text
            if max_documents is not None and seen >= max_documents:
                break
    except CorpusError as exc:
        raise StrategyError(f"calibration text for taylor importance: {exc}") from None
    if not sample:
        raise StrategyError(f"calibration text for taylor importance: {source.describe()} holds no documents")
    return sample


def mlm_batches(tokenizer, lines: list[str], batch_size: int, seq_len: int, mask_prob: float,
                seed: int) -> list[dict[str, torch.Tensor]]:
    """Masked-LM batches (80/10/10 masking by transformers' collator), fixed by ``seed``."""
    from transformers import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mask_prob, seed=seed)
    batches = []
    for start in range(0, len(lines), batch_size):
        encoded = tokenizer(lines[start:start + batch_size], truncation=True, max_length=seq_len,
                            return_special_tokens_mask=True)
        features = [{k: encoded[k][i] for k in encoded} for i in range(len(encoded["input_ids"]))]
        batches.append(dict(collator(features)))
    return batches


def accumulate_gradients(model: nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device,
                         progress=None, description: str = "gradients") -> float:
    """Sum of gradients of the mean masked-LM loss over ``batches``; returns that loss."""
    model.to(device)
    model.eval()  # no dropout: the gradient of the model as it will be used
    model.zero_grad(set_to_none=True)
    total = 0.0
    task = progress.add_task(description, total=len(batches)) if progress else None
    with torch.enable_grad():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            (loss / len(batches)).backward()
            total += loss.item() / len(batches)
            if progress:
                progress.advance(task)
    return total


# --------------------------------------------------------------------------------------------
# Importance and pruning through torch-pruning


def _example_inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    vocab = model.config.vocab_size
    ids = torch.arange(16).remainder(vocab - 1).add(1).unsqueeze(0)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _first_tensor(output) -> torch.Tensor:
    return (output.logits if hasattr(output, "logits") else output[0]).float().sum()


class _Pruner:
    """One dependency graph of one model, with group scoring and pruning per layer."""

    def __init__(self, model: nn.Module, arch: Architecture):
        import torch_pruning as tp

        self.tp, self.model, self.arch = tp, model, arch
        self.graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=_example_inputs(model), output_transform=_first_tensor, verbose=False)
        self.layers = arch.layers(model)

    def _group(self, layer: nn.Module, kind: str, idxs: list[int]):
        tp, arch = self.tp, self.arch
        root = _get(layer, arch.query if kind == "heads" else arch.ffn_in)
        group = self.graph.get_pruning_group(root, tp.prune_linear_out_channels, idxs)
        # The traced coupling must be exactly the one this module expects: anything else means an
        # architecture variant whose heads/channels are tied to more than we know how to keep consistent.
        expected = ({(arch.query, "out"), (arch.key, "out"), (arch.value, "out"), (arch.attention_out, "in")}
                    if kind == "heads" else {(arch.ffn_in, "out"), (arch.ffn_out, "in")})
        names = {id(_get(layer, p)): p for p, _ in expected}
        found = set()
        for dep, _ in group:
            module = dep.target.module
            if isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm)):
                side = "out" if self.graph.is_out_channel_pruning_fn(dep.handler) else "in"
                found.add((names.get(id(module), self.graph._module2name.get(module, "?")), side))
        if found != expected:
            raise StrategyError(f"torch-pruning's dependency graph couples the {kind} of this "
                                f"{type(self.model).__name__} to {sorted(found)}, not to {sorted(expected)} as in "
                                f"the {arch.name} models prune supports: unsupported variant")
        return group

    def scores(self, kind: str, scorer) -> list[torch.Tensor]:
        """Per layer, one importance score per head or per FFN channel (higher = keep)."""
        out = []
        for layer in self.layers:
            if kind == "heads":
                width = _get(layer, self.arch.query).out_features
                channel = scorer(self._group(layer, kind, list(range(width))))
                head_dim = _get(layer, self.arch.attention).attention_head_size
                out.append(channel.view(-1, head_dim).mean(1).float().cpu())
            else:
                width = _get(layer, self.arch.ffn_in).out_features
                out.append(scorer(self._group(layer, kind, list(range(width)))).float().cpu())
        return out

    def remove(self, index: int, kind: str, units: list[int]) -> None:
        if not units:
            return
        layer = self.layers[index]
        if kind == "heads":
            attention = _get(layer, self.arch.attention)
            head_dim = attention.attention_head_size
            heads_now = _get(layer, self.arch.query).out_features // head_dim
            idxs = [h * head_dim + d for h in sorted(units) for d in range(head_dim)]
            group = self._group(layer, kind, idxs)
            group.prune()
            _set_head_count(attention, self.arch, heads_now - len(units))
        else:
            self._group(layer, kind, sorted(units)).prune()


def _select_layer(scores: torch.Tensor, keep: int) -> list[int]:
    """Indices of the lowest-scored units so that ``keep`` remain."""
    remove = len(scores) - keep
    if remove <= 0:
        return []
    return torch.argsort(scores, stable=True)[:remove].tolist()


def _select_global(scores: list[torch.Tensor], keep_total: int, minimum: int) -> list[list[int]]:
    """Lowest-scored units across layers, never leaving a layer with fewer than ``minimum``."""
    total = sum(len(s) for s in scores)
    remove = total - keep_total
    chosen: list[list[int]] = [[] for _ in scores]
    if remove <= 0:
        return chosen
    flat = torch.cat(scores)
    owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
    offset = torch.cat([torch.arange(len(s)) for s in scores])
    left = [len(s) for s in scores]
    for j in torch.argsort(flat, stable=True).tolist():
        layer = int(owner[j])
        if left[layer] <= minimum:
            continue
        chosen[layer].append(int(offset[j]))
        left[layer] -= 1
        remove -= 1
        if remove == 0:
            break
    return chosen


def _schedule(start: int, end: int, step: int, steps: int) -> int:
    """Units kept after ``step`` of ``steps``: a linear path from ``start`` to ``end``."""
    return round_half_up(start - (start - end) * step / steps)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# The strategy


class PruneStrategy(CompressionStrategy):
    """Remove attention heads and FFN channels by importance; torch-pruning keeps tensors consistent."""

    name = "prune"
    summary = "structured pruning of attention heads and FFN channels (torch-pruning)"
    Params = PruneParams
    params: PruneParams

    def preflight(self, ctx: RunContext) -> None:
        try:
            import torch_pruning  # noqa: F401
        except ImportError as exc:
            raise StrategyError(f"prune needs torch-pruning: pip install 'compresso[prune]' ({exc})") from None
        for path in self.params.corpus:
            resolved = ctx.resolve_path(path)
            if not resolved.is_file():
                raise StrategyError(f"corpus file {resolved} does not exist")

    def plan(self, model: nn.Module) -> tuple[Architecture, list[LayerShape], list[int] | None, list[int] | None]:
        """Check the model and the targets before any work; return the per-layer targets.

        Targets are heads/FFN widths kept per layer (``scope: layer``) or, for ``scope: global``,
        a one-element list with the total kept over all layers.
        """
        p = self.params
        arch = architecture_of(model)
        shapes = layer_shapes(model, arch)
        if p.importance == "taylor":
            if model.get_output_embeddings() is None or not type(model).__name__.endswith("ForMaskedLM"):
                raise StrategyError(f"importance: taylor scores units by the masked-LM loss and needs a "
                                    f"...ForMaskedLM model; got {type(model).__name__}. Use importance: "
                                    f"magnitude for this model.")
        targets: dict[str, list[int] | None] = {"heads": None, "ffn": None}
        for kind in ("heads", "ffn"):
            target: PruneTarget | None = getattr(p, kind)
            if target is None:
                continue
            sizes = [s.heads if kind == "heads" else s.ffn for s in shapes]
            what = "heads" if kind == "heads" else "FFN channels"
            if p.scope == "global":
                total = sum(sizes)
                kept_total = (round_half_up(total * (1 - target.ratio)) if target.ratio is not None
                              else int(target.keep))
                if kept_total > total:
                    raise StrategyError(f"{kind}.keep is {kept_total} in all, but the model has {total} {what}")
                if kind == "heads" and kept_total < len(sizes):
                    raise StrategyError(f"{kind}: keeping {kept_total} heads over {len(sizes)} layers would prune "
                                        f"every head of some layer; each layer needs at least one head")
                targets[kind] = [kept_total]
                continue
            kept = target.kept_per_layer(sizes, p.round_to if kind == "ffn" else 1)
            for i, (k, size) in enumerate(zip(kept, sizes)):
                if k > size:
                    raise StrategyError(f"{kind}: layer {i} has {size} {what}, cannot keep {k}")
                if k < 1:
                    detail = (f"ratio {target.ratio if target.is_single else _at(target.ratio, i)} of "
                              f"{size} keeps 0" if target.ratio is not None else "keep is 0")
                    raise StrategyError(f"{kind}: this would prune every {what[:-1]} of layer {i} ({detail}); "
                                        f"keep at least one")
            targets[kind] = kept
        return arch, shapes, targets["heads"], targets["ffn"]

    def apply(self, bundle: ModelBundle, ctx: RunContext) -> ModelBundle:
        p = self.params
        model = bundle.model
        arch, before, head_targets, ffn_targets = self.plan(model)
        home = next(model.parameters()).device
        params_before = parameter_count(model)
        started = time.time()

        batches = None
        if p.importance == "taylor":
            if bundle.tokenizer is None or bundle.tokenizer.mask_token is None:
                raise StrategyError("importance: taylor needs a tokenizer with a mask token")
            from compresso.corpus import Corpus

            source = (Corpus(files=tuple(ctx.resolve_path(x) for x in p.corpus)) if p.corpus else
                      Corpus(dataset=p.dataset, dataset_config=p.dataset_config, split=p.dataset_split,
                             text_field=p.text_field))
            lines = sample_documents(source, p.calibration_batches * p.batch_size, ctx.seed, p.max_documents)
            batches = mlm_batches(bundle.tokenizer, lines, p.batch_size, p.seq_len, p.mask_prob, ctx.seed)
            ctx.log(f"prune: taylor importance on {len(lines)} documents of {source.describe()} "
                    f"in {len(batches)} batches")

        import torch_pruning as tp

        scorer = (tp.importance.GroupMagnitudeImportance(p=2, normalizer=None) if p.importance == "magnitude"
                  else tp.importance.GroupTaylorImportance(normalizer=None))
        requires_grad = {name: q.requires_grad for name, q in model.named_parameters()}
        losses = []
        # Original indices of the heads removed and still present, for the report.
        heads_removed: list[list[int]] = [[] for _ in before]
        heads_alive = [list(range(s.heads)) for s in before]
        with ctx.progress() as progress:
            step_task = progress.add_task("pruning steps", total=p.steps)
            for step in range(1, p.steps + 1):
                if batches is not None:
                    for q in model.parameters():
                        q.requires_grad_(True)
                    losses.append(accumulate_gradients(model, batches, ctx.device, progress,
                                                       f"taylor gradients, step {step}/{p.steps}"))
                model.to("cpu")  # tracing and cutting are cheap; on CPU they behave the same everywhere
                pruner = _Pruner(model, arch)
                for kind, targets in (("heads", head_targets), ("ffn", ffn_targets)):
                    if targets is None:
                        continue
                    scores = pruner.scores(kind, scorer)
                    if p.scope == "global":
                        start = sum(s.heads if kind == "heads" else s.ffn for s in before)
                        keep_total = _schedule(start, targets[0], step, p.steps)
                        chosen = _select_global(scores, keep_total, minimum=1)
                    else:
                        chosen = [
                            _select_layer(scores[i], _schedule(b.heads if kind == "heads" else b.ffn,
                                                               targets[i], step, p.steps))
                            for i, b in enumerate(before)]
                    for i, units in enumerate(chosen):
                        pruner.remove(i, kind, units)
                        if kind == "heads":
                            heads_removed[i] += [heads_alive[i][u] for u in units]
                            heads_alive[i] = [h for j, h in enumerate(heads_alive[i]) if j not in units]
                model.zero_grad(set_to_none=True)
                progress.advance(step_task)
        for name, q in model.named_parameters():
            q.requires_grad_(requires_grad.get(name, True))
        model.to(home)

        after = layer_shapes(model, arch)
        expressible = config_describes(model, arch)
        if expressible:
            setattr(model.config, arch.ffn_config_key, after[0].ffn)
        fmt = "transformers" if expressible else self.name
        params_after = parameter_count(model)
        report = {
            "architecture": type(model).__name__, "importance": p.importance, "scope": p.scope, "steps": p.steps,
            "format": fmt, "parameters_before": params_before, "parameters_after": params_after,
            "seconds": round(time.time() - started, 2),
            "taylor_mlm_loss": [round(x, 4) for x in losses] or None,
            "layers": [{"layer": i, "heads_before": b.heads, "heads_after": a.heads,
                        "ffn_before": b.ffn, "ffn_after": a.ffn,
                        "heads_removed": sorted(heads_removed[i]), "heads_kept": heads_alive[i]}
                       for i, (b, a) in enumerate(zip(before, after))],
        }
        ctx.metrics.update({
            "parameters_before": params_before, "parameters_after": params_after,
            "parameters_removed_fraction": round(1 - params_after / params_before, 4),
            "heads": [s.heads for s in after], "ffn": [s.ffn for s in after], "format": fmt,
        })
        if ctx.is_main:
            _write_report(ctx.stage_dir, report)
        ctx.log(f"prune: {params_before / 1e6:.2f} M → {params_after / 1e6:.2f} M parameters "
                f"(heads {[s.heads for s in after]}, FFN {sorted({s.ffn for s in after})}), saved as {fmt}")
        return ModelBundle(model=model, tokenizer=bundle.tokenizer, lineage=bundle.lineage, format=fmt)

    # -- persistence ----------------------------------------------------------------------

    @classmethod
    def save(cls, bundle: ModelBundle, path: Path) -> None:
        """Weights and config by ``save_pretrained`` (safetensors), the per-layer shapes, the tokenizer."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model = bundle.model
        architecture_of(model)  # refuses what load could not rebuild
        model.save_pretrained(path, safe_serialization=True)
        if bundle.tokenizer is not None:
            bundle.tokenizer.save_pretrained(path)
        write_layout(model, path)
        write_json(path / "compresso.json", {**bundle.meta(), "format": cls.name})

    @classmethod
    def load(cls, path: Path, model_class: type | None = None, **model_kwargs) -> ModelBundle:
        """Rebuild a pruned model: config → model → pruned shapes → weights (strict for the backbone)."""
        import transformers
        from transformers import AutoConfig, AutoTokenizer

        path = Path(path)
        layout = read_layout(path)
        if layout is None:
            raise FileNotFoundError(f"{path} has format 'prune' in {BUNDLE_META} but no {LAYOUT_FILE}")
        dtype = model_kwargs.pop("dtype", torch.float32)
        attn_implementation = model_kwargs.pop("attn_implementation", "sdpa")
        config = AutoConfig.from_pretrained(path)
        for key, value in model_kwargs.items():
            if key != "num_labels" and not hasattr(config, key):
                raise TypeError(f"load() got {key}={value!r}, which is not a {type(config).__name__} setting")
            setattr(config, key, value)
        saved_class = getattr(transformers, layout["architecture"], None)
        target_class = model_class or saved_class
        if target_class is None:
            raise ValueError(f"{path / LAYOUT_FILE}: architecture {layout['architecture']!r} is not a transformers "
                             f"class")
        build = getattr(target_class, "from_config", None) or target_class._from_config
        model = build(config, attn_implementation=attn_implementation)
        resize_to_layout(model, layout["layers"])
        _load_weights(model, path, same_head=type(model).__name__ == layout["architecture"])
        model.to(dtype).eval()
        meta_path = path / BUNDLE_META
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))
        tokenizer = AutoTokenizer.from_pretrained(path) if has_tokenizer else None
        return ModelBundle(model=model, tokenizer=tokenizer, lineage=meta.get("lineage", []), format=cls.name)


def _at(spec, i):
    return spec[i] if isinstance(spec, list) else spec.get(i)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = path / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{path} holds neither model.safetensors nor model.safetensors.index.json")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        state.update(load_file(path / shard))
    return state


def _load_weights(model: nn.Module, path: Path, same_head: bool) -> None:
    """Load saved weights; every backbone tensor must be there with its pruned shape.

    With another head than the saved one (a task head on a pruned masked-LM model) the head and a
    pooler the file lacks keep their fresh initialisation, as ``from_pretrained`` does.
    """
    state = _read_state(path)
    prefix = model.base_model_prefix
    has_base_attr = model.base_model is not model
    file_prefixed = any(k.startswith(prefix + ".") for k in state)
    if has_base_attr and not file_prefixed:
        state = {f"{prefix}.{k}": v for k, v in state.items()}
    elif not has_base_attr and file_prefixed:
        state = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
    own = model.state_dict()
    wanted = {k: v for k, v in state.items() if k in own}
    mismatched = [f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}"
                  for k, v in wanted.items() if v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f"{path}: weights do not fit the pruned layout: {'; '.join(mismatched[:5])}")
    model.load_state_dict(wanted, strict=False)
    # A missing key is fine when it is tied to a loaded one (MLM decoder = word embeddings) or, under
    # another head, when it is the new head or a pooler the saved model did not have.
    aliases: dict[int, set[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        aliases.setdefault(id(tensor), set()).add(name)
    missing = []
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name in wanted or aliases[id(tensor)] & wanted.keys():
            continue
        in_backbone = name.startswith(prefix + ".") or not has_base_attr
        if not same_head and (not in_backbone or ".pooler." in f".{name}"):
            continue
        missing.append(name)
    if missing:
        raise ValueError(f"{path}: the saved weights lack {len(missing)} tensors of the model, e.g. "
                         f"{', '.join(missing[:5])}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def _write_report(stage_dir: Path, report: dict) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json(stage_dir / "prune_report.json", report)
    lines = [
        f"# Pruning report ({report['architecture']})", "",
        f"- importance: {report['importance']}, scope: {report['scope']}, steps: {report['steps']}",
        f"- parameters: {report['parameters_before']:,} → {report['parameters_after']:,} "
        f"({100 * (1 - report['parameters_after'] / report['parameters_before']):.1f}% removed)",
        f"- saved as: `{report['format']}`", "",
        "| layer | heads | FFN | heads removed (original index) |", "|---:|---:|---:|---|",
    ]
    for row in report["layers"]:
        lines.append(f"| {row['layer']} | {row['heads_before']} → {row['heads_after']} | "
                     f"{row['ffn_before']} → {row['ffn_after']} | {row['heads_removed'] or '-'} |")
    (stage_dir / "prune_report.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r["layer"] for r in report["layers"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, title in ((axes[0], "heads", "attention heads"), (axes[1], "ffn", "FFN channels")):
        ax.bar(layers, [r[f"{key}_before"] for r in report["layers"]], color="#dddddd", label="before")
        ax.bar(layers, [r[f"{key}_after"] for r in report["layers"]], color="#3b6ea8", label="after")
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(stage_dir / "prune_layers.png", dpi=110)
    plt.close(fig)


__all__ = ["PruneStrategy", "PruneParams", "PruneTarget", "Architecture", "ARCHITECTURES", "LayerShape",
           "architecture_of", "layer_shapes", "config_describes", "resize_to_layout", "write_layout", "write_layout_if_pruned",
           "read_layout", "apply_saved_layout", "sample_documents",
           "mlm_batches"]
