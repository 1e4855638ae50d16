"""Task metrics (scikit-learn, seqeval, scipy) and loyalty between two fine-tuned models.

Scores are on a 0–100 scale like the paper's tables; loyalties lie in [0, 1].
"""

from __future__ import annotations

import warnings

import numpy as np

# scikit-learn, seqeval and scipy are imported where used: validating a recipe imports this
# package but should not pay for them.


def tagging_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Per-word accuracy and macro-F1 over the tags present in gold or predictions."""
    from sklearn.metrics import accuracy_score, f1_score

    g = [t for sent in gold for t in sent]
    p = [t for sent in pred for t in sent]
    return {"accuracy": 100.0 * accuracy_score(g, p),
            "macro_f1": 100.0 * f1_score(g, p, average="macro", zero_division=0)}


def ner_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level (exact span and type) F1 with seqeval, macro and micro averaged over types."""
    from seqeval.metrics import f1_score as entity_f1
    from seqeval.metrics import precision_score as entity_precision
    from seqeval.metrics import recall_score as entity_recall

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns about types with no predicted entity
        return {"f1_macro": 100.0 * entity_f1(gold, pred, average="macro", zero_division=0),
                "f1_micro": 100.0 * entity_f1(gold, pred, average="micro", zero_division=0),
                "precision_micro": 100.0 * entity_precision(gold, pred, average="micro", zero_division=0),
                "recall_micro": 100.0 * entity_recall(gold, pred, average="micro", zero_division=0)}


def classification_scores(gold: list[str], pred: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": 100.0 * accuracy_score(gold, pred),
            "macro_f1": 100.0 * f1_score(gold, pred, average="macro", zero_division=0)}


def regression_scores(gold: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    gold, pred = np.asarray(gold, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if np.ptp(pred) == 0 or np.ptp(gold) == 0:
        # a constant predictor has no correlation; scipy would return nan with a warning
        return {"pearson": 0.0, "spearman": 0.0}
    return {"pearson": 100.0 * float(pearsonr(gold, pred)[0]),
            "spearman": 100.0 * float(spearmanr(gold, pred)[0])}


# --- loyalty ---------------------------------------------------------------------------------


def label_loyalty(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Share of examples (or words, for tagging) on which the two models predict the same label."""
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    if labels_a.shape != labels_b.shape or labels_a.size == 0:
        raise ValueError(f"label loyalty needs two equally long, non-empty predictions; got {labels_a.shape} "
                         f"and {labels_b.shape}")
    return float(np.mean(labels_a == labels_b))


def probability_loyalty(p_teacher: np.ndarray, p_student: np.ndarray) -> float:
    """mean(1 − √JSD(p_t, p_s)) with base-2 JSD, so each term lies in [0, 1].

    scipy's ``jensenshannon`` returns the Jensen–Shannon *distance*, already the square root of
    the divergence, so the term is ``1 − jensenshannon(p_t, p_s, base=2)``.
    """
    from scipy.spatial.distance import jensenshannon

    p_t = np.asarray(p_teacher, dtype=np.float64)
    p_s = np.asarray(p_student, dtype=np.float64)
    if p_t.shape != p_s.shape or p_t.ndim != 2 or p_t.shape[0] == 0:
        raise ValueError(f"probability loyalty needs two [N, classes] arrays of one shape; got {p_t.shape} "
                         f"and {p_s.shape}")
    with np.errstate(invalid="ignore"):
        distance = jensenshannon(p_t, p_s, base=2, axis=1)
    # Rounding can make the divergence of (nearly) identical rows a tiny negative: distance 0.
    distance = np.nan_to_num(distance, nan=0.0)
    return float(np.mean(1.0 - np.clip(distance, 0.0, 1.0)))


def regression_loyalty(y_teacher: np.ndarray, y_student: np.ndarray, value_range: tuple[float, float]) -> float:
    """1 − RMSE(ŷ_t, ŷ_s) / (high − low), with both predictions clipped to the label range.

    1 means identical predictions; 0 means the two models sit at opposite ends of the scale on
    every example. See docs/evaluation.md for why this definition.
    """
    low, high = value_range
    y_t = np.clip(np.asarray(y_teacher, dtype=np.float64), low, high)
    y_s = np.clip(np.asarray(y_student, dtype=np.float64), low, high)
    if y_t.shape != y_s.shape or y_t.size == 0:
        raise ValueError(f"regression loyalty needs two equally long predictions; got {y_t.shape} and {y_s.shape}")
    rmse = float(np.sqrt(np.mean((y_t - y_s) ** 2)))
    return 1.0 - rmse / (high - low)
