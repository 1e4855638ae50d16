"""distill: how several teachers' soft targets mix (teacher_mixing), the constant learning-rate
schedule and the students saved along one run (snapshot_steps)."""

from __future__ import annotations

import json
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForMaskedLM, AutoTokenizer

from compresso.models import load_bundle
from compresso.strategies.distill import DistillStrategy
from compresso.strategies.distill.data import MaskingConfig, RowEncoder, ViewSpec, make_batch
from compresso.strategies.distill.losses import LossConfig, TeacherLink, compute_losses, geometric_targets
from compresso.strategies.distill.modeling import MaskedLM, StudentModule, build_student
from compresso.strategies.distill.strategy import resumable_params
from compresso.strategies.distill.trainer import _lr_lambda, fingerprint
from compresso.strategies.distill.vocab import VocabMap
from compresso.strategy import StrategyError
from tests.test_distill import make_ctx, small_params, tiny  # noqa: F401  (tiny: the module's fixture)

CPU = torch.device("cpu")


def _hand_map() -> VocabMap:
    """Student ids 0..4: ids 0 and 1 share teacher column 0 (case variants), id 2 has column 1,
    ids 3 and 4 are outside the shared vocabulary ("other")."""
    return VocabMap(student_ids=np.array([0, 1, 2]), columns=np.array([0, 0, 1]), teacher_ids=np.array([7, 9]),
                    student_to_teacher=np.array([7, 7, 9, -1, -1]), student_vocab_mapped=0.6,
                    teacher_vocab_covered=1.0, case_folded=True, merged=2)


def test_geometric_mix_equals_a_hand_computed_case():
    same = TeacherLink("same", lm=None, weight=2 / 3, view=0).to(CPU)
    cross = TeacherLink("cross", lm=None, weight=1 / 3, view=1, vocab=_hand_map()).to(CPU)
    p_same = torch.tensor([[0.4, 0.3, 0.2, 0.06, 0.04]])
    # the foreign teacher's target space in the link's layout order: its columns, then "other"
    by_column = {0: 0.5, 1: 0.3}
    p_cross = torch.tensor([[by_column[c] for c in cross.target_columns] + [0.2]])
    w = [torch.tensor([2 / 3]), torch.tensor([1 / 3])]
    log_r = geometric_targets([same, cross], [p_same.log(), p_cross.log()], w, same)
    # By hand: the foreign column's probability split among its ids as the same-tokenizer teacher
    # splits it (column 0: 0.4 and 0.3 of 0.7; "other": 0.06 and 0.04 of 0.1), then
    # r ∝ p_same^(2/3) * split^(1/3).
    split = np.array([0.5 * 0.4 / 0.7, 0.5 * 0.3 / 0.7, 0.3, 0.2 * 0.6, 0.2 * 0.4])
    r = np.array([0.4, 0.3, 0.2, 0.06, 0.04]) ** (2 / 3) * split ** (1 / 3)
    np.testing.assert_allclose(log_r.exp()[0].numpy(), r / r.sum(), rtol=1e-5)
    # Summed over a column's ids, the mix is the geometric mean of the column distributions.
    cols = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]])
    g = cols[0] ** (2 / 3) * cols[1] ** (1 / 3)
    got = log_r.exp()[0].numpy()
    np.testing.assert_allclose([got[:2].sum(), got[2], got[3:].sum()], g / g.sum(), rtol=1e-5)


def test_geometric_mix_ignores_a_teacher_where_it_does_not_supervise():
    same = TeacherLink("same", lm=None, weight=0.5, view=0).to(CPU)
    cross = TeacherLink("cross", lm=None, weight=0.5, view=1, vocab=_hand_map()).to(CPU)
    p_same = torch.tensor([[0.4, 0.3, 0.2, 0.06, 0.04], [0.1, 0.1, 0.6, 0.1, 0.1]])
    log_cross = torch.tensor([[0.5, 0.3, 0.2], [0.0, 0.0, 1.0]]).log()  # row 1: -inf entries, weight 0
    w = [torch.tensor([0.5, 1.0]), torch.tensor([0.5, 0.0])]
    log_r = geometric_targets([same, cross], [p_same.log(), log_cross], w, same)
    assert torch.isfinite(log_r).all()
    torch.testing.assert_close(log_r[1].exp(), p_same[1])
    # two teachers that agree give back their distribution
    agree = TeacherLink("same2", lm=None, weight=0.5, view=0).to(CPU)
    both = geometric_targets([same, agree], [p_same.log(), p_same.log()], [torch.full((2,), 0.5)] * 2, same)
    torch.testing.assert_close(both.exp(), p_same)


def _batch(tok, corpus, n_rows=4):
    views = [ViewSpec.from_tokenizer(tok, "s", 32)]
    rows = RowEncoder(views).encode(corpus.read_text().splitlines()[:20])
    arrays = {k: v[:n_rows] for k, v in rows.items() if isinstance(v, np.ndarray)}
    return make_batch(arrays, views, MaskingConfig(), np.random.default_rng(0), need_words=False)


def test_geometric_loss_is_the_kl_to_the_geometric_mean_of_same_tokenizer_teachers(tiny):  # noqa: F811
    """Two teachers with the student's tokenizer: the soft-target loss is KL(r || q) with r the
    normalised weighted geometric mean, i.e. softmax of the weighted mean of their logits / T."""
    tok = AutoTokenizer.from_pretrained(tiny["cased"])
    a = AutoModelForMaskedLM.from_pretrained(tiny["cased"]).eval()
    b = AutoModelForMaskedLM.from_pretrained(tiny["cased"]).eval()
    with torch.no_grad():
        b.cls.predictions.bias.copy_(torch.linspace(-3, 3, b.cls.predictions.bias.shape[0]))
    student = build_student(a, [0, 1]).eval()
    batch = _batch(tok, tiny["corpus"])
    links = [TeacherLink("a", lm=MaskedLM(a), weight=0.75, view=0).to(CPU),
             TeacherLink("b", lm=MaskedLM(b), weight=0.25, view=0).to(CPU)]
    cfg = LossConfig(alpha_cos=0, alpha_mlm=0, mixing="geometric")
    out = compute_losses(StudentModule(student, {}), links, batch, cfg, nullcontext)
    with torch.no_grad():
        pos = batch.token_pos
        T = cfg.temperature
        za = a(batch.ids, attention_mask=batch.attention).logits.reshape(-1, len(tok)).index_select(0, pos)
        zb = b(batch.ids, attention_mask=batch.attention).logits.reshape(-1, len(tok)).index_select(0, pos)
        zs = student(batch.ids, attention_mask=batch.attention).logits.reshape(-1, len(tok)).index_select(0, pos)
        log_r = (0.75 * (za / T).log_softmax(-1) + 0.25 * (zb / T).log_softmax(-1)).log_softmax(-1)
        kl = (log_r.exp() * (log_r - (zs / T).log_softmax(-1))).sum(-1).mean()
    assert out.parts[0].item() == pytest.approx(kl.item(), rel=1e-4)
    # the per-teacher parts split that one KL by weight
    assert out.contributions[0].item() == pytest.approx(3 * out.contributions[1].item(), rel=1e-4)
    arithmetic = compute_losses(StudentModule(student, {}), links, batch, LossConfig(alpha_cos=0, alpha_mlm=0),
                                nullcontext)
    assert abs(arithmetic.parts[0].item() - out.parts[0].item()) > 1e-4


def test_mixing_and_schedule_change_the_run_fingerprint_only_off_their_defaults(tiny):  # noqa: F811
    base = small_params(tiny["corpus"])

    def key(**kw):
        return fingerprint(resumable_params(DistillStrategy.Params(**{**base, **kw})))

    plain = key()
    assert "teacher_mixing" not in resumable_params(DistillStrategy.Params(**base))  # older checkpoints resume
    assert key(teacher_mixing="arithmetic") == plain and key(lr_schedule="linear") == plain
    assert key(teacher_mixing="geometric") != plain
    assert key(lr_schedule="constant") != plain
    assert key(snapshot_steps=[2, 4]) == plain  # what is saved along the way, not how it trains


def test_bad_mixing_schedule_and_snapshot_params_are_refused(tiny):  # noqa: F811
    base = small_params(tiny["corpus"])
    for kw, words in [(dict(teacher_mixing="geometric", unmapped_mass="renormalise"), "unmapped_mass: other"),
                      (dict(teacher_mixing="geometric", loss_chunk_rows=8), "loss_chunk_rows"),
                      (dict(snapshot_steps=[4, 2]), "increasing"), (dict(snapshot_steps=[2, 6]), "below max_steps"),
                      (dict(lr_schedule="cosine"), "lr_schedule")]:
        with pytest.raises(ValidationError, match=words):
            DistillStrategy.Params(**{**base, **kw})


def test_geometric_mixing_needs_a_teacher_with_the_students_tokenizer(tiny, tmp_path):  # noqa: F811
    ctx = make_ctx(tmp_path, {"u": tiny["uncased"], "u2": tiny["uncased"]})
    params = DistillStrategy.Params(**small_params(tiny["corpus"], teacher_mixing="geometric"))
    with pytest.raises(StrategyError, match="needs a teacher with the student's tokenizer"):
        DistillStrategy(params).apply(load_bundle(tiny["cased"]), ctx)


def test_constant_schedule_holds_the_rate_after_warm_up():
    f = _lr_lambda(100, 10, "constant")
    assert [f(s) for s in (0, 9, 10, 50, 99)] == [0.1, 1.0, 1.0, 1.0, 1.0]
    assert _lr_lambda(100, 10)(55) == pytest.approx(0.5)


def test_snapshots_along_one_run_equal_a_run_stopped_there(tiny, tmp_path):  # noqa: F811
    """Two teachers (one foreign), geometric mixing, constant schedule: the student saved at step 3
    of a 6-step run is the student of a 3-step run with the same schedule; a rerun resumes."""
    teachers = {"cased": tiny["cased"], "uncased": tiny["uncased"]}
    common = dict(teacher_mixing="geometric", lr_schedule="constant", teachers={"cased": 2, "uncased": 1})
    long = DistillStrategy.Params(**small_params(tiny["corpus"], max_steps=6, checkpoint_every=100,
                                                 snapshot_steps=[3], **common))
    ctx = make_ctx(tmp_path, teachers, name="long")
    DistillStrategy(long).apply(load_bundle(tiny["cased"]), ctx)
    snap = ctx.stage_dir / "snapshots" / "step-3"
    meta = json.loads((snap / "snapshot.json").read_text())
    assert meta["step"] == 3 and meta["tokens"] > 0
    assert not list((ctx.stage_dir / "snapshots").glob("*.partial"))
    # the snapshot step also checkpointed (checkpoint_every is 100): the history has a record there
    report = json.loads((ctx.stage_dir / "distill.json").read_text())
    assert 3 in [h["step"] for h in report["loss_curve"]]
    assert report["config"]["teacher_mixing"] == "geometric"

    short = DistillStrategy.Params(**small_params(tiny["corpus"], max_steps=3, checkpoint_every=100, **common))
    out = DistillStrategy(short).apply(load_bundle(tiny["cased"]), make_ctx(tmp_path, teachers, name="short"))
    again = load_bundle(snap).model.state_dict()
    for k, v in out.model.state_dict().items():
        torch.testing.assert_close(again[k], v, rtol=0, atol=1e-6, msg=k)


def test_a_constant_rate_run_continues_into_a_longer_one(tiny, tmp_path):  # noqa: F811
    """Under lr_schedule: constant the checkpoint of a finished 3-step run resumes into a 6-step run
    (same warm-up in steps) and ends where a straight 6-step run ends; a run shorter than its
    checkpoint is refused; a linearly decayed run does not resume into a longer one."""
    teachers = {"cased": tiny["cased"]}

    def params(steps, **kw):
        # warm-up of 2 steps either way: 2/3 of 3 steps, 1/3 of 6
        return DistillStrategy.Params(**small_params(tiny["corpus"], max_steps=steps, checkpoint_every=100,
                                                     lr_schedule="constant", warmup_ratio=2 / steps, **kw))

    assert fingerprint(resumable_params(params(3))) == fingerprint(resumable_params(params(6)))
    straight = DistillStrategy(params(6)).apply(load_bundle(tiny["cased"]), make_ctx(tmp_path, teachers, name="a"))
    ctx = make_ctx(tmp_path, teachers, name="b")
    DistillStrategy(params(3)).apply(load_bundle(tiny["cased"]), ctx)
    longer = DistillStrategy(params(6)).apply(load_bundle(tiny["cased"]), ctx)
    assert json.loads((ctx.stage_dir / "distill.json").read_text())["training"]["resumed_from_step"] == 3
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(longer.model.state_dict()[k], v, rtol=0, atol=1e-6, msg=k)
    with pytest.raises(StrategyError, match="past this run's max_steps 3"):
        DistillStrategy(params(3)).apply(load_bundle(tiny["cased"]), ctx)
    linear = dict(lr_schedule="linear")
    assert fingerprint(resumable_params(params(3).model_copy(update=linear))) != \
        fingerprint(resumable_params(params(6).model_copy(update=linear)))
