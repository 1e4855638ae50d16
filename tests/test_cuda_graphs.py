"""Encoder passes replayed from CUDA graphs: the teachers' inference pass (``teacher_cuda_graphs``)
and the student's training pass, forward and backward (``student_cuda_graphs``). Each gives the
plain pass's hidden states (and gradients), batch after batch; both are off by default and refused
off CUDA. The CUDA tests run where a GPU is (the device runs them before its benchmarks); CI has
none."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM

from compresso.strategies.distill.modeling import MaskedLM
from compresso.strategies.distill.strategy import graphs_on, student_graphs_on
from compresso.strategy import StrategyError
from tests.test_distill import tiny  # noqa: F401  (a fixture)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def test_off_by_default_and_refused_off_cuda():
    from compresso.strategies.distill import DistillStrategy

    assert DistillStrategy.Params.model_fields["teacher_cuda_graphs"].default is False
    assert graphs_on(True, torch.device("cuda")) and not graphs_on(False, torch.device("cuda"))
    assert not graphs_on(False, torch.device("cpu"))
    with pytest.raises(StrategyError, match="teacher_cuda_graphs: true needs a CUDA device"):
        graphs_on(True, torch.device("cpu"))


def test_graphs_stay_out_of_the_way_off_cuda_and_outside_inference_mode(tiny):
    model = AutoModelForMaskedLM.from_pretrained(tiny["cased"]).eval()
    lm = MaskedLM(model)
    lm.use_cuda_graphs()
    ids = torch.randint(5, 100, (2, 16))
    with torch.inference_mode():
        last, _, _ = lm.encode(ids, None)
    assert not lm._graphs.graphs  # CPU tensors: the plain pass
    torch.testing.assert_close(last, MaskedLM(model)._encode(ids, None, False)[0])


@cuda
@pytest.mark.parametrize("all_hidden", [False, True])
def test_replayed_pass_equals_the_plain_pass(tiny, all_hidden):
    model = AutoModelForMaskedLM.from_pretrained(tiny["cased"]).cuda().eval().requires_grad_(False)
    plain, graphed = MaskedLM(model), MaskedLM(model)
    graphed.use_cuda_graphs(max_graphs=2)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for step in range(4):
            ids = torch.randint(5, 100, (3, 16), generator=gen).cuda()
            attention = None
            if step == 2:  # a padded batch: the same graph (unpadded rows get an all-true mask)
                attention = torch.ones(3, 16, dtype=torch.long, device="cuda")
                attention[1, 10:] = 0
            want = plain.encode(ids, attention, all_hidden)
            got = graphed.encode(ids, attention, all_hidden)
            torch.testing.assert_close(got[0], want[0])
            if all_hidden:
                for a, b in zip(got[1], want[1]):
                    torch.testing.assert_close(a, b)
        assert len(graphed._graphs.graphs) == 1
        ids = torch.randint(5, 100, (5, 16), generator=gen).cuda()  # another shape: another graph
        torch.testing.assert_close(graphed.encode(ids, None, all_hidden)[0], plain.encode(ids, None, all_hidden)[0])
        assert len(graphed._graphs.graphs) == 2
        # past max_graphs a new shape runs the plain pass
        ids = torch.randint(5, 100, (6, 16), generator=gen).cuda()
        torch.testing.assert_close(graphed.encode(ids, None, all_hidden)[0], plain.encode(ids, None, all_hidden)[0])
        assert len(graphed._graphs.graphs) == 2


@cuda
def test_losses_with_graphed_teachers_equal_the_plain_ones(tiny):
    """A step's losses, a teacher on the student's tokenizer and one on another, with both
    teachers' passes replayed from graphs, two batches in a row (the second replays)."""
    from contextlib import nullcontext

    from compresso.strategies.distill.losses import LossConfig, compute_losses
    from compresso.strategies.distill.modeling import StudentModule
    from tests.test_distill_fast import _setup

    dev = torch.device("cuda")
    student, links, _ = _setup(tiny, fixed_width=True)
    student.to(dev).eval()
    for link in links:
        link.lm.model.to(dev).requires_grad_(False)
        link.to(dev)
    cfg = LossConfig(alpha_cos=1.0, ce_scope="all")
    module = StudentModule(student, {})
    graphs = []
    for link in links:
        link.lm.use_cuda_graphs()
        graphs.append(link.lm._graphs)
    for rows in (6, 6):
        _, _, b = _setup(tiny, fixed_width=True, rows=rows)
        b = b.to(dev)
        for link in links:
            link.lm._graphs = None
        want = compute_losses(module, links, b, cfg, nullcontext).parts
        for link, g in zip(links, graphs):
            link.lm._graphs = g
        got = compute_losses(module, links, b, cfg, nullcontext).parts
        torch.testing.assert_close(got, want)
    assert all(len(g.graphs) == 1 for g in graphs)  # captured once, replayed for the second batch


def test_student_graphs_off_by_default_refused_off_cuda_and_with_several_processes():
    from compresso.strategies.distill import DistillStrategy

    assert DistillStrategy.Params.model_fields["student_cuda_graphs"].default is False
    assert student_graphs_on(True, torch.device("cuda"), 1)
    with pytest.raises(StrategyError, match="student_cuda_graphs: true needs a CUDA device"):
        student_graphs_on(True, torch.device("cpu"), 1)
    with pytest.raises(StrategyError, match="runs in one process, this stage has 2"):
        student_graphs_on(True, torch.device("cuda"), 2)


def test_training_graphs_stay_out_of_the_way_off_cuda_and_in_evaluation(tiny):
    model = AutoModelForMaskedLM.from_pretrained(tiny["cased"]).train()
    lm = MaskedLM(model)
    lm.use_training_graphs()
    ids = torch.randint(5, 100, (2, 16))
    lm.encode(ids, None)[0].sum().backward()
    assert not lm._train_graphs.graphs  # CPU tensors: the plain pass
    lm.drop_graphs()
    assert lm._train_graphs is None and lm._graphs is None


def _dropout_free(tiny):
    return AutoModelForMaskedLM.from_pretrained(tiny["cased"], hidden_dropout_prob=0.0,
                                                attention_probs_dropout_prob=0.0).cuda().train()


def _weighted_sum(hidden, weights):
    return sum((h * w).sum() for h, w in zip(hidden, weights))


@cuda
def test_replayed_training_pass_gives_the_plain_outputs_and_gradients(tiny):
    model = _dropout_free(tiny)
    plain, graphed = MaskedLM(model), MaskedLM(model)
    graphed.use_training_graphs(max_graphs=2)
    params = [p for p in model.base_model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    for step in range(4):
        ids = torch.randint(5, 100, (3, 16), generator=gen).cuda()
        attention = None
        if step >= 2:  # padded batches: the same pair of graphs (unpadded rows get an all-true mask)
            attention = torch.ones(3, 16, dtype=torch.long, device="cuda")
            attention[1, 10 + step:] = 0
        weights = [torch.randn(3, 16, model.config.hidden_size, generator=gen).cuda()
                   for _ in range(model.config.num_hidden_layers + 1)]
        want_last, want_hidden, _ = plain.encode(ids, attention, True)
        want = torch.autograd.grad(_weighted_sum(want_hidden, weights), params, allow_unused=True)
        got_last, got_hidden, _ = graphed.encode(ids, attention, True)
        got = torch.autograd.grad(_weighted_sum(got_hidden, weights), params, allow_unused=True)
        torch.testing.assert_close(got_last, want_last)
        for a, b in zip(got_hidden, want_hidden):
            torch.testing.assert_close(a, b)
        for a, b in zip(got, want):  # the embedding's backward adds atomically: order varies
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert len(graphed._train_graphs.graphs) == 1
    with torch.no_grad():  # evaluation runs the plain pass
        torch.testing.assert_close(graphed.encode(ids, None)[0], plain.encode(ids, None)[0])
    assert len(graphed._train_graphs.graphs) == 1


@cuda
def test_gradients_accumulate_across_replays(tiny):
    """Two micro-batches' backward passes into ``.grad``: the sum of the plain ones (a gradient
    handed over in place would be overwritten by the second replay)."""
    model = _dropout_free(tiny)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(5, 100, (3, 16), generator=gen).cuda() for _ in range(2)]
    params = [p for p in model.base_model.parameters() if p.requires_grad]

    def accumulated(lm):
        model.zero_grad(set_to_none=True)
        for ids in batches:
            lm.encode(ids, None)[0].square().mean().backward()
        return [p.grad.clone() for p in params]

    want = accumulated(MaskedLM(model))
    graphed = MaskedLM(model)
    graphed.use_training_graphs()
    for _ in range(2):  # the first round captures, the second replays
        got = accumulated(graphed)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@cuda
def test_dropout_draws_afresh_on_every_replay(tiny):
    model = AutoModelForMaskedLM.from_pretrained(tiny["cased"], hidden_dropout_prob=0.3).cuda().train()
    lm = MaskedLM(model)
    lm.use_training_graphs()
    ids = torch.randint(5, 100, (3, 16)).cuda()
    first = lm.encode(ids, None)[0].detach().clone()
    second = lm.encode(ids, None)[0].detach().clone()
    third = lm.encode(ids, None)[0].detach().clone()
    assert not torch.equal(first, second) and not torch.equal(second, third)


@cuda
def test_captured_passes_use_a_fused_attention_kernel(tiny):
    """Rows without padding (no mask given): the captured teacher and student passes must not need
    SDPA's math kernel (transformers builds a stride-0 all-ones mask under capture, which only the
    math kernel takes; ``encode`` gives a real mask instead)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    ids = torch.randint(5, 100, (4, 32)).cuda()
    teacher = MaskedLM(AutoModelForMaskedLM.from_pretrained(tiny["cased"]).cuda().eval().requires_grad_(False))
    teacher.use_cuda_graphs()
    student = MaskedLM(_dropout_free(tiny))
    student.use_training_graphs()
    with sdpa_kernel(fused), torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
        for _ in range(2):  # capture, then replay
            with torch.inference_mode():
                teacher.encode(ids, None)
            student.encode(ids, None)[0].float().sum().backward()
    assert len(teacher._graphs.graphs) == 1 and len(student._train_graphs.graphs) == 1
