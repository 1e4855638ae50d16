"""Where heads and FFN channels live per architecture, per-layer shapes, and ``prune_layout.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from compresso.strategy import StrategyError, write_json

LAYOUT_FILE = "prune_layout.json"
LAYOUT_VERSION = 1


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
