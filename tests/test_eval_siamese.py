"""The siamese STS head (Sentence-BERT's cosine-similarity regression) on tiny models, on CPU."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from compresso.evaluation import EvalModel, EvaluationError, evaluate_models
from compresso.evaluation.data import Example
from compresso.evaluation.features import (
    EncodingCache,
    collate,
    encode,
    load_encoded,
    save_encoded,
)
from compresso.evaluation.finetune import (
    SiameseRegressor,
    mean_pool,
    predict,
    task_loss,
)
from compresso.evaluation.tasks import TASKS
from tests.tiny import quiet, tiny_berts_with_tokenizer, tiny_tokenizer

PAIRS = [Example("casa mare", 4.0, "o casa mare"), Example("om", 1.0, "oameni la drum pe apa în bucurești ziua și noaptea"),
         Example("românia este frumos", 5.0, "românia este frumos"), Example("ziua", 0.0, "noaptea apa mare")]


def _encoder(tok) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    return BertModel(config).eval()


def _alone(encoder, tok, text: str) -> torch.Tensor:
    """One sentence through the encoder with no padding at all, averaged over its tokens."""
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        return encoder(**ids).last_hidden_state[0].mean(0)


def test_mean_pool_ignores_padding_hand_computed():
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]],
                           [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert mean_pool(states, mask).tolist() == [[2.0, 3.0], [7.0, 8.0]]


def test_pairs_apart_encode_each_sentence_alone_and_survive_the_cache(tmp_path):
    tok = tiny_tokenizer()
    enc = encode(TASKS["sts"], PAIRS, tok, max_length=64, label_index=None, pairs_apart=True)
    assert len(enc) == len(enc.second) == 4
    for i, ex in enumerate(PAIRS):
        assert enc.input_ids[i].tolist() == tok(ex.text)["input_ids"]
        assert enc.second.input_ids[i].tolist() == tok(ex.text_pair)["input_ids"]
    assert enc.batch_lengths.tolist() == np.maximum(enc.lengths, enc.second.lengths).tolist()
    assert enc.labels.tolist() == [4.0, 1.0, 5.0, 0.0]
    save_encoded(tmp_path / "x.npz", enc)
    back = load_encoded(tmp_path / "x.npz")
    assert [a.tolist() for a in back.second.input_ids] == [a.tolist() for a in enc.second.input_ids]
    assert back.labels.tolist() == enc.labels.tolist() and back.second.lengths.tolist() == enc.second.lengths.tolist()
    # the joint and the apart encodings of one task are different cache entries
    cache = EncodingCache(tmp_path / "cache")
    apart, how = cache.get("sts", {"train": PAIRS}, TASKS["sts"], tok, 64, None, pairs_apart=True)
    joint, _ = cache.get("sts", {"train": PAIRS}, TASKS["sts"], tok, 64, None)
    assert how == "encoded" and apart["train"].second is not None and joint["train"].second is None
    again, how = EncodingCache(tmp_path / "cache").get("sts", {"train": PAIRS}, TASKS["sts"], tok, 64, None,
                                                       pairs_apart=True)
    assert how == "loaded" and again["train"].second.lengths.tolist() == enc.second.lengths.tolist()
    with pytest.raises(ValueError, match="needs sentence-pair examples"):
        encode(TASKS["sts"], [Example("casa", 1.0)], tok, 64, None, pairs_apart=True)


def test_siamese_cosine_equals_each_sentence_encoded_alone():
    tok = tiny_tokenizer()
    encoder = _encoder(tok)
    model = SiameseRegressor(encoder).eval()
    enc = encode(TASKS["sts"], PAIRS, tok, max_length=64, label_index=None, pairs_apart=True)
    batch = collate(enc, np.arange(4), tok.pad_token_id, with_labels=True)
    assert batch["input_ids"].shape[1] != batch["pair_input_ids"].shape[1]  # padded apart, widths differ
    with torch.no_grad():
        cos = model(batch)
    assert cos.shape == (4,)
    expected = torch.stack([F.cosine_similarity(_alone(encoder, tok, ex.text), _alone(encoder, tok, ex.text_pair),
                                                dim=0) for ex in PAIRS])
    assert torch.allclose(cos, expected, atol=1e-5)
    assert cos[2].item() == pytest.approx(1.0, abs=1e-5)  # the same sentence twice
    # MSE against the score scaled to [0, 1], computed independently
    loss = task_loss(TASKS["sts"], cos, batch["labels"])
    by_hand = sum((c - y / 5.0) ** 2 for c, y in zip(expected.tolist(), [4.0, 1.0, 5.0, 0.0])) / 4
    assert loss.item() == pytest.approx(by_hand, rel=1e-4)
    # predictions: the cosine back on the 0-5 scale, a negative cosine read as 0, in example order
    pred = predict(model, enc, TASKS["sts"], torch.device("cpu"), 3, tok.pad_token_id, None)
    assert pred.kind == "regression" and pred.values.shape == (4,)
    assert np.allclose(pred.values, 5.0 * np.clip(expected.numpy(), 0.0, 1.0), atol=1e-4)
    assert ((pred.values >= 0.0) & (pred.values <= 5.0)).all()


def test_negative_cosines_are_clipped_to_zero():
    class Opposed(SiameseRegressor):  # every pair points in opposite directions
        def forward(self, batch):
            return torch.full((batch["input_ids"].shape[0],), -0.5)

    tok = tiny_tokenizer()
    enc = encode(TASKS["sts"], PAIRS[:2], tok, max_length=64, label_index=None, pairs_apart=True)
    pred = predict(Opposed(_encoder(tok)), enc, TASKS["sts"], torch.device("cpu"), 8, 0, None)
    assert pred.values.tolist() == [0.0, 0.0]


@pytest.fixture(scope="module")
def tiny(shared_dir, tmp_path_factory):
    return tiny_berts_with_tokenizer(shared_dir / "teachers" / "ro-bert-small-cased",
                                     tmp_path_factory.mktemp("tiny"), {"tinyA": 2, "tinyB": 1})


def _cfg(shared_dir, **extra) -> dict:
    cfg = {"data_dir": str(shared_dir / "data"), "tasks": ["sts"], "max_train_examples": 48, "max_eval_examples": 40,
           "seeds": 2, "jobs": 1, "efficiency": False, "bootstrap_resamples": 200,
           "finetune": {"epochs": 2, "max_length": 48, "batch_size": 8, "lr": 5e-4}}
    cfg.update(extra)
    return cfg


@pytest.mark.shared
def test_sts_job_end_to_end_with_the_siamese_head(tiny, shared_dir, tmp_path):
    models = [EvalModel("tinyA", tiny["tinyA"], "teacher"), EvalModel("tinyB", tiny["tinyB"], "student")]
    results = evaluate_models(models, _cfg(shared_dir, models=["tinyA", "tinyB"]), {"plots": False},
                              tmp_path / "siamese", torch.device("cpu"), 3, quiet())
    assert results["errors"] == [] and results["tasks"]["sts"]["settings"]["head"] == "siamese"
    for name in ("tinyA", "tinyB"):
        entry = results["scores"][name]["sts"]
        assert [r["settings"]["head"] for r in entry["runs"]] == ["siamese", "siamese"]
        assert all(-100.0 <= v <= 100.0 for v in entry["metrics"]["pearson"]["values"])
        assert all(len(r["history"]) == r["epochs_run"] for r in entry["runs"])
    # regression loyalty and the paired bootstrap work on the siamese predictions
    (loyal,) = results["loyalty"]
    assert loyal["task"] == "sts" and loyal["seeds"] == [3, 4] and 0.0 < loyal["regression"]["mean"] <= 1.0
    (comparison,) = results["comparisons"]
    assert comparison["metric"] == "pearson" and comparison["low"] <= comparison["difference"] <= comparison["high"]
    # the cross-encoder stays available as a task setting, and gives other predictions
    cross = evaluate_models(models[:1], _cfg(shared_dir, seeds=1, per_task={"sts": {"head": "cross"}}),
                            {"plots": False}, tmp_path / "cross", torch.device("cpu"), 3, quiet())
    assert cross["errors"] == [] and cross["scores"]["tinyA"]["sts"]["runs"][0]["settings"]["head"] == "cross"
    assert cross["scores"]["tinyA"]["sts"]["metrics"] != results["scores"]["tinyA"]["sts"]["runs"][0]["metrics"]


@pytest.mark.shared
def test_siamese_head_on_a_task_without_sentence_pairs_is_refused(tiny, shared_dir, tmp_path):
    with pytest.raises(EvaluationError, match="head: siamese is for sentence-pair regression; this task is "
                                              "classification"):
        evaluate_models([EvalModel("tinyA", tiny["tinyA"], "teacher")],
                        _cfg(shared_dir, tasks=["sapn"], seeds=1, per_task={"sapn": {"head": "siamese"}}),
                        {"plots": False}, tmp_path / "out", torch.device("cpu"), 3, quiet())


def test_custom_regression_tasks_start_siamese_with_pairs_and_cross_without():
    from compresso.evaluation.config import CustomTask
    from compresso.evaluation.config import EvaluateConfig
    from compresso.evaluation.custom_tasks import task_spec
    from compresso.evaluation.tasks import effective_settings

    files = {"train": "sim/train.jsonl", "test": "sim/test.jsonl"}
    pairs = CustomTask(name="sim", kind="regression", files=files, text="a", text_pair="b", label="y")
    single = CustomTask(name="grade", kind="regression", files=files, text="a", label="y")
    forced = CustomTask(name="sim2", kind="regression", files=files, text="a", text_pair="b", label="y",
                        finetune={"head": "cross", "epochs": 9})
    assert task_spec(pairs, [0.0, 5.0]).defaults == TASKS["sts"].defaults
    assert task_spec(single, [0.0, 5.0]).defaults.head == "cross"
    # the task's own finetune wins over its defaults (and over evaluate.finetune)
    settings, sources = effective_settings(task_spec(forced, [0.0, 5.0]), EvaluateConfig(finetune={"epochs": 2}))
    assert (settings.head, settings.epochs) == ("cross", 9)
    assert sources["head"] == sources["epochs"] == "the task's finetune"
