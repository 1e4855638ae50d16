"""The DistilBERT-faithful defaults and the multi-teacher options (issue 13), each against an
independent computation: soft targets at every position or masked ones only, a foreign teacher's
KL with the "other" bucket and per-position teacher weights under partial supervision, entropy
in the shared space, the hidden-state layer map, token-level masking with frequency smoothing,
the projection without bias and the cosine loss's constant-vector baseline, the aligner's counts."""

from __future__ import annotations

import json
import math
import random
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForMaskedLM

from compresso.models import load_bundle
from compresso.strategies.distill import DistillStrategy
from compresso.strategies.distill.data import MaskingConfig, RowEncoder, make_batch, token_mask_weights
from compresso.strategies.distill.evaluate import cosine_check
from compresso.strategies.distill.losses import LossConfig, TeacherLink, compute_losses
from compresso.strategies.distill.modeling import (
    MaskedLM,
    StudentModule,
    build_student,
    default_layer_map,
    make_projection,
)
from compresso.strategies.distill.vocab import build_vocab_map
from tests.test_distill import (  # noqa: F401  (tiny is a fixture)
    NAMES,
    WORDS,
    _views,
    cased_tokenizer,
    make_ctx,
    small_params,
    tiny,
    uncased_tokenizer,
)

CPU = torch.device("cpu")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    keep = p > 0
    return float((p[keep] * (np.log(p[keep]) - np.log(q[keep]))).sum())


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@pytest.mark.parametrize("scope,weighting", [("all", "static"), ("masked", "static"), ("all", "entropy"),
                                             ("masked", "entropy")])
def test_foreign_teacher_kl_and_position_weights_equal_independent_computation(tiny, scope, weighting):
    """Two teachers, one with the student's tokenizer (supervises every row) and one with another
    (only aligned rows): the loss equals explicit per-position sums over full-logit forward passes,
    with the alignment read from the encoder's match array and the vocabulary map applied by hand."""
    ctok, utok = cased_tokenizer(), uncased_tokenizer()
    cased_t = AutoModelForMaskedLM.from_pretrained(tiny["cased"]).eval()
    uncased_t = AutoModelForMaskedLM.from_pretrained(tiny["uncased"]).eval()
    student = build_student(cased_t, [0, 2]).eval()
    with torch.no_grad():  # move the student away from its teacher so the KL is not ~0
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    views = _views()
    rows = RowEncoder(views).encode(tiny["corpus"].read_text().splitlines()[:40])
    arrays = {k: v[:6] for k, v in rows.items() if isinstance(v, np.ndarray)}
    b = make_batch(arrays, views, MaskingConfig(), np.random.default_rng(2), need_words=False)
    vmap = build_vocab_map(ctok, utok, "u")
    fast = TeacherLink("c", MaskedLM(cased_t), weight=0.75, view=0)
    cross = TeacherLink("u", MaskedLM(uncased_t), weight=0.25, view=1, vocab=vmap)
    if weighting == "entropy":
        DistillStrategy._shared_space([fast, cross])
    links = [fast.to(CPU), cross.to(CPU)]
    tau, T = 0.7, 2.0
    cfg = LossConfig(temperature=T, alpha_cos=0, alpha_mlm=0, ce_scope=scope, weighting=weighting,
                     entropy_temperature=tau)
    out = compute_losses(StudentModule(student, {}), links, b, cfg, nullcontext)

    vb = b.views[0]
    with torch.no_grad():
        att0 = b.attention if b.attention is not None else torch.ones_like(b.ids)
        attv = vb.attention if vb.attention is not None else torch.ones_like(vb.ids)
        s_logits = student(input_ids=b.ids, attention_mask=att0).logits.double().numpy()
        c_logits = cased_t(input_ids=b.ids, attention_mask=att0).logits.double().numpy()
        u_logits = uncased_t(input_ids=vb.ids, attention_mask=attv).logits.double().numpy()
    W0 = b.ids.shape[1]
    masked = set(b.masked_pos.tolist())
    C = len(vmap.teacher_ids)
    unmapped_s = np.setdiff1d(np.arange(s_logits.shape[-1]), vmap.student_ids)
    unmapped_t = np.setdiff1d(np.arange(u_logits.shape[-1]), vmap.teacher_ids)

    def push(p):  # student vocabulary -> shared columns + "other"
        m = np.zeros(C + 1)
        np.add.at(m, vmap.columns, p[vmap.student_ids])
        m[C] = p[unmapped_s].sum()
        return m

    def restrict(p):  # teacher vocabulary -> shared columns + "other"
        return np.append(p[vmap.teacher_ids], p[unmapped_t].sum())

    total, n_rows, per_teacher, partial = 0.0, 0, [0.0, 0.0], 0
    for r in range(len(arrays["len0"])):
        for c in range(int(arrays["len0"][r])):
            if scope == "masked" and r * W0 + c not in masked:
                continue
            q = _softmax(s_logits[r, c] / T)
            terms = [(0, 0.75, _kl(_softmax(c_logits[r, c] / T), q), _entropy(push(_softmax(c_logits[r, c]))))]
            m = int(arrays["match1"][r, c])
            if m >= 0:
                pu = _softmax(u_logits[r, m] / T)
                terms.append((1, 0.25, _kl(restrict(pu), push(q)), _entropy(restrict(_softmax(u_logits[r, m])))))
            else:
                partial += 1
            ws = [w * math.exp(-h / tau) if weighting == "entropy" else w for _, w, _, h in terms]
            for (i, _, kl, _), w in zip(terms, ws):
                per_teacher[i] += w / sum(ws) * kl
                total += w / sum(ws) * kl
            n_rows += 1
    assert partial > 0 and partial < n_rows  # the foreign teacher supervises some rows, not all
    ce = out.parts[0].item()
    assert ce == pytest.approx(total / n_rows, rel=1e-4)
    expected = np.array(per_teacher) / n_rows * 5 * T * T
    np.testing.assert_allclose(out.contributions.numpy(), expected, rtol=1e-4)


def test_default_layer_map_matches_the_copied_layers():
    assert default_layer_map([0, 2, 4, 7, 9, 11], 12, 12) == {1: 1, 2: 3, 3: 5, 4: 8, 5: 10, 6: 12}
    assert default_layer_map([0, 3], 4, 4) == {1: 1, 2: 4}
    # A teacher of another depth than the student's input: evenly spaced.
    assert default_layer_map([0, 2, 4, 7, 9, 11], 12, 24) == {i: 4 * i for i in range(1, 7)}


def test_projection_has_no_bias():
    square, wide = make_projection(8, 8), make_projection(8, 12)
    assert square.bias is None and wide.bias is None
    assert torch.equal(square.weight, torch.eye(8))


def test_smoothed_token_masking_follows_distilbert():
    """Exactly ceil(0.15 * maskable) tokens, never a special one, rare tokens picked far more often."""
    views = _views()[:1]
    spec = views[0]
    rng = random.Random(3)
    common, rare = "casa", "oameni"  # both single pieces in the cased vocabulary
    docs = [" ".join([common] * 20 + [rare] + [rng.choice(WORDS) for _ in range(5)]) for _ in range(60)]
    rows = RowEncoder(views).encode(docs)
    arrays = {k: v for k, v in rows.items() if isinstance(v, np.ndarray)}
    tok = cased_tokenizer()
    counts = np.bincount(arrays["ids0"].reshape(-1), minlength=len(tok))
    weights = token_mask_weights(counts, 0.7, spec.special_ids)
    assert (weights[list(spec.special_ids)] == 0).all()
    b = make_batch(arrays, views, MaskingConfig(whole_word=False, token_weights=weights),
                   np.random.default_rng(0), need_words=False)
    orig = torch.from_numpy(arrays["ids0"][:, : b.ids.shape[1]].astype(np.int64)).reshape(-1)
    special = torch.isin(orig, torch.tensor(spec.special_ids))
    assert b.n_masked == math.ceil(0.15 * int((~special).sum()))
    assert not special[b.masked_pos].any()
    labels = b.labels.numpy()
    c_id, r_id = tok.convert_tokens_to_ids([common, rare])
    rate = lambda t: (labels == t).sum() / (orig.numpy() == t).sum()  # noqa: E731
    assert rate(r_id) > 3 * rate(c_id)  # count^-0.7: ~20x rarer -> ~8x the weight (before exhaustion)


def test_smoothing_needs_token_level_masking(tiny):
    corpus = [str(tiny["corpus"])]
    with pytest.raises(ValidationError, match="whole_word_mask: false"):
        DistillStrategy.Params(corpus=corpus, mlm_smoothing=0.5)
    assert DistillStrategy.Params(corpus=corpus, whole_word_mask=False, mlm_smoothing=0.5).mlm_smoothing == 0.5


def test_aligner_counts_what_it_drops():
    views = _views()
    rng = random.Random(1)
    docs = [" ".join(rng.choice(WORDS + NAMES + ["Ωmega"]) for _ in range(rng.randint(5, 30))) for _ in range(50)]
    stats = RowEncoder(views).encode(docs)["alignment_stats"]
    n_omega = sum(d.split().count("Ωmega") for d in docs)
    assert stats["words"] == sum(len(d.split()) for d in docs)
    assert stats["words_dropped"] == 0
    assert stats["words_never_masked"] == n_omega > 0  # the student reads 'Ωmega' as [UNK]
    # Student [UNK] pieces have no text of their own and are never aligned; so here no student
    # piece loses its teacher to a teacher [UNK] ('Ωmega' is [UNK] on both sides).
    assert stats["view1_aligned_tokens"] > 0 and stats["view1_teacher_unk_tokens"] == 0


def test_cosine_baseline_is_the_best_constant_vector(tiny):
    tok_views = _views()[:1]
    teacher = AutoModelForMaskedLM.from_pretrained(tiny["cased"]).eval()
    student = build_student(teacher, [0, 3]).eval()
    rows = RowEncoder(tok_views).encode(tiny["corpus"].read_text().splitlines()[:30])
    arrays = {k: v[:5] for k, v in rows.items() if isinstance(v, np.ndarray)}
    b = make_batch(arrays, tok_views, MaskingConfig(), np.random.default_rng(0), need_words=False)
    link = TeacherLink("t", MaskedLM(teacher), weight=1.0, view=0).to(CPU)
    res = cosine_check(StudentModule(student, {}), [link], [b], CPU)["t"]
    with torch.no_grad():
        h = teacher(input_ids=b.ids, attention_mask=b.attention, output_hidden_states=True).hidden_states[-1]
    h = h.reshape(-1, h.shape[-1])[b.token_pos]
    best = torch.nn.functional.normalize(h, dim=-1).sum(0)
    baseline = (1 - torch.nn.functional.cosine_similarity(h, best.expand_as(h), dim=-1)).mean().item()
    assert res["constant_vector_baseline"] == pytest.approx(baseline, rel=1e-4)
    # No other constant does better (a few random directions, and the plain mean).
    for c in [h.mean(0)] + [torch.randn(h.shape[1]) for _ in range(5)]:
        assert (1 - torch.nn.functional.cosine_similarity(h, c.expand_as(h), dim=-1)).mean().item() >= baseline - 1e-6
    assert res["vectors"] == len(b.token_pos) and 0 <= res["student_cos_loss"] <= 2


def test_token_level_run_counts_frequencies_for_smoothing(tiny, tmp_path):
    ctx = make_ctx(tmp_path, {"cased": tiny["cased"]})
    params = DistillStrategy.Params(**small_params(tiny["corpus"], max_steps=2, whole_word_mask=False,
                                                   smoothing_documents=50))
    strategy = DistillStrategy(params)
    weights = strategy._token_weights(strategy._corpus(ctx), cased_tokenizer(), params)
    tok = cased_tokenizer()
    texts = tiny["corpus"].read_text().splitlines()[16:66]  # after the 16 held-out documents
    counts = np.bincount([i for t in texts for i in tok(t, add_special_tokens=False)["input_ids"]],
                         minlength=len(tok))
    np.testing.assert_allclose(weights, token_mask_weights(counts, 0.7, tok.all_special_ids))
    strategy.apply(load_bundle(tiny["cased"]), ctx)
    assert json.loads((ctx.stage_dir / "distill.json").read_text())["config"]["mlm_smoothing"] == 0.7


def test_two_teacher_run_reports_calibration_out_of_map_mass_alignment_and_baseline(tiny, tmp_path):
    ctx = make_ctx(tmp_path, {"cased": tiny["cased"], "uncased": tiny["uncased"]})
    params = DistillStrategy.Params(**small_params(tiny["corpus"], max_steps=2, teacher_weighting="entropy",
                                                   alpha_hidden_mse=1.0))
    assert params.ce_scope == "all" and params.unmapped_mass == "other" and params.entropy_temperature == "auto"
    DistillStrategy(params).apply(load_bundle(tiny["cased"]), ctx)
    report = json.loads((ctx.stage_dir / "distill.json").read_text())
    cal = report["entropy_calibration"]
    assert cal["positions"] > 0 and cal["entropy_temperature"] > 0
    assert set(cal["mean_entropy"]) == {"cased", "uncased"}
    uncased = report["teachers"]["uncased"]
    assert 0 < uncased["heldout"]["out_of_map_mass"] < 1
    assert 0 < uncased["heldout"]["student_out_of_map_mass"] < 1
    for name in ("cased", "uncased"):
        cos = report["teachers"][name]["heldout"]["cosine"]
        assert 0 <= cos["constant_vector_baseline"] <= 1 and cos["vectors"] > 0
    assert report["teachers"]["cased"]["layer_map"] == {"1": 1, "2": 4}  # student layers [0, 3] of 4
    align = report["alignment"]
    assert align["words"] > 0 and align["words_dropped"] == 0 and align["view1_aligned_tokens"] > 0


def test_entropy_temperature_must_be_positive_or_auto(tiny):
    corpus = [str(tiny["corpus"])]
    for bad in (0, -1.0, "often"):
        with pytest.raises(ValidationError, match="entropy_temperature"):
            DistillStrategy.Params(corpus=corpus, entropy_temperature=bad)
    assert DistillStrategy.Params(corpus=corpus, entropy_temperature=0.5).entropy_temperature == 0.5


def test_entropy_weighting_needs_one_shared_space():
    from compresso.strategy import StrategyError

    vmap = build_vocab_map(cased_tokenizer(), uncased_tokenizer(), "u")
    links = [TeacherLink("a", None, 0.5, view=1, vocab=vmap), TeacherLink("b", None, 0.5, view=2, vocab=vmap)]
    with pytest.raises(StrategyError, match="more than one foreign tokenizer"):
        DistillStrategy._shared_space(links)


def test_entropy_weighting_survives_a_tiny_tau(tiny):
    """exp(-H / tau) underflows for every teacher at tau = 1e-4; the weights must still sum to 1."""
    cased_t = AutoModelForMaskedLM.from_pretrained(tiny["cased"]).eval()
    uncased_t = AutoModelForMaskedLM.from_pretrained(tiny["uncased"]).eval()
    views = _views()
    rows = RowEncoder(views).encode(tiny["corpus"].read_text().splitlines()[:20])
    arrays = {k: v[:4] for k, v in rows.items() if isinstance(v, np.ndarray)}
    b = make_batch(arrays, views, MaskingConfig(), np.random.default_rng(0), need_words=False)
    links = [TeacherLink("c", MaskedLM(cased_t), 0.5, view=0),
             TeacherLink("u", MaskedLM(uncased_t), 0.5, view=1, vocab=build_vocab_map(cased_tokenizer(),
                                                                                         uncased_tokenizer(), "u"))]
    DistillStrategy._shared_space(links)
    links = [lk.to(CPU) for lk in links]
    out = compute_losses(StudentModule(build_student(cased_t, [0, 1]), {}), links, b,
                         LossConfig(weighting="entropy", entropy_temperature=1e-4, alpha_cos=0), nullcontext)
    assert torch.isfinite(out.total) and out.parts[0].item() > 0
