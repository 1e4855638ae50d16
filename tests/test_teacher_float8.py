"""Float8 teachers (``teacher_float8``): refused where float8 matmuls do not exist; where they do,
the teachers' encoder layers run through torchao's float8 linear layers, their heads stay bf16,
and their outputs stay close to the bf16 teacher's, plain, compiled and replayed from CUDA graphs.
The CUDA tests need a GPU of compute capability 8.9+ (the device runs them before its
benchmarks); CI has none."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import AutoModelForMaskedLM

from compresso.models import load_bundle
from compresso.strategies.distill import DistillStrategy
from compresso.strategies.distill.modeling import MaskedLM
from compresso.strategies.distill.strategy import float8_on
from compresso.strategy import StrategyError
from tests.test_distill import make_ctx, small_params, tiny  # noqa: F401  (tiny is a fixture)

float8_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)),
    reason="float8 matmuls need a CUDA GPU of compute capability 8.9+")


def test_off_by_default_and_refused_off_cuda(tiny, tmp_path):
    assert DistillStrategy.Params.model_fields["teacher_float8"].default is False
    assert not float8_on(False, torch.device("cpu"))
    with pytest.raises(StrategyError, match="teacher_float8: true needs a CUDA GPU of compute capability 8.9"):
        float8_on(True, torch.device("cpu"))
    # the strategy refuses before it trains or writes anything
    ctx = make_ctx(tmp_path, {"t": tiny["cased"]})
    params = DistillStrategy.Params(**small_params(tiny["corpus"], teacher_float8=True))
    with pytest.raises(StrategyError, match="set teacher_float8 to false"):
        DistillStrategy(params).apply(load_bundle(tiny["cased"]), ctx)
    assert not any(ctx.stage_dir.iterdir())


def test_float8_is_part_of_the_run_fingerprint(tiny):
    """Float8 teachers give other soft targets: a checkpoint made with them must not resume a bf16
    run (speed-only settings such as compile may differ)."""
    from compresso.strategies.distill.strategy import resumable_params

    def params(**kw):
        return resumable_params(DistillStrategy.Params(corpus=[str(tiny["corpus"])], **kw))

    assert params(teacher_float8=True) != params()
    assert params(compile=False, teacher_cuda_graphs=True) == params()


def _teacher(tiny) -> nn.Module:
    return AutoModelForMaskedLM.from_pretrained(tiny["cased"]).cuda().to(torch.bfloat16).eval().requires_grad_(False)


@float8_gpu
def test_encoder_layers_run_in_float8_and_stay_close(tiny):
    from torchao.quantization import Float8Tensor

    bf16, f8 = MaskedLM(_teacher(tiny)), MaskedLM(_teacher(tiny))
    assert f8.to_float8() == (6 * 4, 6 * 4)  # q, k, v, attention output, intermediate, output: 4 layers
    layer = f8.model.bert.encoder.layer[0]
    assert isinstance(layer.intermediate.dense.weight, Float8Tensor)
    assert not isinstance(f8.model.cls.predictions.decoder.weight, Float8Tensor)  # the head stays bf16
    ids = torch.randint(5, 100, (8, 32), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.inference_mode():
        want = bf16.encode(ids, None)[0].float()
        got = f8.encode(ids, None)[0].float()
        cos = torch.nn.functional.cosine_similarity(got, want, dim=-1)
        assert cos.min() > 0.98, cos.min()
        assert not torch.equal(got, want)  # it did run another kernel
        # compiled and replayed from CUDA graphs: the same float8 pass
        f8.compile()
        torch.testing.assert_close(f8.encode(ids, None)[0].float(), got, atol=0.05, rtol=0.05)
        f8.uncompile()
        f8.use_cuda_graphs()
        for _ in range(2):  # capture, then replay
            torch.testing.assert_close(f8.encode(ids, None)[0].float(), got, atol=0.05, rtol=0.05)
        assert len(f8._graphs.graphs) == 1


@float8_gpu
def test_a_distill_run_with_float8_teachers_on_cuda(tiny, tmp_path):
    """Both tokenizers, compiled, end to end: the run logs the converted layers and trains."""
    ctx = make_ctx(tmp_path, {"a": tiny["cased"], "b": tiny["uncased"]})
    ctx.device = torch.device("cuda")
    logged = []
    ctx.log = logged.append
    params = DistillStrategy.Params(**small_params(tiny["corpus"], teacher_float8=True, max_steps=4, num_layers=2))
    out = DistillStrategy(params).apply(load_bundle(tiny["cased"]), ctx)
    assert any("teacher a: 24 of 24 linear layers" in m and "float8" in m for m in logged), logged
    report = json.loads((ctx.stage_dir / "distill.json").read_text())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in report["loss_curve"])
    assert out.model.config.num_hidden_layers == 2


@float8_gpu
@pytest.mark.parametrize("name", ["ro-bert-small-cased", "ro-robert-small-uncased"])
def test_float8_romanian_teacher_keeps_its_predictions(shared_dir, name):
    """A real teacher on real Romanian text (the corpus's first 256 documents, 15 % of the tokens
    masked, about 1,500 positions): float8 keeps its top-1 prediction at nearly every masked
    position (benchmarks/teacher_float8.py measured 0.965 and 0.969 on 8,000 positions; three
    hand-written sentences, about 25 positions, were too few to test a rate)."""
    import lzma

    from transformers import AutoTokenizer

    path = shared_dir / "teachers" / name
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForMaskedLM.from_pretrained(path).cuda().to(torch.bfloat16).eval().requires_grad_(False)
    with lzma.open(shared_dir / "corpus" / "ro-corpus-00.txt.xz", "rt", encoding="utf-8") as f:
        lines = [line.strip() for _, line in zip(range(256), f) if line.strip()]
    enc = tok(lines, truncation=True, max_length=64, padding=True, return_tensors="pt")
    ids, att = enc["input_ids"], enc["attention_mask"]
    pick = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.15) & att.bool() \
        & ~torch.isin(ids, torch.tensor(tok.all_special_ids))
    ids, att, pick = ids.masked_fill(pick, tok.mask_token_id).cuda(), att.cuda(), pick.cuda()
    lm = MaskedLM(model)
    with torch.inference_mode():
        want = lm.model(input_ids=ids, attention_mask=att).logits[pick].float()
        lm.to_float8()
        got = lm.model(input_ids=ids, attention_mask=att).logits[pick].float()
    assert pick.sum() > 1000
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    assert agree >= 0.93, agree
