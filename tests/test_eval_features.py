"""Tokenisation, first-sub-token labelling, dynamic padding and length-grouped batches."""

import numpy as np
import torch

from compresso.evaluation.data import Example
from compresso.evaluation.features import collate, encode, length_grouped_batches, sorted_batches
from compresso.evaluation.finetune import predict
from compresso.evaluation.tasks import TASKS
from tests.tiny import tiny_tokenizer


def test_tagging_labels_the_first_sub_token_only():
    tok = tiny_tokenizer()
    words = ["casa", "frumosul", "e"]  # "frumosul" splits into several pieces
    ex = Example(words, ["NOUN", "ADJ", "AUX"])
    enc = encode(TASKS["upos"], [ex], tok, max_length=32, label_index={"ADJ": 0, "AUX": 1, "NOUN": 2})
    ids = enc.input_ids[0]
    pieces = tok.convert_ids_to_tokens(ids.tolist())
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and len(pieces) > len(words) + 2
    pos = enc.word_pos[0]
    assert pieces[pos[0]] == "casa" and pieces[pos[1]] == "frumos" and pieces[pos[1] + 1].startswith("##")
    labels = enc.labels[0]
    assert labels[pos].tolist() == [2, 0, 1]
    assert (labels == -100).sum() == len(ids) - 3  # specials and continuation pieces are ignored


def test_truncated_words_fall_back_to_the_prior():
    tok = tiny_tokenizer()
    examples = [Example(["casa"] * 10, ["NOUN"] * 10), Example(["om", "e"], ["NOUN", "AUX"])]
    index = {"AUX": 0, "NOUN": 1}
    enc = encode(TASKS["upos"], examples, tok, max_length=6, label_index=index)
    assert enc.missing_words == 6 and (enc.word_pos[0] >= 0).sum() == 4
    torch.manual_seed(0)

    class Constant(torch.nn.Module):  # always predicts AUX with certainty
        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, 2)
            logits[..., 0] = 10.0
            return logits

    prior = np.array([0.25, 0.75])
    pred = predict(Constant(), enc, TASKS["upos"], torch.device("cpu"), 8, 0, prior)
    assert pred.offsets.tolist() == [0, 10, 12]
    labels = pred.label_ids()
    assert labels[:4].tolist() == [0] * 4 and labels[4:10].tolist() == [1] * 6  # truncated: prior argmax
    assert np.allclose(pred.probs[4:10], prior) and labels[10:].tolist() == [0, 0]


def test_pairs_get_segment_ids_and_collate_pads_to_multiples_of_8():
    tok = tiny_tokenizer()
    examples = [Example("casa mare", 4.0, "o casa"), Example("om", 1.0, "oameni la drum pe apa")]
    enc = encode(TASKS["sts"], examples, tok, max_length=64, label_index=None)
    assert enc.token_type_ids is not None and enc.labels.dtype == np.float32
    batch = collate(enc, np.array([1, 0]), tok.pad_token_id, with_labels=True)
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] >= int(enc.lengths.max())
    assert batch["attention_mask"].sum(1).tolist() == [enc.lengths[1], enc.lengths[0]]
    assert batch["labels"].tolist() == [1.0, 4.0]
    assert batch["token_type_ids"][1, : enc.lengths[0]].tolist() == enc.token_type_ids[0].tolist()


def test_length_grouped_batches_cover_everything_once_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, size=1000)
    batches = length_grouped_batches(lengths, 16, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_padded = sum(len(b) * lengths[b].max() for b in np.array_split(rng.permutation(1000), len(batches)))
    assert padded < 0.7 * random_padded  # much less padding than random batches
    again = length_grouped_batches(lengths, 16, np.random.default_rng(1))
    assert all((a == b).all() for a, b in zip(batches, again))  # seeded


def test_inference_batches_never_hold_a_single_example():
    batches = sorted_batches(np.arange(33), 16)
    assert [len(b) for b in batches] == [16, 17]
    assert sorted(np.concatenate(batches).tolist()) == list(range(33))
    assert [len(b) for b in sorted_batches(np.arange(1), 16)] == [1]
