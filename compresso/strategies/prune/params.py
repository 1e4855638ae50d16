"""The ``prune`` strategy's parameters: what to remove (heads, FFN channels) and how to score it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from compresso.strategy import InputPath, StrategyError, StrategyParams


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
