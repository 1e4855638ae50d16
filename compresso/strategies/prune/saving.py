"""Reading a pruned model's weights back into a model resized to its saved layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn


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
