"""Soft targets from fine-tuned teachers and the task-distillation loss.

Teachers' predictions are per example (classification, regression) or per word (tagging: each
model's distribution at the first sub-token of the word, under its own tokenizer), so teachers
and student with different vocabularies line up by example and word index; no vocabulary
alignment is needed. Probabilities are softened per teacher at temperature T
(``softmax(z / T)`` = ``p^(1/T)`` renormalised), then combined:

* arithmetic: ``sum_i w_i p_i`` (weights renormalised over the teachers that see the row);
* geometric: ``exp(sum_i w_i log p_i)`` renormalised.

The loss is ``alpha_kd * T^2 * KL(p_teachers || softmax(z_student / T)) + alpha_ce * CE(z_student,
gold)``, each a mean over the rows (examples or words) it applies to; regression uses the MSE to
the teachers' weighted mean score and to the gold score, on the [0, 1] scale the head is trained
on.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PROB_FLOOR = 1e-12
"""Probabilities below this are raised to it before taking logs (a float32 softmax underflows to 0
where the teacher's logit gap exceeds ~100; such classes carry no mass either way)."""


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(z / T)`` from ``softmax(z)``: ``p^(1/T)`` renormalised per row (float64)."""
    log_p = np.log(np.maximum(np.asarray(probs, dtype=np.float64), PROB_FLOOR)) / temperature
    log_p -= log_p.max(axis=1, keepdims=True)
    out = np.exp(log_p)
    return out / out.sum(axis=1, keepdims=True)


def ensemble_probs(probs: list[np.ndarray], weights: list[float], mode: str,
                   coverage: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Combine the teachers' ``[rows, classes]`` probabilities; returns (probabilities, mask of rows
    at least one teacher sees). ``coverage[i]`` (bool per row, default all) says where teacher i
    has a prediction of its own (a word it truncated away has none); a row's weights are
    renormalised over the teachers that cover it."""
    if not probs:
        raise ValueError("no teacher probabilities to combine")
    rows, classes = probs[0].shape
    w = np.asarray(weights, dtype=np.float64)
    cover = np.ones((len(probs), rows), dtype=bool) if coverage is None else np.stack(coverage).astype(bool)
    row_w = w[:, None] * cover  # [teachers, rows]
    total = row_w.sum(axis=0)
    seen = total > 0
    row_w = np.divide(row_w, total, out=np.zeros_like(row_w), where=seen)
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probs])  # [teachers, rows, classes]
    if mode == "arithmetic":
        out = np.einsum("tr,trc->rc", row_w, stacked)
    elif mode == "geometric":
        log_mean = np.einsum("tr,trc->rc", row_w, np.log(np.maximum(stacked, PROB_FLOOR)))
        log_mean -= log_mean.max(axis=1, keepdims=True)
        out = np.exp(log_mean)
        out /= out.sum(axis=1, keepdims=True)
    else:
        raise ValueError(f"unknown ensemble {mode!r}; expected arithmetic or geometric")
    out[~seen] = 1.0 / classes  # never used as a target (the mask is False), but a valid distribution
    return out, seen


def ensemble_values(values: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """The teachers' weighted mean score per example (regression)."""
    w = np.asarray(weights, dtype=np.float64)
    return np.einsum("t,tr->r", w / w.sum(), np.stack([np.asarray(v, dtype=np.float64) for v in values]))


def soft_target_kl(student_logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                   row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``T^2 * KL(targets || softmax(student_logits / T))``, the mean over the rows (weighted by
    ``row_weights``, e.g. 0 where no teacher saw the word). ``targets`` are already at T."""
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = targets.float()
    log_t = torch.log(t.clamp_min(PROB_FLOOR))
    per_row = (t * (log_t - log_q)).sum(-1)
    if row_weights is None:
        return temperature ** 2 * per_row.mean()
    row_weights = row_weights.float()
    return temperature ** 2 * (per_row * row_weights).sum() / row_weights.sum().clamp_min(1.0)


def gold_cross_entropy(student_logits: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on gold class ids (-100: no gold label), the mean over labelled rows; 0 when a
    batch has none. (No host synchronisation: a count, not a branch on the device's data.)"""
    total = F.cross_entropy(student_logits.float(), gold, ignore_index=-100, reduction="sum")
    return total / (gold != -100).sum().clamp_min(1)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the rows ``mask`` keeps (all by default); 0 when it keeps none."""
    squared = (prediction.float() - target.float()) ** 2
    if mask is None:
        return squared.mean()
    mask = mask.float()
    return (squared * mask).sum() / mask.sum().clamp_min(1.0)


def hidden_cosine(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cos`` between student and teacher states at the non-padding tokens."""
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1)
    mask = attention_mask.float()
    return ((1.0 - cos) * mask).sum() / mask.sum().clamp_min(1.0)
