"""Evaluation metrics and loyalty against hand-computed values."""

import math

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from compresso.evaluation.finetune import Predictions, as_logits, make_forward
from compresso.evaluation.metrics import (
    classification_scores,
    label_loyalty,
    ner_scores,
    probability_loyalty,
    regression_loyalty,
    regression_scores,
    tagging_scores,
)


def entropy2(p):
    p = np.asarray(p, dtype=float)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def jsd_by_hand(p, q):
    m = (np.asarray(p) + np.asarray(q)) / 2
    return entropy2(m) - (entropy2(p) + entropy2(q)) / 2


def test_perfect_predictors_score_100():
    gold_tags = [["NOUN", "VERB", "PUNCT"], ["DET", "NOUN"]]
    assert tagging_scores(gold_tags, gold_tags) == {"accuracy": 100.0, "macro_f1": 100.0}
    gold_ner = [["B-PERSON", "I-PERSON", "O", "B-GPE"], ["O", "B-ORG"]]
    scores = ner_scores(gold_ner, gold_ner)
    assert scores["f1_macro"] == scores["f1_micro"] == 100.0
    assert classification_scores(["1", "2", "4", "5"], ["1", "2", "4", "5"]) == {"accuracy": 100.0, "macro_f1": 100.0}
    gold = np.array([0.0, 1.2, 3.4, 5.0, 2.2])
    assert regression_scores(gold, gold) == pytest.approx({"pearson": 100.0, "spearman": 100.0})


def test_tagging_and_classification_known_values():
    # A: precision 1, recall 1/2 -> F1 2/3; B: precision 2/3, recall 1 -> F1 4/5; macro 11/15
    scores = tagging_scores([["A", "A"], ["B", "B"]], [["A", "B"], ["B", "B"]])
    assert scores["accuracy"] == pytest.approx(75.0)
    assert scores["macro_f1"] == pytest.approx(100 * 11 / 15)
    scores = classification_scores(["neg", "neg", "pos", "pos"], ["neg", "pos", "pos", "pos"])
    assert scores == pytest.approx({"accuracy": 75.0, "macro_f1": 100 * 11 / 15})


def test_ner_is_entity_level():
    gold = [["B-PERSON", "I-PERSON", "O", "B-GPE"]]
    # PERSON found exactly, GPE missed: macro (1 + 0) / 2, micro P = 1/1, R = 1/2
    scores = ner_scores(gold, [["B-PERSON", "I-PERSON", "O", "O"]])
    assert scores["f1_macro"] == pytest.approx(50.0)
    assert scores["f1_micro"] == pytest.approx(100 * 2 / 3)
    # a span that is one word short is a wrong entity, although 3 of 4 tags are right
    scores = ner_scores(gold, [["B-PERSON", "O", "O", "B-GPE"]])
    assert scores["f1_micro"] == pytest.approx(50.0)


def test_regression_known_values_and_constant_predictor():
    gold = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.0, 3.0, 2.0, 4.0])
    # Pearson of (1,2,3,4) and (1,3,2,4): cov 4/3 ÷ var 5/3 = 0.8; Spearman equal here (ranks = values)
    assert regression_scores(gold, pred) == pytest.approx({"pearson": 80.0, "spearman": 80.0})
    assert regression_scores(gold, np.full(4, 2.5)) == {"pearson": 0.0, "spearman": 0.0}


def test_label_loyalty():
    assert label_loyalty(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 2])) == 1.0
    assert label_loyalty(np.array([0, 1, 2, 2]), np.array([0, 0, 2, 1])) == 0.5
    with pytest.raises(ValueError):
        label_loyalty(np.array([0, 1]), np.array([0]))


def test_probability_loyalty_values():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=50)
    assert probability_loyalty(p, p) == pytest.approx(1.0, abs=1e-12)  # JSD of identical rows is 0
    assert jsd_by_hand(p[0], p[0]) == pytest.approx(0.0, abs=1e-12)
    # [0.5, 0.5] vs [1, 0]: JSD = H([.75, .25]) - (1 + 0) / 2 = 0.311278; loyalty = 1 - sqrt(JSD)
    jsd = jsd_by_hand([0.5, 0.5], [1.0, 0.0])
    assert jsd == pytest.approx(0.3112781245, abs=1e-9)
    assert probability_loyalty(np.array([[0.5, 0.5]]), np.array([[1.0, 0.0]])) == pytest.approx(1 - math.sqrt(jsd))
    assert probability_loyalty(np.array([[0.5, 0.5]]), np.array([[1.0, 0.0]])) == pytest.approx(0.4420769547)
    # disjoint supports: JSD = 1 bit, loyalty 0; the mean runs over rows
    assert probability_loyalty(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])) == pytest.approx(0.0)
    both = probability_loyalty(np.array([[1.0, 0.0], [0.3, 0.7]]), np.array([[0.0, 1.0], [0.3, 0.7]]))
    assert both == pytest.approx(0.5)
    # symmetric, in [0, 1]
    q = rng.dirichlet(np.ones(5), size=50)
    assert probability_loyalty(p, q) == pytest.approx(probability_loyalty(q, p))
    assert 0.0 < probability_loyalty(p, q) < 1.0


def test_regression_loyalty_values():
    y = np.array([0.0, 2.5, 5.0])
    assert regression_loyalty(y, y, (0.0, 5.0)) == 1.0
    assert regression_loyalty(np.zeros(3), np.full(3, 5.0), (0.0, 5.0)) == 0.0
    # RMSE of (0,5) vs (1,5) = sqrt(1/2); loyalty = 1 - sqrt(.5)/5
    assert regression_loyalty(np.array([0.0, 5.0]), np.array([1.0, 5.0]), (0.0, 5.0)) == pytest.approx(
        1 - math.sqrt(0.5) / 5)
    # predictions outside the label range are clipped, so loyalty stays in [0, 1]
    assert regression_loyalty(np.array([-3.0]), np.array([9.0]), (0.0, 5.0)) == 0.0
    assert regression_loyalty(np.array([5.0]), np.array([7.0]), (0.0, 5.0)) == 1.0


def test_predictions_helpers():
    pred = Predictions("tagging", probs=np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), offsets=np.array([0, 2, 3]))
    assert pred.label_ids().tolist() == [0, 1, 0]
    assert [x.tolist() for x in pred.per_example(pred.label_ids())] == [[0, 1], [0]]


class _Keywords(torch.nn.Module):
    """Names two of the three inputs and returns a transformers ModelOutput."""

    def forward(self, input_ids, attention_mask):
        return SequenceClassifierOutput(logits=(input_ids * attention_mask).float())


class _Positional(torch.nn.Module):
    """Like an exported graph: positional inputs only, a bare tensor out."""

    def forward(self, *args):
        assert len(args) == 2
        return args[0].float() + 1


class _Tuple(torch.nn.Module):
    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        assert token_type_ids is not None
        return (input_ids.float() * 2,)


def test_forward_adapts_to_signature_and_output_type():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
             "token_type_ids": torch.zeros(2, 3, dtype=torch.long)}
    assert make_forward(_Keywords())(batch).tolist() == [[1.0] * 3] * 2
    assert make_forward(_Positional())(batch).tolist() == [[2.0] * 3] * 2
    assert make_forward(_Tuple())(batch).tolist() == [[2.0] * 3] * 2
    assert as_logits({"logits": torch.zeros(1)}).shape == (1,)
    with pytest.raises(TypeError, match="cannot find logits"):
        as_logits("not an output")
