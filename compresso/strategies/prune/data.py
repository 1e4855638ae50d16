"""Calibration text and masked-LM gradients for taylor importance."""

from __future__ import annotations

import random

import torch
from torch import nn

from compresso.strategy import StrategyError


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
