"""Calibration and check text: where it comes from, how it is sampled and batched."""

from __future__ import annotations

import random
from typing import Any

import torch

from compresso.strategies.quantize.params import QuantizeParams
from compresso.strategy import RunContext, StrategyError


def _lineage_corpus(lineage: list[dict]) -> dict | None:
    """The text source of the latest distillation stage in the model's history."""
    for record in reversed(lineage or []):
        params = record.get("params") or {}
        if record.get("strategy") == "distill" and (params.get("corpus") or params.get("dataset")):
            return params
    return None


def calibration_source(params: QuantizeParams, lineage: list[dict], ctx: RunContext):
    """A ``compresso.corpus.Corpus`` for calibration, or None when neither params nor lineage name one."""
    from compresso.corpus import Corpus, CorpusError

    cal = params.calibration
    src: dict[str, Any] | None
    if cal.corpus or cal.dataset:
        src = {"corpus": cal.corpus, "dataset": cal.dataset, "dataset_config": cal.dataset_config,
               "dataset_split": cal.dataset_split, "text_field": cal.text_field}
    else:
        src = _lineage_corpus(lineage)
    if src is None:
        return None
    try:
        if src.get("corpus"):
            return Corpus(files=tuple(ctx.resolve_path(p) for p in src["corpus"]))
        return Corpus(dataset=src["dataset"], dataset_config=src.get("dataset_config"),
                      split=src.get("dataset_split", "train"), text_field=src.get("text_field", "text"))
    except CorpusError as exc:
        raise StrategyError(f"calibration text: {exc}") from None


def sample_documents(source, count: int, scan: int, seed: int) -> list[str]:
    """``count`` documents drawn without replacement (seeded) from the first ``scan`` of ``source``."""
    from compresso.corpus import CorpusError, iter_documents

    rng = random.Random(seed)
    reservoir: list[str] = []
    try:
        for i, text in enumerate(iter_documents(source, part="all")):
            if i >= max(scan, count):
                break
            if len(reservoir) < count:
                reservoir.append(text)
            else:
                j = rng.randint(0, i)
                if j < count:
                    reservoir[j] = text
    except CorpusError as exc:
        raise StrategyError(f"calibration text: {exc}") from None
    return reservoir


def batches(tokenizer, texts: list[str], input_names: list[str], max_length: int, batch_size: int):
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt")
        if "token_type_ids" in input_names and "token_type_ids" not in enc:
            enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
        yield {k: enc[k] for k in input_names}


def random_batches(vocab_size: int, input_names: list[str], count: int, length: int, seed: int):
    """Stand-in check inputs for the dynamic method when no text is named anywhere."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (count, length), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    return [{k: batch[k] for k in input_names}]
