"""distill strategy on tiny models built here: data pipeline, vocab mapping, losses, student, training, resume.

The helpers at the top (tokenizers, models, corpus, contexts) are reused by the other
test_distill_* files.
"""

from __future__ import annotations

import json
import random
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertTokenizerFast,
)

from compresso.models import load_bundle, save_bundle
from compresso.strategies.distill import DistillStrategy
from compresso.strategies.distill import trainer as trainer_module
from compresso.strategies.distill.data import BatchStream, MaskingConfig, RowEncoder, StreamConfig, ViewSpec, make_batch
from compresso.strategies.distill.losses import (
    LossConfig,
    TeacherLink,
    compute_losses,
    kl_per_position,
    pool_words,
    soft_target_kl,
    student_log_q,
    teacher_log_p,
)
from compresso.strategies.distill.modeling import MaskedLM, StudentModule, build_student, default_layers
from compresso.strategies.distill.vocab import VocabMap, build_vocab_map, same_tokenization
from compresso.corpus import Corpus
from compresso.strategy import ModelBundle, RunContext, StrategyError, TeacherRef

WORDS = ("casa masa om oameni carte cărți este sunt un o și în la de pe cu mare mic frumos frumoasele "
         "român românia bucurești ziua noaptea apa drum orașul orașele oamenilor").split()
NAMES = ["Ion", "Maria", "București", "Casa"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def cased_tokenizer() -> BertTokenizerFast:
    """Cased WordPiece: whole words, capitalised names, and characters for everything else."""
    chars = sorted(set("".join(WORDS + NAMES)) | set("abcdefghijklmnopqrstuvwxyz"))
    upper = sorted({c.upper() for c in chars if c.isalpha()})
    vocab = SPECIALS + [".", ",", "!"] + WORDS[:20] + NAMES + ["##ele", "##ul", "##lor"] + chars + upper \
        + [f"##{c}" for c in chars]
    return BertTokenizerFast(vocab={p: i for i, p in enumerate(dict.fromkeys(vocab))}, do_lower_case=False)


def uncased_tokenizer() -> BertTokenizerFast:
    """Uncased WordPiece with its own vocabulary (other ids, other pieces) so words split differently."""
    chars = sorted(set("".join(WORDS).lower()) | set("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["[PAD]", "!", ".", ",", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(reversed(WORDS[8:])) \
        + ["ion", "maria", "frumoase", "##le", "##e", "##a"] + chars + [f"##{c}" for c in chars]
    return BertTokenizerFast(vocab={p: i for i, p in enumerate(dict.fromkeys(vocab))}, do_lower_case=True,
                             strip_accents=False)


def sentencepiece_tokenizer():
    """A small uncased Unigram tokenizer with Metaspace ('▁' marks word starts), trained here."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    text = [" ".join(WORDS + NAMES)] * 50 + ["oamenilor frumoasele orașele"] * 20
    tok.train_from_iterator(text, trainers.UnigramTrainer(
        vocab_size=120, special_tokens=["<pad>", "<unk>", "<s>", "</s>", "<mask>"], unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", cls_token="<s>",
                                   sep_token="</s>", mask_token="<mask>")


def tiny_mlm(tokenizer, folder: Path, layers=4, hidden=32, seed=0, max_positions=64) -> Path:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=hidden * 2, max_position_embeddings=max_positions,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_corpus(path: Path, lines=300, seed=0) -> Path:
    """Lines made of a dozen fixed sentences: context predicts masked words, so MLM loss can fall."""
    rng = random.Random(seed)
    pool = WORDS + NAMES
    sentences = [" ".join(rng.choice(pool) for _ in range(rng.randint(4, 9))).capitalize() + rng.choice(".!,")
                 for _ in range(12)]
    path.write_text("\n".join(" ".join(rng.choice(sentences) for _ in range(rng.randint(1, 3)))
                              for _ in range(lines)) + "\n")
    return path


def make_ctx(tmp: Path, teachers: dict[str, str], rank=0, world_size=1, name="run") -> RunContext:
    root = tmp / name
    (root / "stage").mkdir(parents=True, exist_ok=True)
    (root / "work").mkdir(parents=True, exist_ok=True)
    return RunContext(stage_dir=root / "stage", work_dir=root / "work", device=torch.device("cpu"), seed=3,
                      teachers={n: TeacherRef(n, str(p), None, False) for n, p in teachers.items()},
                      base_dir=tmp, rank=rank, world_size=world_size)


def small_params(corpus_path: Path, **kw) -> dict:
    base = dict(corpus=[str(corpus_path)], seq_len=32, batch_size=4, max_steps=6, heldout_documents=16, log_every=1,
                checkpoint_every=3, lr=1e-3, warmup_ratio=0.0)
    return {**base, **kw}



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill_tiny")
    return {"cased": tiny_mlm(cased_tokenizer(), root / "cased", seed=1),
            "uncased": tiny_mlm(uncased_tokenizer(), root / "uncased", seed=2),
            "corpus": write_corpus(root / "corpus.txt"), "root": root}


# --- vocabulary mapping ------------------------------------------------------------------------

def test_vocab_map_folds_case_maps_continuations_and_skips_specials():
    cased, uncased = cased_tokenizer(), uncased_tokenizer()
    vmap = build_vocab_map(cased, uncased, "u")
    cv, uv = cased.get_vocab(), uncased.get_vocab()

    def mapped(token):
        return vmap.student_to_teacher[cv[token]]

    assert mapped("Ion") == uv["ion"]  # case folded for the uncased teacher
    assert mapped("I") == mapped("i") == uv["i"]  # several student ids land on one teacher id
    assert mapped("##e") == uv["##e"] and mapped("##e") != uv["e"]  # continuation pieces stay continuations
    assert mapped("##ele") == -1  # the teacher has no '##ele'
    assert all(mapped(s) == -1 for s in SPECIALS)  # special tokens never take part
    assert vmap.case_folded and vmap.merged > 0
    # Pushing the student's distribution forward: each column holds the summed probability of its ids.
    assert set(vmap.teacher_ids[vmap.columns]) == set(vmap.student_to_teacher[vmap.student_ids])
    assert 0 < vmap.student_vocab_mapped < 1 and 0 < vmap.teacher_vocab_covered <= 1
    # Uncased student, cased teacher: no folding ('ion' cannot reach 'Ion').
    back = build_vocab_map(uncased, cased, "c")
    assert not back.case_folded and back.student_to_teacher[uv["ion"]] == -1


def test_sentencepiece_teacher_maps_and_aligns_by_surface():
    cased, sp = cased_tokenizer(), sentencepiece_tokenizer()
    vmap = build_vocab_map(cased, sp, "sp")
    cv, spv = cased.get_vocab(), sp.get_vocab()
    assert vmap.student_to_teacher[cv["oameni"]] == spv["▁oameni"]  # word-initial <-> '▁'
    assert vmap.student_to_teacher[cv["##a"]] == spv["a"]  # continuation <-> no '▁'
    assert vmap.student_to_teacher[cv["Ion"]] in (-1, spv.get("▁ion", -1))
    views = [ViewSpec.from_tokenizer(cased, "student", 64), ViewSpec.from_tokenizer(sp, "sp", 64)]
    assert spv["▁"] in views[1].unmatchable_ids
    rows = RowEncoder(views).encode(["Frumoasele case ale oamenilor", "Ion și Maria sunt în București."])
    matched = 0
    for r in range(rows["rows"]):
        s_tok = cased.convert_ids_to_tokens(rows["ids0"][r].tolist())
        t_tok = sp.convert_ids_to_tokens(rows["ids1"][r].tolist())
        for i, m in enumerate(rows["match1"][r]):
            if m >= 0:
                matched += 1
                assert t_tok[m] != "▁"
                assert s_tok[i].removeprefix("##").lower() == t_tok[m].removeprefix("▁")
    assert matched >= 5


def test_same_tokenization_detects_copies_and_differences(tmp_path):
    cased = cased_tokenizer()
    cased.save_pretrained(tmp_path / "c")
    assert same_tokenization(cased, AutoTokenizer.from_pretrained(tmp_path / "c"))
    assert not same_tokenization(cased, uncased_tokenizer())
    lowered = BertTokenizerFast(vocab=cased.get_vocab(), do_lower_case=True)  # same vocab, other normaliser
    assert not same_tokenization(cased, lowered)


# --- rows: words, packing, alignment ------------------------------------------------------------

def _views(seq=32, teacher_seq=32):
    return [ViewSpec.from_tokenizer(cased_tokenizer(), "student", seq),
            ViewSpec.from_tokenizer(uncased_tokenizer(), "u", teacher_seq)]


def test_rows_pack_whole_words_identically_in_every_view(tiny):
    views = _views(seq=32, teacher_seq=24)
    toks = [cased_tokenizer(), uncased_tokenizer()]
    texts = tiny["corpus"].read_text().splitlines()[:40] + ["", "Ion!"]
    rows = RowEncoder(views).encode(texts)
    words_in_rows = []
    for r in range(rows["rows"]):
        per_view = []
        for v, (spec, tok) in enumerate(zip(views, toks)):
            n = rows[f"len{v}"][r]
            assert n <= spec.max_len  # no view overflows; the teacher's shorter limit shapes the rows
            ids, word = rows[f"ids{v}"][r][:n], rows[f"word{v}"][r][:n]
            assert ids[0] == spec.cls_id and ids[-1] == spec.sep_id
            assert (rows[f"ids{v}"][r][n:] == spec.pad_id).all()
            assert ((ids == spec.cls_id) | (ids == spec.sep_id)).sum() == (word < 0).sum()
            pieces = tok.convert_ids_to_tokens(ids.tolist())
            words: dict[int, str] = {}
            for w, piece in zip(word, pieces):
                if w >= 0:
                    words[w] = words.get(w, "") + piece.removeprefix("##")
            per_view.append([words[k].lower() for k in sorted(words)])
        assert per_view[0] == per_view[1]  # word i is the same word in both tokenizations
        words_in_rows += per_view[0]
        # Matches pair pieces with identical text (up to case).
        s_tokens = toks[0].convert_ids_to_tokens(rows["ids0"][r].tolist())
        t_tokens = toks[1].convert_ids_to_tokens(rows["ids1"][r].tolist())
        for i, m in enumerate(rows["match1"][r]):
            if m >= 0:
                assert s_tokens[i].lower() == t_tokens[m]
    expected = [w.lower() for t in texts for w in RowEncoder(views).split_words(t)]
    assert words_in_rows == expected  # every word once, in order, across row boundaries


def test_masking_invariants():
    views = _views()
    rng = random.Random(1)
    docs = [" ".join(rng.choice(WORDS + NAMES + ["Ωmega"]) for _ in range(rng.randint(5, 30))) for _ in range(400)]
    rows = RowEncoder(views).encode(docs)
    assert (rows["ids0"] == views[0].unk_id).sum() > 50  # 'Ωmega' is [UNK] to the student
    arrays = {k: v for k, v in rows.items() if isinstance(v, np.ndarray)}
    b = make_batch(arrays, views, MaskingConfig(), np.random.default_rng(0), need_words=True)
    s_spec, t_spec = views
    orig0 = torch.from_numpy(arrays["ids0"][:, : b.ids.shape[1]].astype(np.int64)).reshape(-1)
    special0 = torch.isin(orig0, torch.tensor(s_spec.special_ids))
    assert not special0[b.masked_pos].any()  # [CLS]/[SEP]/[PAD]/[UNK] never masked
    assert torch.equal(orig0[b.masked_pos], b.labels)
    frac = b.n_masked / int((~special0).sum())
    assert 0.12 < frac < 0.18, frac
    new = b.ids.reshape(-1)[b.masked_pos]
    share_mask = (new == s_spec.mask_id).float().mean().item()
    share_keep = (new == b.labels).float().mean().item()
    assert 0.74 < share_mask < 0.86 and 0.05 < share_keep < 0.16
    assert not torch.isin(new[(new != s_spec.mask_id)], torch.tensor(s_spec.special_ids)).any()
    unmasked = torch.ones_like(orig0, dtype=torch.bool)
    unmasked[b.masked_pos] = False
    assert torch.equal(b.ids.reshape(-1)[unmasked], orig0[unmasked])  # nothing else changes
    # Whole words: a word is masked in the student iff it is masked in the teacher's view.
    vb = b.views[0]
    s_words = set(b.word_index[torch.isin(b.word_pos, b.masked_pos)].tolist())
    t_words = set(vb.word_index[torch.isin(vb.word_pos, vb.masked_pos)].tolist())
    assert s_words == t_words and s_words
    s_masked_all = set(b.word_index[torch.isin(b.word_pos, b.masked_pos, invert=True)].tolist())
    assert not (s_words & s_masked_all)  # no partly-masked word
    # The same word gets the same treatment in both views: [MASK] in one means [MASK] in the other.
    s_mask_words = set(b.word_index[torch.isin(b.word_pos, b.masked_pos[new == s_spec.mask_id])].tolist())
    t_new = vb.ids.reshape(-1)[vb.masked_pos]
    t_mask_words = set(vb.word_index[torch.isin(vb.word_pos, vb.masked_pos[t_new == t_spec.mask_id])].tolist())
    assert s_mask_words == t_mask_words
    # Supervised pairs point at masked teacher positions.
    assert torch.isin(vb.sup_pos, vb.masked_pos).all() and len(vb.sup_pos) > 0
    # Deterministic: same generator seed, same batch.
    again = make_batch(arrays, views, MaskingConfig(), np.random.default_rng(0), need_words=True)
    assert torch.equal(again.ids, b.ids) and torch.equal(again.views[0].ids, vb.ids)
    # Token-level masking (same tokenizer only) masks sub-words independently, still never specials.
    tok = make_batch({k: v for k, v in arrays.items()}, views[:1], MaskingConfig(whole_word=False),
                     np.random.default_rng(1), need_words=False)
    assert not special0[tok.masked_pos].any() and 0.12 < tok.n_masked / int((~special0).sum()) < 0.18


def test_stream_resumes_exactly_and_does_not_depend_on_workers(tiny):
    views = _views()
    cfg = StreamConfig(corpus=Corpus(files=(tiny["corpus"],)), views=views, masking=MaskingConfig(), batch_size=3,
                       seed=5, heldout=10)
    with BatchStream(cfg) as stream:
        it = iter(stream)
        full = [next(it) for _ in range(40)]
    with BatchStream(cfg, position=full[16].position) as stream:
        it = iter(stream)
        resumed = [next(it) for _ in range(23)]
    for a, b in zip(full[17:], resumed):
        assert torch.equal(a.ids, b.ids) and torch.equal(a.masked_pos, b.masked_pos)
        assert torch.equal(a.views[0].ids, b.views[0].ids)
    # Worker processes encode chunks and mask batches: the very same batches, field by field.
    cfg_w = StreamConfig(**{**cfg.__dict__, "num_workers": 2, "need_words": True})
    cfg_0 = StreamConfig(**{**cfg.__dict__, "need_words": True})
    streams = []
    for c in (cfg_0, cfg_w):
        with BatchStream(c) as stream:
            it = iter(stream)
            streams.append([next(it) for _ in range(12)])
    for a, b in zip(*streams):
        _assert_same_batch(a, b)
        assert a.position == b.position


def _assert_same_batch(a, b) -> None:
    from dataclasses import fields

    for x, y in [(a, b), *zip(a.views, b.views)]:
        for f in fields(x):
            u, v = getattr(x, f.name), getattr(y, f.name)
            if isinstance(u, torch.Tensor):
                assert isinstance(v, torch.Tensor) and u.dtype == v.dtype and torch.equal(u, v), f.name
            elif isinstance(u, np.ndarray):
                assert isinstance(v, np.ndarray) and np.array_equal(u, v), f.name
            elif f.name != "views":
                assert u == v, f.name


def test_stream_goes_round_epochs_and_shards_by_rank(tiny, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", lines=30)
    views = _views()[:1]
    seen = {}
    for rank in (0, 1):
        cfg = StreamConfig(corpus=Corpus(files=(corpus,)), views=views, masking=MaskingConfig(), batch_size=2,
                           seed=0, heldout=4, rank=rank, world_size=2)
        with BatchStream(cfg) as stream:
            it = iter(stream)
            batches = [next(it) for _ in range(30)]
        seen[rank] = batches
        assert max(b.position["epoch"] for b in batches) >= 1  # wrapped around
    assert not torch.equal(seen[0][0].ids, seen[1][0].ids)


# --- losses ------------------------------------------------------------------------------------

def test_cross_vocab_push_forward_matches_explicit_sum():
    cased, uncased = cased_tokenizer(), uncased_tokenizer()
    vmap = build_vocab_map(cased, uncased, "u")
    link = TeacherLink("u", lm=None, weight=1.0, view=1, vocab=vmap).to(torch.device("cpu"))
    torch.manual_seed(0)
    z = (torch.randn(5, len(cased)) * 8).requires_grad_()
    renorm = student_log_q(z, link, 2.0, "renormalise")
    other = student_log_q(z, link, 2.0, "other")
    p = (z / 2.0).softmax(-1).detach().numpy()
    for i in range(5):
        mass = np.zeros(len(vmap.teacher_ids))
        for sid, col in zip(vmap.student_ids, vmap.columns):
            mass[col] += p[i, sid]
        mass = mass[link.target_columns]  # the target space lists columns in the link's layout order
        np.testing.assert_allclose(renorm[i].exp().detach().numpy(), mass / mass.sum(), rtol=1e-4, atol=1e-7)
        # "other": no renormalisation; the last column holds the mass of every unmapped student id.
        unmapped = np.setdiff1d(np.arange(len(cased)), vmap.student_ids)
        np.testing.assert_allclose(other[i].exp().detach().numpy(), np.append(mass, p[i, unmapped].sum()),
                                   rtol=1e-4, atol=1e-7)
        assert other[i].exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    (renorm.sum() + other.sum()).backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("unmapped_mass", ["other", "renormalise"])
def test_push_forward_values_and_gradients_equal_a_dense_reference(unmapped_mass):
    """The gather-only push-forward against the textbook one: the student's probabilities times a
    0/1 (student id x teacher column) matrix, in float64 -- values and gradients, with columns of
    1 to 4 student ids in shuffled order and a student output layer wider than its vocabulary."""
    rng = np.random.default_rng(3)
    n_cols, vocab, width = 40, 80, 83
    sizes = np.concatenate([np.ones(25, int), np.full(9, 2), np.full(4, 3), np.full(2, 4)])
    rng.shuffle(sizes)
    columns = np.repeat(np.arange(n_cols), sizes)
    student_ids = rng.choice(np.arange(3, vocab), size=len(columns), replace=False)  # 0-2: specials
    order = rng.permutation(len(columns))  # the map lists ids in no particular order
    vmap = VocabMap(student_ids=student_ids[order], columns=columns[order], teacher_ids=np.arange(100, 100 + n_cols),
                    student_to_teacher=np.full(vocab, -1), student_vocab_mapped=0.0, teacher_vocab_covered=0.0,
                    case_folded=True, merged=int((sizes > 1).sum()))
    link = TeacherLink("u", lm=None, weight=1.0, view=1, vocab=vmap).to(torch.device("cpu"))
    z = torch.randn(6, width, dtype=torch.float64) * 6
    probe = torch.randn(6, n_cols + (unmapped_mass == "other"), dtype=torch.float64)
    z1 = z.clone().requires_grad_()
    got = student_log_q(z1, link, 2.0, unmapped_mass)
    (got * probe).sum().backward()
    z2 = z.clone().requires_grad_()
    dense = torch.zeros(width, n_cols + 1, dtype=torch.float64)
    position = np.empty(n_cols, int)
    position[link.target_columns] = np.arange(n_cols)  # where each teacher column sits in the target space
    dense[student_ids, position[columns]] = 1.0
    dense[np.setdiff1d(np.arange(width), student_ids), n_cols] = 1.0  # everything else: "other"
    mass = (z2 / 2.0).softmax(-1) @ dense
    want = mass.log() if unmapped_mass == "other" else \
        (mass[:, :n_cols] / mass[:, :n_cols].sum(-1, keepdim=True)).log()
    (want * probe).sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("unmapped_mass", ["other", "renormalise"])
def test_cross_kl_closed_form_gradient_equals_autograd(unmapped_mass):
    """The soft-target KL on a foreign vocabulary (``soft_target_kl``, whose backward is written
    out) against autograd through ``student_log_q`` and ``kl_per_position``, in float64: values and
    gradients, with columns of 1 to 4 student ids, a padded student output layer, per-row upstream
    gradients, and a teacher that puts mass everywhere."""
    rng = np.random.default_rng(5)
    n_cols, vocab, width = 40, 80, 83
    sizes = np.concatenate([np.ones(25, int), np.full(9, 2), np.full(4, 3), np.full(2, 4)])
    rng.shuffle(sizes)
    columns = np.repeat(np.arange(n_cols), sizes)
    student_ids = rng.choice(np.arange(3, vocab), size=len(columns), replace=False)
    vmap = VocabMap(student_ids=student_ids, columns=columns, teacher_ids=np.arange(100, 100 + n_cols),
                    student_to_teacher=np.full(vocab, -1), student_vocab_mapped=0.0, teacher_vocab_covered=0.0,
                    case_folded=True, merged=int((sizes > 1).sum()))
    link = TeacherLink("u", lm=None, weight=1.0, view=1, vocab=vmap).to(torch.device("cpu"))
    z = torch.randn(7, width, dtype=torch.float64) * 5
    log_p = (torch.randn(7, n_cols + (unmapped_mass == "other"), dtype=torch.float64) * 3).log_softmax(-1)
    upstream = torch.rand(7, dtype=torch.float64) + 0.5
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    got = soft_target_kl(z1, log_p, link, LossConfig(temperature=2.0, unmapped_mass=unmapped_mass))
    want = kl_per_position(log_p, student_log_q(z2, link, 2.0, unmapped_mass))
    (got * upstream).sum().backward()
    (want * upstream).sum().backward()
    assert (want > 0.05).all()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-9, atol=1e-12)
    if unmapped_mass == "renormalise":  # ids outside the intersection get nothing
        unmapped = np.setdiff1d(np.arange(width), student_ids)
        assert torch.count_nonzero(z1.grad[:, unmapped]) == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_pool_words_gradient_equals_autograd(dtype):
    """Word pooling (mean of each word's token states, its gradient written out) against the
    same mean taken with plain autograd: values and gradients, words of 1 to 3 tokens, positions
    that are in no word (CLS, SEP, padding) getting no gradient."""
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 5, dtype=torch.float64)
    pos = torch.tensor([1, 2, 3, 4, 5, 8, 9, 10, 15, 16, 17, 18])
    index = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 6])
    n_words = 7
    h1 = hidden.to(dtype).requires_grad_()
    h2 = hidden.to(dtype).requires_grad_()
    got = pool_words(h1, pos, index, n_words)
    flat = h2.reshape(-1, 5).index_select(0, pos).double()
    want = torch.zeros(n_words, 5, dtype=torch.float64).index_add(0, index, flat) / \
        torch.bincount(index, minlength=n_words).clamp_min(1).double().unsqueeze(1)
    probe = torch.randn(n_words, 5, dtype=torch.float64)
    (got.double() * probe).sum().backward()
    (want * probe).sum().backward()
    assert got.dtype == torch.float32  # pooled states are compared in fp32
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h1.grad, h2.grad)
    outside = torch.ones(21, dtype=torch.bool).index_fill_(0, pos, False)
    assert torch.count_nonzero(h1.grad.reshape(-1, 5)[outside]) == 0


def test_teacher_other_bucket_normalisation():
    """The teacher's target: its intersection ids at T plus one column with everything else."""
    cased, uncased = cased_tokenizer(), uncased_tokenizer()
    vmap = build_vocab_map(cased, uncased, "u")
    link = TeacherLink("u", lm=None, weight=1.0, view=1, vocab=vmap).to(torch.device("cpu"))
    torch.manual_seed(1)
    width = len(uncased) + 3  # a padded output layer: the extra rows count as "other"
    logits = torch.randn(4, width) * 5
    log_p = teacher_log_p(link, logits, LossConfig(temperature=2.0, unmapped_mass="other"))
    p = (logits / 2.0).softmax(-1).numpy()
    inside = p[:, vmap.teacher_ids[link.target_columns]]  # in the target space's column order
    outside = np.delete(p, vmap.teacher_ids, axis=1).sum(1)
    np.testing.assert_allclose(log_p.exp().numpy(), np.concatenate([inside, outside[:, None]], 1), rtol=1e-5,
                               atol=1e-8)
    np.testing.assert_allclose(log_p.exp().sum(1).numpy(), 1.0, rtol=1e-6)
    renorm = teacher_log_p(link, logits, LossConfig(temperature=2.0, unmapped_mass="renormalise"))
    np.testing.assert_allclose(renorm.exp().numpy(), inside / inside.sum(1, keepdims=True), rtol=1e-5, atol=1e-8)


def _fast_link(model, weight=1.0):
    return TeacherLink("t", lm=MaskedLM(model.eval()), weight=weight, view=0).to(torch.device("cpu"))


@pytest.mark.parametrize("scope", ["all", "masked"])
def test_soft_target_and_mlm_losses_equal_full_logit_reference(tiny, scope):
    """Head at selected positions gives exactly the reference losses computed on full logits:
    ce_scope all = KL over every non-pad position (DistilBERT's default), masked = masked only."""
    tok = AutoTokenizer.from_pretrained(tiny["cased"])
    teacher = AutoModelForMaskedLM.from_pretrained(tiny["cased"]).eval()
    torch.manual_seed(4)
    student = BertForMaskedLM(BertConfig(**{**teacher.config.to_dict(), "num_hidden_layers": 2})).eval()
    views = [ViewSpec.from_tokenizer(tok, "s", 32)]
    rows = RowEncoder(views).encode(tiny["corpus"].read_text().splitlines()[:30])
    arrays = {k: v[:6] for k, v in rows.items() if isinstance(v, np.ndarray)}
    b = make_batch(arrays, views, MaskingConfig(), np.random.default_rng(0), need_words=False)
    cfg = LossConfig(temperature=2.0, alpha_cos=1.0, ce_scope=scope)
    out = compute_losses(StudentModule(student, {}), [_fast_link(teacher)], b, cfg, nullcontext)
    with torch.no_grad():
        att = b.attention if b.attention is not None else torch.ones_like(b.ids)
        t_out = teacher(input_ids=b.ids, attention_mask=att, output_hidden_states=True)
        s_out = student(input_ids=b.ids, attention_mask=att, output_hidden_states=True)
    if scope == "all":
        assert b.attention is not None and not b.attention.all()  # padding present: it must be left out
        mask = att.reshape(-1).bool()
    else:
        mask = torch.zeros(b.ids.numel(), dtype=torch.bool)
        mask[b.masked_pos] = True
    s_logits = s_out.logits.reshape(-1, s_out.logits.shape[-1])[mask]
    t_logits = t_out.logits.reshape(-1, t_out.logits.shape[-1])[mask]
    kl = F.kl_div((s_logits / 2).log_softmax(-1), (t_logits / 2).softmax(-1), reduction="batchmean")
    labels = torch.full((b.ids.numel(),), -100)
    labels[b.masked_pos] = b.labels
    mlm = F.cross_entropy(s_out.logits.reshape(-1, s_logits.shape[-1]), labels, ignore_index=-100)
    valid = att.reshape(-1).bool()
    hs = s_out.hidden_states[-1].reshape(-1, 32)[valid]
    ht = t_out.hidden_states[-1].reshape(-1, 32)[valid]
    cos = F.cosine_embedding_loss(hs, ht, torch.ones(len(hs)))
    ce_part, mlm_part, cos_part, _ = out.parts.tolist()
    assert ce_part == pytest.approx(kl.item(), rel=1e-4)
    assert mlm_part == pytest.approx(mlm.item(), rel=1e-4)
    assert cos_part == pytest.approx(cos.item(), rel=1e-4)
    assert out.total.item() == pytest.approx(5 * 4 * kl.item() + 2 * mlm.item() + cos.item(), rel=1e-4)


def test_teacher_equal_to_student_gives_zero_distillation_loss(tiny):
    tok = AutoTokenizer.from_pretrained(tiny["cased"])
    teacher = AutoModelForMaskedLM.from_pretrained(tiny["cased"]).eval()
    student = build_student(teacher, [0, 1, 2, 3]).eval()
    views = [ViewSpec.from_tokenizer(tok, "s", 32)]
    rows = RowEncoder(views).encode(tiny["corpus"].read_text().splitlines()[:20])
    arrays = {k: v[:4] for k, v in rows.items() if isinstance(v, np.ndarray)}
    b = make_batch(arrays, views, MaskingConfig(), np.random.default_rng(0), need_words=False)
    for weighting in ("static", "entropy"):
        out = compute_losses(StudentModule(student, {}), [_fast_link(teacher, 0.5), _fast_link(teacher, 0.5)], b,
                             LossConfig(weighting=weighting), nullcontext)
        ce, _, cos, _ = out.parts.tolist()
        assert abs(ce) < 1e-5 and abs(cos) < 1e-5
        # Two identical, equally weighted teachers share the loss evenly.
        assert out.contributions[0].item() == pytest.approx(out.contributions[1].item(), abs=1e-6)


def test_entropy_weighting_prefers_the_confident_teacher(tiny):
    tok = AutoTokenizer.from_pretrained(tiny["cased"])
    sharp = AutoModelForMaskedLM.from_pretrained(tiny["cased"]).eval()
    flat = AutoModelForMaskedLM.from_pretrained(tiny["cased"]).eval()
    with torch.no_grad():
        sharp.cls.predictions.decoder.weight.mul_(1.0)
        sharp.cls.predictions.bias.copy_(torch.linspace(0, 30, len(tok)))  # peaked -> low entropy
        flat.cls.predictions.bias.zero_()
    student = build_student(flat, [0, 1])
    views = [ViewSpec.from_tokenizer(tok, "s", 32)]
    rows = RowEncoder(views).encode(tiny["corpus"].read_text().splitlines()[:20])
    arrays = {k: v[:4] for k, v in rows.items() if isinstance(v, np.ndarray)}
    b = make_batch(arrays, views, MaskingConfig(), np.random.default_rng(0), need_words=False)
    links = [_fast_link(sharp, 0.5), _fast_link(flat, 0.5)]
    links[1].name = "flat"
    static = compute_losses(StudentModule(student, {}), links, b, LossConfig(weighting="static", alpha_cos=0),
                            nullcontext)
    ent = compute_losses(StudentModule(student, {}), links, b, LossConfig(weighting="entropy", alpha_cos=0),
                         nullcontext)
    share = lambda c: (c[0] / c.sum()).item()  # noqa: E731
    assert share(ent.contributions) > share(static.contributions)


# --- student -----------------------------------------------------------------------------------

def test_default_layers_follow_distilbert():
    assert default_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert default_layers(4, 2) == [0, 3] and default_layers(3, 3) == [0, 1, 2]


def test_student_copies_chosen_layers_and_loads_with_plain_transformers(tiny, tmp_path):
    teacher = AutoModelForMaskedLM.from_pretrained(tiny["cased"])
    student = build_student(teacher, [1, 3])
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    for j, i in enumerate([1, 3]):
        for (n1, p1), (n2, p2) in zip(student.bert.encoder.layer[j].named_parameters(),
                                      teacher.bert.encoder.layer[i].named_parameters()):
            assert torch.equal(p1, p2), n1
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    save_bundle(ModelBundle(student, AutoTokenizer.from_pretrained(tiny["cased"])), tmp_path / "s")
    again = AutoModelForMaskedLM.from_pretrained(tmp_path / "s").eval()
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    assert torch.allclose(again(ids).logits, student.eval()(ids).logits, atol=1e-6)


# --- the strategy end to end -------------------------------------------------------------------

def test_short_run_lowers_loss_and_writes_outputs(tiny, tmp_path):
    ctx = make_ctx(tmp_path, {"t": tiny["cased"]})
    params = DistillStrategy.Params(**small_params(tiny["corpus"], max_steps=40, checkpoint_every=40,
                                                   num_layers=2, lr=3e-3, batch_size=8))
    out = DistillStrategy(params).apply(load_bundle(tiny["cased"]), ctx)
    report = json.loads((ctx.stage_dir / "distill.json").read_text())
    losses = [h["loss"] for h in report["loss_curve"]]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.2, losses
    held = report["heldout"]
    assert held["student_after"]["mlm_accuracy"] > held["student_before"]["mlm_accuracy"] + 0.03
    assert (ctx.stage_dir / "loss_curve.png").stat().st_size > 1000
    summary = (ctx.stage_dir / "distill.md").read_text()
    assert "2-layer student" in summary and "| t | 1.00 | same as student |" in summary
    assert report["student"]["layers_kept"] == [0, 3] and out.model.config.num_hidden_layers == 2
    assert report["training"]["tokens"] > 0 and ctx.metrics["steps"] == 40
    assert report["teachers"]["t"]["supervised_fraction"] == 1.0 and report["teachers"]["t"]["loss_share"] == 1.0
    assert set(report["heldout"]["student_after"]["agreement"]) == {"t"}
    assert ctx.metrics["heldout_mlm_accuracy"] == pytest.approx(report["heldout"]["student_after"]["mlm_accuracy"],
                                                                abs=1e-5)
    assert isinstance(out.model, BertForMaskedLM) and not out.model.training


def test_time_waiting_for_the_input_pipeline_is_reported(tiny, tmp_path, monkeypatch):
    """A pipeline slower than the step shows up as input wait in distill.json and the loss curve
    (how a user, or the speed benchmark, tells an input-bound run from a GPU-bound one)."""
    import time

    from compresso.strategies.distill import data

    original = data.BatchStream.__iter__

    def slow_iter(self):
        for batch in original(self):
            time.sleep(0.05)
            yield batch

    monkeypatch.setattr(data.BatchStream, "__iter__", slow_iter)
    ctx = make_ctx(tmp_path, {"t": tiny["cased"]})
    params = DistillStrategy.Params(**small_params(tiny["corpus"], max_steps=6, checkpoint_every=6, log_every=3,
                                                   num_layers=2, batch_size=4))
    DistillStrategy(params).apply(load_bundle(tiny["cased"]), ctx)
    report = json.loads((ctx.stage_dir / "distill.json").read_text())
    # the held-out evaluation also iterates a BatchStream, but outside the training loop's timer
    assert 6 * 0.05 <= report["training"]["input_wait_seconds"] <= report["training"]["seconds"]
    shares = [h["input_wait_share"] for h in report["loss_curve"]]
    assert len(shares) == 2 and all(0.0 < x <= 1.0 for x in shares)
    assert "waiting for input" in (ctx.stage_dir / "distill.md").read_text()


def test_two_teachers_with_different_tokenizers_both_supervise(tiny, tmp_path):
    ctx = make_ctx(tmp_path, {"cased": tiny["cased"], "uncased": tiny["uncased"]})
    params = DistillStrategy.Params(**small_params(tiny["corpus"], max_steps=3, teachers={"cased": 1, "uncased": 3},
                                                   teacher_weighting="entropy", alpha_hidden_mse=1.0))
    DistillStrategy(params).apply(load_bundle(tiny["cased"]), ctx)
    report = json.loads((ctx.stage_dir / "distill.json").read_text())
    cased, uncased = report["teachers"]["cased"], report["teachers"]["uncased"]
    assert cased["supervised_fraction"] == 1.0 and 0 < uncased["supervised_fraction"] < 1
    assert cased["loss_share"] > 0 and uncased["loss_share"] > 0
    assert uncased["weight"] == 0.75 and uncased["projection"] and not cased["projection"]
    assert uncased["vocab"]["case_folded"] and 0 < uncased["vocab"]["teacher_vocab_covered"] <= 1
    assert 0 < uncased["heldout"]["supervised_fraction"] < 1
    assert report["training"]["final_losses"]["mse"] > 0


def test_same_tokenizer_teacher_with_padded_output_layer_and_other_width(tmp_path, tiny):
    """Same tokenizer, but the teacher pads its vocabulary and is wider: fast path + projection."""
    tok = cased_tokenizer()
    torch.manual_seed(5)
    wide = tmp_path / "wide"
    BertForMaskedLM(BertConfig(vocab_size=len(tok) + 6, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=96, max_position_embeddings=64)).save_pretrained(wide)
    tok.save_pretrained(wide)
    ctx = make_ctx(tmp_path, {"wide": wide})
    params = DistillStrategy.Params(**small_params(tiny["corpus"], max_steps=2, alpha_hidden_mse=1.0))
    bundle = load_bundle(tiny["cased"])
    bundle.format = "prune"  # e.g. recovery training after pruning: the output keeps the input's format
    assert DistillStrategy(params).apply(bundle, ctx).format == "prune"
    report = json.loads((ctx.stage_dir / "distill.json").read_text())
    assert report["teachers"]["wide"]["same_tokenizer"] and report["teachers"]["wide"]["projection"]
    assert report["teachers"]["wide"]["layer_map"] == {"1": 1, "2": 2}  # 2 student layers, 2 teacher layers
    assert all(np.isfinite(v) for v in report["training"]["final_losses"].values())


def _final_state(ctx) -> dict:
    from safetensors.torch import load_file

    return load_file(str(ctx.work_dir / "checkpoint" / "student.safetensors"))


def test_killed_run_resumes_to_identical_weights(tiny, tmp_path, monkeypatch):
    teachers = {"cased": tiny["cased"], "uncased": tiny["uncased"]}
    params = DistillStrategy.Params(**small_params(tiny["corpus"], max_steps=6, checkpoint_every=2))
    ctx_a = make_ctx(tmp_path, teachers, name="a")
    DistillStrategy(params).apply(load_bundle(tiny["cased"]), ctx_a)

    ctx_b = make_ctx(tmp_path, teachers, name="b")

    def die(self, step):
        if step == 5:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(trainer_module.Trainer, "on_step_end", die)
    with pytest.raises(KeyboardInterrupt):
        DistillStrategy(params).apply(load_bundle(tiny["cased"]), ctx_b)
    assert torch.load(ctx_b.work_dir / "checkpoint" / "state.pt", weights_only=True)["step"] == 4
    monkeypatch.undo()
    DistillStrategy(params).apply(load_bundle(tiny["cased"]), ctx_b)
    report = json.loads((ctx_b.stage_dir / "distill.json").read_text())
    assert report["training"]["resumed_from_step"] == 4
    a, b = _final_state(ctx_a), _final_state(ctx_b)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = torch.load(ctx_a.work_dir / "checkpoint" / "state.pt", weights_only=True)
    sb = torch.load(ctx_b.work_dir / "checkpoint" / "state.pt", weights_only=True)
    for k, v in sa["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], sb["optimizer"]["state"][k]["exp_avg_sq"])
    assert [h["loss"] for h in sa["history"]] == [h["loss"] for h in sb["history"]]


# --- errors before training --------------------------------------------------------------------

def test_bad_params_are_validation_errors(tiny):
    corpus = str(tiny["corpus"])
    bad = [dict(corpus=[corpus], layers=[0, 1], num_layers=2), dict(corpus=[corpus], dataset="x/y"), dict(),
           dict(corpus=[corpus], alpha_ce=0, alpha_mlm=0, alpha_cos=0), dict(corpus=[corpus], layers=[1, 1]),
           dict(corpus=["/no/such/file.txt"]), dict(corpus=[corpus], teachers={"a": 0}),
           dict(corpus=[corpus], mask_replace_prob=0.9, mask_random_prob=0.2)]
    for kw in bad:
        with pytest.raises(ValidationError):
            DistillStrategy.Params(**kw)
    assert DistillStrategy.Params(corpus=[corpus], layers="all").layers == "all"


def test_clear_errors_before_training(tiny, tmp_path):
    cls_dir = tmp_path / "classifier"
    BertForSequenceClassification(BertConfig(vocab_size=len(cased_tokenizer()), hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64)).save_pretrained(cls_dir)
    cased_tokenizer().save_pretrained(cls_dir)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    cases = [
        ({"t": tiny["cased"]}, dict(layers=[0, 7]), "index 7 does not exist"),
        ({"t": tiny["cased"]}, dict(num_layers=9), "more than the input model's 4 layers"),
        ({"t": tiny["cased"]}, dict(teachers=["nope"]), "'nope' is not among the recipe's teachers"),
        ({"clf": cls_dir}, dict(), "not a masked-LM"),
        ({"t": tiny["cased"]}, dict(seq_len=128), "at most 64 positions"),
        ({"t": tiny["cased"]}, dict(corpus=[str(empty)]), "holds no documents"),
        ({"t": tiny["cased"]}, dict(heldout_documents=5000), "all of them in the held-out slice"),
        ({"u": tiny["uncased"]}, dict(whole_word_mask=False), "whole-word masking"),
        ({}, dict(), "at least one teacher"),
    ]
    for teachers, kw, message in cases:
        ctx = make_ctx(tmp_path, teachers, name="err")
        strategy = DistillStrategy(DistillStrategy.Params(**small_params(tiny["corpus"], **kw)))
        with pytest.raises(StrategyError, match=message):
            strategy.preflight(ctx)
            strategy.apply(load_bundle(tiny["cased"]), ctx)
        assert not (ctx.work_dir / "checkpoint").exists()  # failed before any training
