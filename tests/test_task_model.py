"""Task-model folders: the head block, save/load, transformers' pipeline, the checks a teacher's head
must pass, and resumable fine-tuning (tiny models, small custom tasks written in the test)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compresso.evaluation.config import EvaluateConfig
from compresso.evaluation.task_model import (
    TaskHead,
    TaskModelError,
    check_head,
    labels_of,
    load_task_model,
    predict_examples,
    predict_labels,
    save_task_model,
    task_head,
    train_task_model,
)
from compresso.evaluation.tasks import DatasetCache, FinetuneSettings
from tests.task_data import classification_files, custom_task, regression_files, tagging_files
from tests.tiny import tiny_bert

SETTINGS = FinetuneSettings(lr=5e-3, epochs=3, batch_size=8, max_length=32, patience=None)


def _data(tmp_path, kind: str, name: str = "mine"):
    writer = {"classification": classification_files, "tagging": tagging_files, "regression": regression_files}[kind]
    files = writer(tmp_path / f"data-{kind}")
    cfg = EvaluateConfig(custom_tasks=[custom_task(name, kind, files)], tasks=[name])
    return DatasetCache(cfg).task(name)


@pytest.fixture
def base(tmp_path):
    return tiny_bert(tmp_path / "base", layers=2)


def _trained(base, data, settings=SETTINGS, **kw):
    return train_task_model(str(base), data, settings, torch.device("cpu"), 0, **kw)


def test_tagging_folder_round_trips_and_pipeline_gives_the_same_labels(base, tmp_path):
    from transformers import pipeline

    data = _data(tmp_path, "tagging")
    trained = _trained(base, data)
    head = trained.head(data, SETTINGS)
    folder = save_task_model(trained.bundle.model, trained.bundle.tokenizer, head, tmp_path / "ner-model")
    config = json.loads((folder / "config.json").read_text())
    assert config["compresso_task"]["labels"] == data.labels == ["O", "B-BIG"]
    assert config["id2label"] == {"0": "O", "1": "B-BIG"}
    assert task_head(folder) == head and task_head(base) is None

    model, tokenizer, loaded = load_task_model(folder)
    assert type(model).__name__ == "BertForTokenClassification" and loaded == head
    words = [ex.text for ex in data.test]
    ours = predict_labels(model, tokenizer, head, words)
    assert [len(w) for w in ours] == [len(w) for w in words]
    # the model learnt the rule (so the comparison below is between non-trivial outputs)
    gold = [ex.label for ex in data.test]
    assert np.mean([a == b for p, g in zip(ours, gold) for a, b in zip(p, g)]) > 0.9

    tagger = pipeline("token-classification", model=str(folder), device="cpu")
    for sentence, labels in zip(words, ours):
        # the pipeline labels every sub-token (O too, with ignore_labels=[]); a word starts where a
        # token does not continue one ("##"), and its label is its first sub-token's
        tokens = tagger(" ".join(sentence), ignore_labels=[])
        firsts = [t["entity"] for t in tokens if not t["word"].startswith("##")]
        assert firsts == labels


def test_classification_folder_and_pipeline_agree(base, tmp_path):
    from transformers import pipeline

    data = _data(tmp_path, "classification")
    settings = FinetuneSettings(lr=3e-3, epochs=10, batch_size=8, max_length=32, patience=None)
    trained = _trained(base, data, settings)
    head = trained.head(data, settings)
    folder = save_task_model(trained.bundle.model, trained.bundle.tokenizer, head, tmp_path / "clf")
    model, tokenizer, loaded = load_task_model(folder)
    texts = [ex.text for ex in data.test]
    ours = predict_labels(model, tokenizer, loaded, texts)
    assert set(ours) <= {"big", "small"} and len(set(ours)) == 2
    classifier = pipeline("text-classification", model=str(folder), device="cpu")
    assert [r["label"] for r in classifier(texts)] == ours
    # compresso.load gives the model with its head, and the same labels
    import compresso

    bundle = compresso.load(folder)
    assert type(bundle.model).__name__ == "BertForSequenceClassification"
    assert predict_labels(bundle.model, bundle.tokenizer, loaded, texts) == ours


def test_siamese_regression_folder_is_a_sentence_transformers_folder(base, tmp_path):
    data = _data(tmp_path, "regression")
    settings = FinetuneSettings(lr=1e-3, epochs=1, batch_size=8, max_length=32, head="siamese")
    trained = _trained(base, data, settings)
    head = trained.head(data, settings)
    assert (head.head, head.pooling, head.pair, head.value_range) == ("siamese", "mean", True, (0.0, 5.0))
    folder = save_task_model(trained.bundle.model, trained.bundle.tokenizer, head, tmp_path / "sts")
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"]
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and pooling["word_embedding_dimension"] == 32
    model, tokenizer, loaded = load_task_model(folder)
    assert type(model).__name__ == "SiameseRegressor"
    pairs = [(ex.text, ex.text_pair) for ex in data.test]
    scores = predict_labels(model, tokenizer, loaded, pairs)
    reference = predict_examples(trained.bundle.model, tokenizer, head, pairs).values
    np.testing.assert_allclose(scores, reference, atol=1e-5)
    assert all(0.0 <= s <= 5.0 for s in scores)
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is not installed")
    encoder = st.SentenceTransformer(str(folder), device="cpu")
    a = encoder.encode([p[0] for p in pairs], convert_to_tensor=True)
    b = encoder.encode([p[1] for p in pairs], convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(a, b).clamp(0, 1).numpy() * 5.0
    np.testing.assert_allclose(cosine, scores, atol=1e-4)


def test_check_head_names_the_model_and_the_labels(tmp_path):
    ner = TaskHead("ner", "NER", "tagging", ["O", "B-PER", "I-PER"], entity_level=True)
    sts = TaskHead("sts", "STS", "regression", None, value_range=(0.0, 5.0))
    from compresso.evaluation.tasks import TASKS

    spec = TASKS["ner"]
    cols = check_head(ner, spec, ["B-PER", "O"], "stage 02-kd, teacher t1")
    assert cols.tolist() == [1, 0]
    with pytest.raises(TaskModelError, match=r"stage 02-kd, teacher t1 lacks label\(s\) 'B-ORG'.*'O', 'B-PER'"):
        check_head(ner, spec, ["O", "B-PER", "B-ORG"], "stage 02-kd, teacher t1")
    with pytest.raises(TaskModelError, match=r"teacher t2 was fine-tuned on STS \(regression, scores 0-5\), not on NER"):
        check_head(sts, spec, ["O"], "teacher t2")
    sapn = TASKS["sapn"]
    with pytest.raises(TaskModelError, match="has a regression head, but SAPN is a classification task"):
        check_head(TaskHead("sapn", "SAPN", "regression", None, value_range=(0.0, 1.0)), sapn, ["negative"], "t3")
    with pytest.raises(TaskModelError, match="is not a task model"):
        check_head(None, sapn, ["negative"], "t4")
    with pytest.raises(TaskModelError, match="not a task model"):
        load_task_model(tiny_bert(tmp_path / "plain", layers=1))
    with pytest.raises(TaskModelError, match="kind is 'sorting'"):
        TaskHead.from_dict({"task": "x", "kind": "sorting"})


def test_killed_finetuning_resumes_to_the_same_weights(base, tmp_path):
    data = _data(tmp_path, "classification")
    whole = _trained(base, data, checkpoint=tmp_path / "a" / "finetune.pt")

    def die(epoch, epochs, score):
        if epoch == 2:
            raise KeyboardInterrupt("killed")

    checkpoint = tmp_path / "b" / "finetune.pt"
    with pytest.raises(KeyboardInterrupt):
        _trained(base, data, on_epoch=die, checkpoint=checkpoint)
    assert len(torch.load(checkpoint, weights_only=True)["history"]) == 1
    seen = []
    resumed = _trained(base, data, on_epoch=lambda e, n, s: seen.append(e), checkpoint=checkpoint)
    assert seen == [2, 3]
    assert [h["validation"] for h in resumed.outcome.history] == [h["validation"] for h in whole.outcome.history]
    a, b = whole.bundle.model.state_dict(), resumed.bundle.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_unlabelled_text_is_predicted(base, tmp_path):
    data = _data(tmp_path, "tagging")
    trained = _trained(base, data, FinetuneSettings(lr=1e-3, epochs=1, batch_size=8, max_length=32))
    head = trained.head(data, SETTINGS)
    pred = predict_examples(trained.bundle.model, trained.bundle.tokenizer, head, [["casa", "mare"], ["om"]])
    assert pred.probs.shape == (3, 2) and pred.offsets.tolist() == [0, 2, 3]
    assert len(labels_of(head, pred)) == 2
    with pytest.raises(TypeError, match="list of words"):
        predict_examples(trained.bundle.model, trained.bundle.tokenizer, head, ["casa mare"])
