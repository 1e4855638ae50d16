"""Which Linear layers are quantized, and the int8-with-row-scales storage of weights and embeddings."""

from __future__ import annotations

import fnmatch

import torch


def _excluded(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in patterns)


def linear_names(model: torch.nn.Module, patterns: list[str]) -> tuple[list[str], list[str]]:
    """(quantized, excluded) names of the model's Linear layers.

    A Linear whose weight *is* the word-embedding table (a tied masked-LM decoder) is always kept
    out of the int8 graph: the table is stored int8 anyway, and with the tied weight quantized in the
    graph a model reloaded in a fresh process ran about 100x slower (measured, torch 2.13)."""
    emb = word_embedding(model)
    quantized, excluded = [], []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            tied = emb is not None and module.weight is emb.weight
            (excluded if tied or _excluded(name, patterns) else quantized).append(name)
    return quantized, excluded


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one fp32 scale per row (the layout of per-channel Linear weights)."""
    amax = weight.detach().abs().amax(dim=1).float()
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.clamp(torch.round(weight.detach().float() / scale[:, None]), -127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.reshape(-1, *([1] * (q.dim() - 1)))


def word_embedding(model: torch.nn.Module) -> torch.nn.Embedding | None:
    try:
        emb = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        return None
    return emb if isinstance(emb, torch.nn.Embedding) else None


def param_name(model: torch.nn.Module, tensor: torch.Tensor) -> str | None:
    for name, p in model.named_parameters(remove_duplicate=False):
        if p is tensor:
            return name
    return None


def int8_embedding(model: torch.nn.Module) -> tuple[str, torch.Tensor, torch.Tensor] | None:
    """Round the word-embedding table to int8 with row scales, in place (the model then computes with
    the de-quantized table, as after loading); returns (parameter name, int8 rows, scales)."""
    emb = word_embedding(model)
    if emb is None:
        return None
    q, scale = int8_rows(emb.weight.data)
    emb.weight.data = dequantize_rows(q, scale)
    return param_name(model, emb.weight), q, scale
