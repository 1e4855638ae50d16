"""Paired bootstrap over test examples: is model A's headline score different from model B's?

Every headline metric of the suite is a function of sums over test examples — per-class true
positive / false positive / false negative counts (macro-F1 over words, classes or entity types),
correct/total counts (accuracy), or the moments Σx, Σy, Σx², Σy², Σxy, n (Pearson). So each
fine-tuning run is reduced to one row of counts per test example (``example_counts``), a bootstrap
resample is a vector of multiplicities over examples, and the resampled metric of every resample
at once is ``metric_from_counts(weights @ counts)``: exact, and memory-light.

Why not ``scipy.stats.bootstrap``: it materialises every resampled copy of its inputs (resamples
× examples × columns: several GB for XPOS with ~1,000 tag columns), and its statistic would have to
rebuild the per-seed, per-model metrics from those copies anyway; the count matrices make the
same percentile bootstrap a matrix product.

Pairing and seeds: one resample of test examples is applied to both models and to every seed; the
statistic is mean-over-seeds(A) − mean-over-seeds(B) on that resample, so the interval covers
test-set sampling with the seeds pooled (the seed-to-seed spread itself is reported as ± std).
"""

from __future__ import annotations

import numpy as np

from compresso.evaluation.data import Example
from compresso.evaluation.finetune import Predictions
from compresso.evaluation.tasks import TaskSpec

DEFAULT_RESAMPLES = 1000
DEFAULT_CONFIDENCE = 0.95


def _f1_counts(gold: np.ndarray, pred: np.ndarray, owner: np.ndarray, n_examples: int, n_classes: int) -> np.ndarray:
    """[examples, 3·classes]: per-class TP, FP, FN of the items each example owns."""
    counts = np.zeros((n_examples, 3, n_classes), dtype=np.float64)
    hit = gold == pred
    np.add.at(counts, (owner[hit], 0, gold[hit]), 1)
    np.add.at(counts, (owner[~hit], 1, pred[~hit]), 1)
    np.add.at(counts, (owner[~hit], 2, gold[~hit]), 1)
    return counts.reshape(n_examples, 3 * n_classes)


def _entity_counts(gold: list[list[str]], pred: list[list[str]]) -> np.ndarray:
    """[sentences, 3·types]: per-type TP, FP, FN of exact entity spans (seqeval's default mode)."""
    from seqeval.metrics.sequence_labeling import get_entities

    per_sentence = [(set(get_entities(g)), set(get_entities(p))) for g, p in zip(gold, pred)]
    types = sorted({e[0] for g, p in per_sentence for e in g | p})
    index = {t: i for i, t in enumerate(types)}
    counts = np.zeros((len(gold), 3, max(1, len(types))), dtype=np.float64)
    for row, (g, p) in enumerate(per_sentence):
        for e in g & p:
            counts[row, 0, index[e[0]]] += 1
        for e in p - g:
            counts[row, 1, index[e[0]]] += 1
        for e in g - p:
            counts[row, 2, index[e[0]]] += 1
    return counts.reshape(len(gold), -1)


def example_counts(spec: TaskSpec, examples: list[Example], labels: list[str] | None,
                   pred: Predictions) -> np.ndarray:
    """One row of sufficient statistics of the task's headline metric per test example."""
    if spec.kind == "regression":
        gold = np.asarray([ex.label for ex in examples], dtype=np.float64)
        x = np.asarray(pred.values, dtype=np.float64)
        return np.stack([x, gold, x * x, gold * gold, x * gold, np.ones_like(x)], axis=1)
    index = {label: i for i, label in enumerate(labels)}
    if spec.kind == "tagging":
        if spec.headline == "f1_macro":  # NER: entity spans
            names = np.asarray(labels, dtype=object)[pred.label_ids()]
            return _entity_counts([list(ex.label) for ex in examples], [list(x) for x in pred.per_example(names)])
        gold = np.asarray([index[t] for ex in examples for t in ex.label], dtype=np.int64)
        owner = np.repeat(np.arange(len(examples)), np.diff(pred.offsets))
    else:
        gold = np.asarray([index[ex.label] for ex in examples], dtype=np.int64)
        owner = np.arange(len(examples))
    guess = pred.label_ids().astype(np.int64)
    if spec.headline == "accuracy":
        correct = np.bincount(owner, weights=(gold == guess).astype(np.float64), minlength=len(examples))
        total = np.bincount(owner, minlength=len(examples)).astype(np.float64)
        return np.stack([correct, total], axis=1)
    return _f1_counts(gold, guess, owner, len(examples), len(labels))


def metric_from_counts(spec: TaskSpec, totals: np.ndarray) -> np.ndarray:
    """The headline metric (0–100) from summed counts; ``totals`` is [..., columns]."""
    totals = np.asarray(totals, dtype=np.float64)
    if spec.kind == "regression":
        sx, sy, sxx, syy, sxy, n = np.moveaxis(totals, -1, 0)
        cov = sxy - sx * sy / n
        var = (sxx - sx * sx / n) * (syy - sy * sy / n)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(var > 0, cov / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)
        return 100.0 * r
    if spec.headline == "accuracy":
        return 100.0 * totals[..., 0] / np.maximum(totals[..., 1], 1.0)
    tp, fp, fn = np.split(totals, 3, axis=-1)
    denominator = 2 * tp + fp + fn
    present = denominator > 0  # sklearn/seqeval macro: classes seen in gold or predictions
    f1 = np.where(present, 2 * tp / np.where(present, denominator, 1.0), 0.0)
    return 100.0 * f1.sum(-1) / np.maximum(present.sum(-1), 1)


def bootstrap_weights(n_examples: int, n_resamples: int, seed: int) -> np.ndarray:
    """[resamples, examples] multiplicities of a resample with replacement (fixed seed)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_examples, np.full(n_examples, 1.0 / n_examples), size=n_resamples).astype(np.float64)


def resampled_score(spec: TaskSpec, runs: list[np.ndarray], weights: np.ndarray) -> tuple[float, np.ndarray]:
    """(observed, [resamples]) seed-mean headline metric of one model's runs (one count matrix per
    seed) on the full test set and on every resample that ``weights`` describes."""
    observed = float(np.mean([metric_from_counts(spec, c.sum(0)) for c in runs]))
    resampled = np.mean([metric_from_counts(spec, weights @ c) for c in runs], axis=0)
    return observed, resampled


def difference_interval(a: tuple[float, np.ndarray], b: tuple[float, np.ndarray],
                        confidence: float = DEFAULT_CONFIDENCE) -> dict:
    """A − B with the percentile interval of the paired resampled differences; ``distinguishable``
    when the interval excludes zero."""
    diffs = a[1] - b[1]
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return {"difference": a[0] - b[0], "low": float(low), "high": float(high), "confidence": confidence,
            "resamples": len(diffs), "distinguishable": bool(low > 0 or high < 0)}


def paired_bootstrap(spec: TaskSpec, counts_a: list[np.ndarray], counts_b: list[np.ndarray],
                     n_resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                     seed: int = 0) -> dict:
    """Difference A − B of the seed-mean headline metric and its percentile bootstrap interval.

    ``counts_a``/``counts_b`` hold one [examples, columns] matrix per seed (from
    ``example_counts``), over the same test examples in the same order.
    """
    if not counts_a or not counts_b:
        raise ValueError("paired bootstrap needs at least one run of each model")
    n = counts_a[0].shape[0]
    if any(c.shape[0] != n for c in counts_a + counts_b):
        raise ValueError("paired bootstrap needs both models scored on the same test examples")
    weights = bootstrap_weights(n, n_resamples, seed)
    return difference_interval(resampled_score(spec, counts_a, weights), resampled_score(spec, counts_b, weights),
                               confidence)
