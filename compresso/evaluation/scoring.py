"""From predictions to task scores and loyalties."""

from __future__ import annotations

import numpy as np

from compresso.evaluation.data import Example
from compresso.evaluation.finetune import Predictions
from compresso.evaluation.metrics import (
    classification_scores,
    label_loyalty,
    ner_scores,
    probability_loyalty,
    regression_loyalty,
    regression_scores,
    tagging_scores,
)
from compresso.evaluation.tasks import TaskSpec


def score(spec: TaskSpec, examples: list[Example], labels: list[str] | None, pred: Predictions) -> dict[str, float]:
    """Every metric of the task, 0–100."""
    if spec.kind == "regression":
        return regression_scores(np.array([ex.label for ex in examples]), pred.values)
    names = np.asarray(labels, dtype=object)
    predicted = names[pred.label_ids()]
    if spec.kind == "tagging":
        gold = [list(ex.label) for ex in examples]
        guessed = [list(x) for x in pred.per_example(predicted)]
        return ner_scores(gold, guessed) if spec.entity_level else tagging_scores(gold, guessed)
    return classification_scores([ex.label for ex in examples], list(predicted))


def loyalty(spec: TaskSpec, teacher: Predictions, student: Predictions) -> dict[str, float]:
    """Label and probability loyalty (classification, per word for tagging) or regression loyalty."""
    if spec.kind == "regression":
        return {"regression": regression_loyalty(teacher.values, student.values, spec.value_range)}
    return {"label": label_loyalty(teacher.label_ids(), student.label_ids()),
            "probability": probability_loyalty(teacher.probs, student.probs)}
