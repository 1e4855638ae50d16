"""Importance and pruning through torch-pruning: scoring groups, choosing units, cutting them."""

from __future__ import annotations

import torch
from torch import nn

from compresso.strategy import StrategyError

from compresso.strategies.prune.layout import Architecture, _get, _set_head_count
from compresso.strategies.prune.params import round_half_up


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
