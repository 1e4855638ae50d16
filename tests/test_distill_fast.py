"""The distill step's speed levers change no loss: chunked head losses and torch.compile give the
unchunked, eager loss and gradients (to float rounding)."""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from transformers import AutoModelForMaskedLM

from compresso.strategies.distill import DistillStrategy
from compresso.strategies.distill.data import MaskingConfig, RowEncoder, make_batch
from compresso.strategies.distill.losses import LossConfig, TeacherLink, compute_losses
from compresso.strategies.distill.modeling import MaskedLM, StudentModule, build_student
from compresso.strategies.distill.vocab import build_vocab_map
from tests.test_distill import (  # noqa: F401  (tiny is a fixture)
    _views,
    cased_tokenizer,
    tiny,
    uncased_tokenizer,
)

CPU = torch.device("cpu")


def _setup(tiny, weighting="static", fixed_width=False, rows=6, tail=False):
    cased_t = AutoModelForMaskedLM.from_pretrained(tiny["cased"]).eval()
    uncased_t = AutoModelForMaskedLM.from_pretrained(tiny["uncased"]).eval()
    torch.manual_seed(0)
    student = build_student(cased_t, [0, 2]).train()
    with torch.no_grad():  # away from its teacher, so the KL is not ~0
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    views = _views()
    enc = RowEncoder(views).encode(tiny["corpus"].read_text().splitlines()[:40])
    # tail: the chunk's last rows, the very last one short
    arrays = {k: (v[-rows:] if tail else v[:rows]) for k, v in enc.items() if isinstance(v, np.ndarray)}
    b = make_batch(arrays, views, MaskingConfig(), np.random.default_rng(2), need_words=True,
                   fixed_width=fixed_width)
    fast = TeacherLink("c", MaskedLM(cased_t), weight=0.75, view=0)
    cross = TeacherLink("u", MaskedLM(uncased_t), weight=0.25, view=1,
                        vocab=build_vocab_map(cased_tokenizer(), uncased_tokenizer(), "u"))
    if weighting == "entropy":
        DistillStrategy._shared_space([fast, cross])
    return student, [fast.to(CPU), cross.to(CPU)], b


def _loss_and_grads(student, links, b, cfg):
    module = StudentModule(student, {})
    student.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # same dropout masks in both runs
    out = compute_losses(module, links, b, cfg, nullcontext)
    out.total.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("scope,weighting,chunk", [("all", "static", 7), ("masked", "static", 3),
                                                   ("all", "entropy", 16), ("all", "static", 10**6)])
def test_chunked_head_losses_equal_unchunked_values_and_gradients(tiny, scope, weighting, chunk):
    """Chunk sizes that do not divide the row count, one that covers every row at once, both
    scopes, both weightings, a teacher with the student's tokenizer and one with another."""
    student, links, b = _setup(tiny, weighting)
    base = dict(temperature=2.0, alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, ce_scope=scope, weighting=weighting,
                entropy_temperature=0.7)
    ref, ref_grads = _loss_and_grads(student, links, b, LossConfig(**base))
    got, got_grads = _loss_and_grads(student, links, b, LossConfig(**base, chunk_rows=chunk))
    assert ref.parts[0] > 0.01 and ref.parts[1] > 0.1  # both terms really present
    torch.testing.assert_close(got.total, ref.total, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.parts, ref.parts, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.contributions, ref.contributions, rtol=1e-5, atol=1e-6)
    assert set(got_grads) == set(ref_grads)
    # the output layer (tied to the input embeddings) and the head's transform get their gradient
    assert "cls.predictions.transform.dense.weight" in got_grads and "bert.embeddings.word_embeddings.weight" in got_grads
    for name, g in ref_grads.items():
        torch.testing.assert_close(got_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_fixed_width_batches_keep_every_index_consistent(tiny):
    """Fixed-width batches (for compiled models) are the trimmed batch plus pad columns: the same
    losses, and every shape is the views' full row length."""
    cfg = LossConfig(alpha_cos=1.0, ce_scope="all")
    student, links, trimmed = _setup(tiny, rows=1, tail=True)
    _, _, fixed = _setup(tiny, fixed_width=True, rows=1, tail=True)
    assert fixed.ids.shape[1] == 32 and fixed.views[0].ids.shape[1] == 32
    assert trimmed.ids.shape[1] < 32  # the tiny corpus has short rows: trimming really differs
    student.eval()
    a = compute_losses(StudentModule(student, {}), links, trimmed, cfg, nullcontext)
    f = compute_losses(StudentModule(student, {}), links, fixed, cfg, nullcontext)
    torch.testing.assert_close(f.parts, a.parts, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_student_and_teachers_give_the_eager_loss_and_gradients(tiny):
    """torch.compile (inductor, CPU) of the student's and teachers' encoders and heads: same loss
    and gradients as eager, chunked losses included."""
    pytest.importorskip("torch._inductor")
    student, links, b = _setup(tiny, fixed_width=True, rows=4)
    student.eval()  # no dropout: eager and compiled draw their random numbers differently
    cfg = LossConfig(alpha_cos=1.0, ce_scope="all", chunk_rows=40)
    ref, ref_grads = _loss_and_grads(student, links, b, cfg)
    module = StudentModule(student, {})
    module.lm.compile()
    for link in links:
        link.lm.compile()
    from torch._dynamo.utils import counters

    t0 = time.perf_counter()
    torch._dynamo.reset()
    counters.clear()
    student.zero_grad(set_to_none=True)
    out = compute_losses(module, links, b, cfg, nullcontext)
    out.total.backward()
    assert time.perf_counter() - t0 < 120
    # really compiled: one graph for the layers (student and teachers alike), the heads; no graph breaks
    assert counters["stats"]["unique_graphs"] >= 2 and not counters["graph_break"]
    torch.testing.assert_close(out.parts, ref.parts, rtol=1e-4, atol=1e-5)
    for name, p in student.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.slow
def test_strategy_with_compile_and_chunked_losses_trains_the_same_weights(tiny, tmp_path):
    """The recipe switches end to end: `compile: true` and `loss_chunk_rows` (two teachers, one on
    another tokenizer, KL at every token) train the weights a plain run trains (the tiny models
    have no dropout, so both runs are deterministic)."""
    from compresso.models import load_bundle
    from tests.test_distill import make_ctx, small_params

    teachers = {"cased": tiny["cased"], "uncased": tiny["uncased"]}
    common = dict(max_steps=3, checkpoint_every=3, heldout_documents=0, ce_scope="all")
    plain = DistillStrategy(DistillStrategy.Params(**small_params(tiny["corpus"], **common)))
    fast = DistillStrategy(DistillStrategy.Params(**small_params(tiny["corpus"], **common, compile=True,
                                                                 loss_chunk_rows=16)))
    from torch._dynamo.utils import counters

    a = plain.apply(load_bundle(tiny["cased"]), make_ctx(tmp_path, teachers, name="plain")).model.state_dict()
    counters.clear()
    out = fast.apply(load_bundle(tiny["cased"]), make_ctx(tmp_path, teachers, name="fast")).model
    assert counters["stats"]["unique_graphs"] >= 2  # it did compile
    # ... and the student leaves as a plain model: later stages trace, quantize or prune it
    assert all(m._compiled_call_impl is None for m in out.modules())
    b = out.state_dict()
    moved = False
    initial = load_bundle(tiny["cased"]).model.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
        moved |= k in initial and a[k].shape == initial[k].shape and not torch.equal(a[k], initial[k])
    assert moved  # it trained


def test_compile_auto_means_cuda_only():
    import torch

    from compresso.strategies.distill import DistillStrategy
    from compresso.strategies.distill.strategy import compiles_on

    assert DistillStrategy.Params.model_fields["compile"].default == "auto"
    assert compiles_on("auto", torch.device("cuda")) and not compiles_on("auto", torch.device("cpu"))
    assert compiles_on(True, torch.device("cpu")) and not compiles_on(False, torch.device("cuda"))


def test_a_machine_where_compile_fails_gets_a_clear_error(tiny, tmp_path):
    """No working C++ compiler for inductor (a real case on slim images): the stage stops with a message
    that names `compile: false`, not a backend traceback."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    from compresso.models import load_bundle
    from compresso.strategy import StrategyError
    from tests.test_distill import make_ctx, small_params

    params = DistillStrategy.Params(**small_params(tiny["corpus"], max_steps=2, checkpoint_every=2,
                                                   heldout_documents=0, compile=True))
    torch._dynamo.reset()
    # inductor's own patch (restores its config exactly; pytest's monkeypatch would delete the keys)
    with inductor_config.patch({"fx_graph_cache": False, "cpp.cxx": ("compresso-no-such-compiler",)}):
        with pytest.raises(StrategyError, match="set `compile: false`"):
            DistillStrategy(params).apply(load_bundle(tiny["cased"]),
                                          make_ctx(tmp_path, {"cased": tiny["cased"]}, name="nocxx"))
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("scope,unmapped_mass,chunk", [("masked", "other", None), ("all", "renormalise", None),
                                                       ("all", "other", 16)])
def test_compiled_loss_pieces_give_the_unfused_loss_and_gradients(tiny, scope, unmapped_mass, chunk):
    """``LossConfig.compile`` (the soft-target KL with the push-forward, the teachers' log-probs,
    word pooling and the hidden-state losses under torch.compile) against the same losses unfused,
    eager: the same values and gradients, a teacher on the student's tokenizer and one on another,
    over batches of different row counts without one recompilation per batch."""
    pytest.importorskip("torch._inductor")
    from torch._dynamo.utils import counters

    student, links, _ = _setup(tiny, fixed_width=True)
    student.eval()  # no dropout: eager and compiled draw their random numbers differently
    base = dict(alpha_cos=1.0, alpha_mse=0.5, ce_scope=scope, unmapped_mass=unmapped_mass, chunk_rows=chunk)
    for link in links:  # an intermediate layer too: MSE of token states and of pooled states
        link.layer_map = {1: 2}
    torch._dynamo.reset()
    counters.clear()
    for rows in (6, 4, 5):
        _, _, b = _setup(tiny, fixed_width=True, rows=rows)
        ref, ref_grads = _loss_and_grads(student, links, b, LossConfig(**base))
        got, got_grads = _loss_and_grads(student, links, b, LossConfig(**base, compile=True))
        assert ref.parts[0] > 0.01 and ref.parts[3] > 0  # KL and MSE really present
        torch.testing.assert_close(got.parts, ref.parts, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.total, ref.total, rtol=1e-5, atol=1e-6)
        assert set(got_grads) == set(ref_grads)
        for name, g in ref_grads.items():
            torch.testing.assert_close(got_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    assert counters["stats"]["unique_graphs"] >= 3 and not counters["graph_break"]
    # compiled once per piece and grad mode, not once per batch size
    assert counters["stats"]["unique_graphs"] <= 12, dict(counters["stats"])
