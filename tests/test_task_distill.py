"""task_distill: the soft-target maths against hand-computed cases, word alignment across two
tokenizers, the ensemble means, bad teachers, and a stage that resumes after a kill."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

from compresso.evaluation.data import Example
from compresso.evaluation.features import encode
from compresso.evaluation.finetune import predict
from compresso.evaluation.tasks import TASKS
from compresso.strategies.task_distill.losses import (
    ensemble_probs,
    ensemble_values,
    gold_cross_entropy,
    soft_target_kl,
    soften,
)
from tests.tiny import tiny_tokenizer


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _softmax(z, t=1.0):
    e = [math.exp(x / t) for x in z]
    return [x / sum(e) for x in e]


# --- the maths ---------------------------------------------------------------------------------

def test_soften_is_the_softmax_at_temperature():
    z = [2.0, 0.5, -1.0]
    assert np.allclose(soften(np.array([_softmax(z)]), 2.0)[0], _softmax(z, 2.0), atol=1e-12)
    assert np.allclose(soften(np.array([_softmax(z)]), 0.5)[0], _softmax(z, 0.5), atol=1e-12)


def test_weighted_arithmetic_and_geometric_means_by_hand():
    p1, p2 = [0.8, 0.2], [0.4, 0.6]
    arith, seen = ensemble_probs([np.array([p1]), np.array([p2])], [0.75, 0.25], "arithmetic")
    assert seen.all()
    assert np.allclose(arith[0], [0.75 * 0.8 + 0.25 * 0.4, 0.75 * 0.2 + 0.25 * 0.6])  # [0.7, 0.3]
    geo, _ = ensemble_probs([np.array([p1]), np.array([p2])], [0.75, 0.25], "geometric")
    a = 0.8 ** 0.75 * 0.4 ** 0.25
    b = 0.2 ** 0.75 * 0.6 ** 0.25
    assert np.allclose(geo[0], [a / (a + b), b / (a + b)])  # renormalised: [0.7188, 0.2812]
    assert not np.allclose(geo, arith)
    # weights need not sum to one: they are renormalised
    again, _ = ensemble_probs([np.array([p1]), np.array([p2])], [3.0, 1.0], "geometric")
    assert np.allclose(again, geo)


def test_ensemble_renormalises_over_the_teachers_that_saw_the_row():
    p1 = np.array([[0.8, 0.2], [0.5, 0.5], [0.9, 0.1]])
    p2 = np.array([[0.4, 0.6], [0.1, 0.9], [0.3, 0.7]])
    cover = [np.array([True, True, False]), np.array([True, False, False])]
    for mode in ("arithmetic", "geometric"):
        out, seen = ensemble_probs([p1, p2], [0.5, 0.5], mode, cover)
        assert seen.tolist() == [True, True, False]
        assert np.allclose(out[1], p1[1])  # only teacher 1 saw row 1: its distribution alone
        assert np.allclose(out.sum(axis=1), 1.0)


def test_regression_ensemble_is_the_weighted_mean():
    assert np.allclose(ensemble_values([np.array([1.0, 4.0]), np.array([3.0, 0.0])], [1.0, 3.0]),
                       [0.25 * 1 + 0.75 * 3, 0.25 * 4 + 0.75 * 0])


def test_kl_per_example_by_hand():
    t = 2.0
    target = [0.7, 0.3]
    loss = soft_target_kl(torch.tensor([[1.0, 0.0]]), torch.tensor([target]), t)
    assert loss.item() == pytest.approx(t * t * _kl(target, _softmax([1.0, 0.0], t)), rel=1e-5)  # 4 x 0.013213
    # two rows, one weighted out (no teacher saw it): the mean over the kept row only
    loss2 = soft_target_kl(torch.tensor([[1.0, 0.0], [5.0, -5.0]]), torch.tensor([target, [0.5, 0.5]]), t,
                           torch.tensor([1.0, 0.0]))
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)


def test_gold_cross_entropy_skips_unlabelled_rows():
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    ce = gold_cross_entropy(logits, torch.tensor([0, -100]))
    assert ce.item() == pytest.approx(-math.log(_softmax([2.0, 0.0])[0]), rel=1e-6)
    assert gold_cross_entropy(logits, torch.tensor([-100, -100])).item() == 0.0


# --- per word, two tokenizers ------------------------------------------------------------------

def other_tokenizer() -> BertTokenizerFast:
    """An uncased WordPiece tokenizer with another vocabulary: whole words it lacks split into
    characters, so its first sub-tokens sit elsewhere than the cased one's."""
    chars = sorted(set("casamomenirtfbuşțăîâ"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "om", "casa"] + chars + [f"##{c}" for c in chars]
    return BertTokenizerFast(vocab={p: i for i, p in enumerate(dict.fromkeys(vocab))}, do_lower_case=True)


def _tagger(tokenizer, labels: int, seed: int) -> BertForTokenClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=labels)
    return BertForTokenClassification(config).eval()


def test_per_word_kl_with_two_tokenizers_by_hand():
    """The teacher's per-word distribution is read at the first sub-token of each word under its
    own tokenizer, the student's at the first sub-token under its own: the loss pairs them by word."""
    from compresso.strategies.task_distill.strategy import TaskDistillStrategy

    spec = TASKS["upos"]
    labels = ["NOUN", "VERB", "ADJ"]
    index = {x: i for i, x in enumerate(labels)}
    words = ["Casa", "oameni", "frumos"]
    examples = [Example(words, ["NOUN", "NOUN", "ADJ"])]
    s_tok, t_tok = tiny_tokenizer(), other_tokenizer()
    s_enc, t_enc = encode(spec, examples, s_tok, 64, index), encode(spec, examples, t_tok, 64, index)
    assert s_enc.word_pos[0].tolist() != t_enc.word_pos[0].tolist()  # the words start at other positions

    # the teacher's per-word probabilities: its logits at ITS first sub-tokens, by hand
    teacher = _tagger(t_tok, 3, seed=1)
    ids = torch.from_numpy(t_enc.input_ids[0])[None]
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
    by_hand = [_softmax(t_logits[int(pos)].tolist()) for pos in t_enc.word_pos[0]]
    pred = predict(teacher, t_enc, spec, torch.device("cpu"), 8, 0, np.full(3, 1 / 3))
    assert np.allclose(pred.probs, by_hand, atol=1e-6)

    # the loss: student logits at ITS first sub-tokens against the teacher's word targets
    strategy = TaskDistillStrategy(TaskDistillStrategy.Params(teachers=["t"], task="upos", temperature=2.0,
                                                              alpha_kd=1.0, alpha_ce=0.0))

    class Data:
        labels = ["NOUN", "VERB", "ADJ"]

    class T:
        name, weight = "t", 1.0

    targets = strategy._targets(spec, Data, [T], {"t": {"train": pred}}, {"t": {"train": np.ones(3, bool)}},
                                s_enc, examples, np.array([True]), index)
    loss_fn = strategy._loss(spec, targets, [], torch.device("cpu"))
    width = 8
    torch.manual_seed(0)
    s_logits = torch.randn(1, width, 3)
    from compresso.evaluation.features import collate

    batch = collate(s_enc, np.array([0]), 0, with_labels=True)
    assert batch["input_ids"].shape[1] == width
    loss = loss_fn(batch, s_logits, np.array([0])).item()
    expected = np.mean([4.0 * _kl(_softmax(t_logits[int(tp)].tolist(), 2.0), _softmax(s_logits[0, int(sp)].tolist(), 2.0))
                        for tp, sp in zip(t_enc.word_pos[0], s_enc.word_pos[0])])
    assert loss == pytest.approx(expected, rel=1e-4)


def test_a_word_the_teacher_truncated_carries_no_target():
    from compresso.strategies.task_distill.strategy import TaskDistillStrategy

    spec = TASKS["upos"]
    index = {"NOUN": 0, "ADJ": 1}
    examples = [Example(["casa", "mare", "frumos"], ["NOUN", "ADJ", "ADJ"])]
    s_enc = encode(spec, examples, tiny_tokenizer(), 64, index)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    from compresso.evaluation.finetune import Predictions

    pred = Predictions("tagging", probs=probs, offsets=np.array([0, 3]))

    class Data:
        labels = ["NOUN", "ADJ"]

    class T:
        name, weight = "t", 1.0

    strategy = TaskDistillStrategy(TaskDistillStrategy.Params(teachers=["t"], task="upos", temperature=1.0,
                                                              alpha_kd=1.0, alpha_ce=0.0))
    seen = np.array([True, True, False])  # the teacher's tokenizer truncated the last word away
    targets = strategy._targets(spec, Data, [T], {"t": {"train": pred}}, {"t": {"train": seen}}, s_enc, examples,
                                np.array([True]), index)
    loss_fn = strategy._loss(spec, targets, [], torch.device("cpu"))
    from compresso.evaluation.features import collate

    batch = collate(s_enc, np.array([0]), 0, with_labels=True)
    logits = torch.zeros(1, batch["input_ids"].shape[1], 2)
    loss = loss_fn(batch, logits, np.array([0])).item()
    assert loss == pytest.approx(np.mean([_kl(probs[0], [0.5, 0.5]), _kl(probs[1], [0.5, 0.5])]), rel=1e-5)


# --- the training loop resumes after a kill ----------------------------------------------------

class Killed(Exception):
    pass


def test_finetune_resumes_from_its_epoch_checkpoint_with_the_same_result(tmp_path):
    """Evaluation's loop (which task_distill trains with), killed after an epoch and run again on
    the same checkpoint folder, ends with the weights of an uninterrupted run."""
    from dataclasses import replace

    from compresso.evaluation.finetune import EpochCheckpoint, finetune

    spec = TASKS["upos"]
    labels = ["NOUN", "ADJ", "VERB"]
    index = {x: i for i, x in enumerate(labels)}
    rng = np.random.default_rng(0)
    words = "casa masa om carte mare mic frumos este sunt".split()
    tags = {"casa": "NOUN", "masa": "NOUN", "om": "NOUN", "carte": "NOUN", "mare": "ADJ", "mic": "ADJ",
            "frumos": "ADJ", "este": "VERB", "sunt": "VERB"}
    examples = []
    for _ in range(24):
        ws = list(rng.choice(words, size=int(rng.integers(2, 6))))
        examples.append(Example(ws, [tags[w] for w in ws]))
    tok = tiny_tokenizer()
    train = encode(spec, examples[:16], tok, 32, index)
    validation = encode(spec, examples[16:], tok, 32, index)
    settings = replace(spec.defaults, epochs=3, batch_size=4, patience=None)
    prior = np.full(3, 1 / 3)

    def score(pred):
        return float((pred.label_ids() == np.concatenate([[index[t] for t in ex.label] for ex in examples[16:]])).mean())

    def run(folder, kill_at=None):
        model = _tagger(tok, 3, seed=5).train()

        def on_epoch(epoch, epochs, value):
            if epoch == kill_at:
                raise Killed()
        ckpt = EpochCheckpoint(folder, "run-a") if folder is not None else None
        outcome = finetune(model, spec, settings, train, validation, score, torch.device("cpu"), 3, 0, prior,
                           on_epoch=on_epoch, checkpoint=ckpt)
        return model, outcome

    reference, ref_outcome = run(None)
    with pytest.raises(Killed):
        run(tmp_path / "ckpt", kill_at=2)  # epoch 1 is checkpointed, epoch 2 dies before its checkpoint
    assert EpochCheckpoint(tmp_path / "ckpt", "run-a").progress()["epoch"] == 1
    assert EpochCheckpoint(tmp_path / "ckpt", "other settings").progress() is None
    resumed, outcome = run(tmp_path / "ckpt")
    assert [h["epoch"] for h in outcome.history] == [1, 2, 3]
    assert outcome.history == ref_outcome.history
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
