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


# --- the stage, end to end on tiny models ------------------------------------------------------

TAGS = {"casa": "B-LOC", "masa": "O", "om": "B-PER", "oameni": "O", "carte": "O", "este": "O", "sunt": "O",
        "mare": "O", "bucurești": "B-LOC", "românia": "B-LOC", "ziua": "O", "apa": "O"}
TAG_SET = ["O", "B-LOC", "B-PER"]


def write_conll_task(folder, n_train: int = 40, n_test: int = 12):
    """A custom tagging task on CoNLL files, from the tiny vocabulary."""
    rng = np.random.default_rng(1)
    words = sorted(TAGS)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        lines = []
        for _ in range(n):
            for w in rng.choice(words, size=int(rng.integers(3, 8))):
                lines.append(f"{w}\t{TAGS[w]}")
            lines.append("")
        (folder / f"{split}.conll").write_text("\n".join(lines) + "\n")
    return {"name": "tags", "kind": "tagging", "files": {"train": str(folder / "train.conll"),
                                                        "test": str(folder / "test.conll")}}


def task_block(task="tags", kind="tagging", labels=TAG_SET, head="cross"):
    return {"task": task, "title": task, "kind": kind, "labels": labels, "head": head, "pooling": None,
            "value_range": [0.0, 5.0] if kind == "regression" else None, "pair": False, "max_length": 64,
            "entity_level": kind == "tagging", "source": {"files": {}}}


def tiny_teacher_task_model(folder, tokenizer, block: dict, seed: int, hidden: int = 32):
    """A teacher task model built directly with transformers, its task block in config.json."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    labels = block["labels"] or []
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=hidden * 2, max_position_embeddings=64,
                        num_labels=len(labels) if labels else 1, id2label=dict(enumerate(labels)) if labels else None,
                        label2id={x: i for i, x in enumerate(labels)} if labels else None)
    if block["kind"] == "regression":
        config.problem_type = "regression"
    config.compresso_task = block
    cls = BertForTokenClassification if block["kind"] == "tagging" else BertForSequenceClassification
    cls(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def recipe(tmp_path, teachers: dict[str, str], params: dict, student: str) -> dict:
    return {"name": "td", "seed": 3, "output_dir": str(tmp_path / "run"), "device": "cpu",
            "teachers": [{"name": n, "model": m} for n, m in teachers.items()],
            "student": {"model": student},
            "stages": [{"strategy": "task_distill", "params": params}]}


@pytest.fixture
def tagging_setup(tmp_path):
    from tests.tiny import tiny_bert

    custom = write_conll_task(tmp_path / "data")
    teachers = {"cased": tiny_teacher_task_model(tmp_path / "t_cased", tiny_tokenizer(), task_block(), seed=1),
                "other": tiny_teacher_task_model(tmp_path / "t_other", other_tokenizer(), task_block(), seed=2)}
    student = str(tiny_bert(tmp_path / "student", layers=2, hidden=32, seed=4))
    params = {"task": custom, "teachers": ["cased", "other"], "ensemble": "geometric",
              "teacher_weights": {"cased": 2, "other": 1}, "epochs": 2, "batch_size": 8}
    return tmp_path, teachers, student, params


def _run(tmp_path, teachers, student, params, out="run"):
    from compresso.engine import Runner
    from compresso.recipe import recipe_from_dict
    from tests.tiny import quiet

    r = recipe(tmp_path, teachers, params, student)
    r["output_dir"] = str(tmp_path / out)
    runner = Runner(recipe_from_dict(r), console=quiet())
    runner.preflight(network=False)
    return runner.run()


def test_two_teachers_two_tokenizers_make_a_task_model(tagging_setup):
    import json

    from transformers import AutoModelForTokenClassification

    tmp_path, teachers, student, params = tagging_setup
    result = _run(tmp_path, teachers, student, params)
    folder = result.final_stage
    config = json.loads((folder / "config.json").read_text())
    assert config["compresso_task"]["task"] == "tags" and config["compresso_task"]["labels"] == TAG_SET
    assert config["id2label"] == {str(i): x for i, x in enumerate(TAG_SET)}
    AutoModelForTokenClassification.from_pretrained(folder)  # plain transformers loads it
    metrics = json.loads((folder / "stage.json").read_text())["metrics"]
    assert set(metrics["teachers"]) == {"cased", "other"}
    assert metrics["teachers"]["cased"]["weight"] == pytest.approx(2 / 3)
    assert metrics["teachers"]["cased"]["same_tokenizer"] and not metrics["teachers"]["other"]["same_tokenizer"]
    assert metrics["ensemble"]["mode"] == "geometric" and "f1_macro" in metrics["ensemble"]["test"]
    assert "f1_macro" in metrics["test"] and "f1_macro" in metrics["validation"] and metrics["epochs_run"] == 2
    assert metrics["sizes"]["train"] == 36 and metrics["seed"] == 3 and metrics["headline"] == "f1_macro"
    assert metrics["loss"]["per"] == "word"
    # the model card names the teachers, their scores beside the student's, and the loss
    from compresso.card import write_model_card
    from compresso.recipe import recipe_from_dict

    card = write_model_card(recipe_from_dict(recipe(tmp_path, teachers, params, student)), result.stages[-1],
                            None).read_text()
    assert "## Teachers" in card and "`other`" in card and "ensemble (geometric mean)" in card
    assert "T² × KL" in card and "per word" in card


def test_a_killed_stage_resumes_from_its_last_epoch(tagging_setup, monkeypatch):
    from safetensors.torch import load_file

    from compresso.evaluation import finetune as ft

    tmp_path, teachers, student, params = tagging_setup
    params = {**params, "epochs": 3, "patience": 10}
    reference = _run(tmp_path, teachers, student, params, out="whole")

    saved = ft._save_checkpoint
    calls = []

    def save_then_die(*args, **kwargs):
        saved(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(ft, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, teachers, student, params, out="killed")
    work = tmp_path / "killed" / ".work" / "00-task_distill"
    assert len(list(work.glob("checkpoint-*.pt"))) == 1
    assert list((work / "teacher_predictions").glob("*.npz"))
    resumed = _run(tmp_path, teachers, student, params, out="killed")
    assert len(calls) == 3  # epochs 2 and 3 only: the first was not trained again
    a = load_file(str(reference.final_stage / "model.safetensors"))
    b = load_file(str(resumed.final_stage / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", ["labels", "task", "kind", "not_a_task_model"])
def test_bad_teachers_are_refused_naming_stage_teacher_and_labels(tagging_setup, case):
    from compresso.strategy import StrategyError

    tmp_path, teachers, student, params = tagging_setup
    if case == "labels":
        block = task_block(labels=["O", "B-LOC", "B-ORG"])
    elif case == "task":
        block = task_block(task="ner", labels=["O", "B-PER", "I-PER"])
    else:
        block = task_block(kind="regression", labels=None)
    from tests.tiny import tiny_bert

    if case == "not_a_task_model":
        bad = str(tiny_bert(tmp_path / "bad", layers=1, hidden=32))
    else:
        bad = tiny_teacher_task_model(tmp_path / "bad", tiny_tokenizer(), block, seed=9)
    with pytest.raises(StrategyError) as err:
        _run(tmp_path, {**teachers, "bad": bad}, student, {**params, "teachers": ["cased", "bad"],
                                                            "teacher_weights": None})
    message = str(err.value)
    assert "00-task_distill" in message and "'bad'" in message
    if case == "labels":
        assert "B-ORG" in message and "B-PER" in message
    elif case == "task":
        assert "fine-tuned on ner" in message and "not on tags" in message and "I-PER" in message
    elif case == "kind":
        assert "regression" in message and "tagging" in message
    else:
        assert "task block" in message
    assert not (tmp_path / "run" / "00-task_distill").exists()


def test_classification_with_unlabelled_text_and_hidden_loss(tmp_path):
    """Per-example targets; corpus lines and the task's own unlabelled examples labelled by the
    teachers; the hidden-state loss taken from the teacher that shares the student's tokenizer and
    width, the other skipped with its reason in stage.json."""
    import json

    from tests.tiny import tiny_bert

    rng = np.random.default_rng(2)
    words = sorted(TAGS)
    (tmp_path / "data").mkdir()
    for split, n in (("train", 40), ("test", 10)):
        rows = ["text,label"]
        for _ in range(n):
            ws = list(rng.choice(words, size=5))
            rows.append(f"{' '.join(ws)},{'loc' if 'casa' in ws or 'românia' in ws else 'other'}")
        (tmp_path / "data" / f"{split}.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words, size=6)) for _ in range(30)) + "\n")
    custom = {"name": "topic", "kind": "classification", "labels": ["loc", "other"],
              "files": {"train": str(tmp_path / "data" / "train.csv"), "test": str(tmp_path / "data" / "test.csv")}}
    block = task_block(task="topic", kind="classification", labels=["other", "loc"])  # another order: matched by name
    teachers = {"cased": tiny_teacher_task_model(tmp_path / "t1", tiny_tokenizer(), block, seed=1),
                "other": tiny_teacher_task_model(tmp_path / "t2", other_tokenizer(), block, seed=2)}
    student = str(tiny_bert(tmp_path / "student", layers=2, hidden=32, seed=4))
    params = {"task": custom, "teachers": ["cased", "other"], "alpha_hidden": 0.5,
              "labelled_examples": 20, "unlabelled_task_text": True, "unlabelled_corpus": [str(tmp_path / "corpus.txt")],
              "max_unlabelled": 25, "epochs": 1, "batch_size": 8}
    result = _run(tmp_path, teachers, student, params)
    metrics = json.loads((result.final_stage / "stage.json").read_text())["metrics"]
    assert metrics["examples"] == {"labelled": 20, "unlabelled_task_text": 16, "unlabelled_corpus": 25}
    assert metrics["hidden_loss"]["cased"] == "used"
    assert metrics["hidden_loss"]["other"].startswith("skipped: its tokenizer differs")
    assert metrics["loss"]["per"] == "example" and "accuracy" in metrics["test"]
    config = json.loads((result.final_stage / "config.json").read_text())
    assert config["id2label"] == {"0": "loc", "1": "other"}  # the task's order


def test_every_parameter_is_documented():
    from pathlib import Path

    from compresso.strategies.task_distill import TaskDistillParams

    doc = (Path(__file__).resolve().parents[1] / "docs" / "tasks.md").read_text()
    missing = [name for name in TaskDistillParams.model_fields if f"`{name}`" not in doc]
    assert not missing, f"docs/tasks.md does not document {missing}"


def test_finetune_stages_as_teachers_then_task_distillation_of_a_siamese_regressor(tmp_path):
    """The route in one recipe: two teachers with different tokenizers fine-tuned by `finetune`
    stages (custom sentence-pair regression: the siamese head by default), named as teachers of a
    `task_distill` stage, which distils a student into a sentence-transformers folder."""
    import json

    from transformers import BertForMaskedLM

    from tests.task_data import custom_task, regression_files
    from tests.tiny import tiny_bert

    task = custom_task("overlap", "regression", regression_files(tmp_path / "data"))
    a = str(tiny_bert(tmp_path / "a", layers=2, seed=1))
    tok = other_tokenizer()
    torch.manual_seed(2)
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(tmp_path / "b")
    tok.save_pretrained(tmp_path / "b")
    student = str(tiny_bert(tmp_path / "student", layers=1, seed=3))
    fast = {"epochs": 2, "batch_size": 8, "max_length": 32}
    params = {"task": task, "teachers": ["ft-a", "ft-b"], "teacher_weights": {"ft-a": 1, "ft-b": 3}, **fast}
    recipe = {"name": "route", "seed": 5, "output_dir": str(tmp_path / "run"), "device": "cpu",
              "teachers": [{"name": "a", "model": a}, {"name": "b", "model": str(tmp_path / "b")},
                           {"name": "ft-a", "stage": "fta"}, {"name": "ft-b", "stage": "ftb"}],
              "student": {"model": student},
              "stages": [{"name": "fta", "strategy": "finetune", "input": "a", "params": {"task": task, **fast}},
                         {"name": "ftb", "strategy": "finetune", "input": "b", "params": {"task": task, **fast}},
                         {"name": "kd", "strategy": "task_distill", "input": "student", "params": params}]}
    from compresso.engine import Runner
    from compresso.recipe import recipe_from_dict
    from tests.tiny import quiet

    runner = Runner(recipe_from_dict(recipe), console=quiet())
    runner.preflight(network=False)
    folder = runner.run().final_stage
    assert folder.name == "02-kd"
    config = json.loads((folder / "config.json").read_text())
    assert config["compresso_task"]["head"] == "siamese" and config["compresso_task"]["kind"] == "regression"
    assert (folder / "modules.json").is_file() and (folder / "1_Pooling" / "config.json").is_file()
    metrics = json.loads((folder / "stage.json").read_text())["metrics"]
    assert metrics["teachers"]["ft-b"]["weight"] == pytest.approx(0.75)
    assert "pearson" in metrics["ensemble"]["test"] and "pearson" in metrics["test"]
    assert metrics["hidden_loss"] == {"ft-a": "off (alpha_hidden is 0)", "ft-b": "off (alpha_hidden is 0)"}


def test_a_regression_teacher_for_a_classification_task_is_refused(tmp_path):
    from compresso.strategy import StrategyError
    from tests.task_data import classification_files, custom_task
    from tests.tiny import tiny_bert

    task = custom_task("big", "classification", classification_files(tmp_path / "data"))
    good = tiny_teacher_task_model(tmp_path / "good", tiny_tokenizer(),
                                   task_block(task="big", kind="classification", labels=["big", "small"]), seed=1)
    bad = tiny_teacher_task_model(tmp_path / "bad", tiny_tokenizer(),
                                  task_block(task="big", kind="regression", labels=None), seed=2)
    student = str(tiny_bert(tmp_path / "student", layers=1))
    with pytest.raises(StrategyError) as err:
        _run(tmp_path, {"good": good, "bad": bad}, student, {"task": task, "teachers": ["good", "bad"]})
    message = str(err.value)
    assert "stage 00-task_distill, teacher 'bad'" in message
    assert "regression" in message and "classification" in message
    assert "the task's: big, small" in message
