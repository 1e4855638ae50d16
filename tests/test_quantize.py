"""The INT8 ``quantize`` strategy: accuracy against fp32, save/load, size, task heads, errors.

Most tests run the quantize/dequantize graph uncompiled (``compile: false``, the same INT8
numbers); one compiles it with inductor and checks that the int8 kernels give the same outputs.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from pydantic import ValidationError
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    GPT2Config,
    GPT2LMHeadModel,
)

from compresso import registry
from compresso.models import ModelLoadError, load_bundle, save_bundle
from compresso.strategy import ModelBundle, RunContext, StrategyError, StrategyParams
from compresso.strategies import quantize as q
from compresso.strategies.quantize import cpu
from compresso.strategies.quantize.backends import BACKENDS, available, base
from compresso.strategies.quantize.checks import platform as checks_platform
from compresso.strategies.quantize import QuantizedModel, QuantizeParams, QuantizeStrategy
from tests.tiny import WORDS, tiny_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning",
                                        "ignore::FutureWarning")


@pytest.fixture(autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30))) + " ." for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "calibration.txt"
    path.write_text("\n".join(sentences(400, seed=1)) + "\n")
    return path


def config(tokenizer, layers=2, **extra):
    return BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, **extra)


def make(cls, tokenizer, seed=0, **extra):
    torch.manual_seed(seed)
    return cls(config(tokenizer, **extra)).eval()


def ctx_for(tmp_path, seed=0):
    stage, work = tmp_path / "stage", tmp_path / "work"
    stage.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    return RunContext(stage_dir=stage, work_dir=work, device=torch.device("cpu"), seed=seed, teachers={},
                      base_dir=tmp_path)


def quantize(model, tokenizer, tmp_path, lineage=None, **params):
    params.setdefault("compile", False)
    # the torch backends unless a test names one (auto's choice depends on the CPU)
    params.setdefault("backend", "torchao" if params.get("method") == "dynamic" else "inc")
    strategy = QuantizeStrategy(QuantizeParams.model_validate(params))
    ctx = ctx_for(tmp_path)
    out = strategy.apply(ModelBundle(model, tokenizer, lineage=lineage or []), ctx)
    return out, ctx


def batch(tokenizer, texts):
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def logits(model, enc):
    with torch.no_grad():
        return model(**enc).logits


def cal(corpus, **extra):
    return {"corpus": [str(corpus)], "num_samples": 64, "check_samples": 16, **extra}


# --- parameters and registration ------------------------------------------------------------

def test_registered_with_its_contract():
    cls = registry.get("quantize")
    assert cls is QuantizeStrategy
    assert cls.reapply_after_finetune is True
    assert issubclass(cls.Params, StrategyParams)
    assert cls.accepts_formats == {"transformers", "prune"} and cls(cls.Params()).output_format("prune") == "quantize"


@pytest.mark.parametrize("params, message", [
    ({"method": "weird"}, "method"),
    ({"backend": "tensorrt"}, "backend"),
    ({"backend": "inc", "method": "dynamic"}, "no method 'dynamic'"),
    ({"backend": "torchao", "method": "static"}, "no method 'static'"),
    ({"calibraton": {}}, "calibraton"),
    ({"calibration": {"corpus": ["/nonexistent/corpus.txt"]}}, "does not exist"),
    ({"calibration": {"corpus": ["/dev/null"], "dataset": "x/y"}}, "not both"),
    ({"calibration": {"num_samples": 0}}, "num_samples"),
    ({"max_relative_error": 0}, "max_relative_error"),
])
def test_params_are_validated(params, message):
    with pytest.raises(ValidationError, match=message):
        QuantizeParams.model_validate(params)


# --- accuracy, round trip, size --------------------------------------------------------------

def test_static_int8_is_close_to_fp32_saves_small_and_reloads_identically(tokenizer, corpus, tmp_path):
    model = make(BertForMaskedLM, tokenizer)
    enc = batch(tokenizer, sentences(8, seed=7))
    reference = logits(model, enc)
    out, ctx = quantize(model, tokenizer, tmp_path, calibration=cal(corpus))
    assert out.format == "quantize" and isinstance(out.model, QuantizedModel)
    assert ctx.metrics["calibration_documents"] == 64
    check = ctx.metrics["check"]
    assert check["relative_error"] < 0.1 and check["argmax_agreement"] > 0.9, check
    int8 = logits(out.model, enc)
    keep = enc["attention_mask"].bool()
    agreement = (int8.argmax(-1)[keep] == reference.argmax(-1)[keep]).float().mean()
    assert agreement > 0.9
    assert not torch.equal(int8, reference)  # it really is quantized
    assert torch.equal(logits(model, enc), reference)  # the input model is left as it was

    QuantizeStrategy.save(out, tmp_path / "int8")
    save_bundle(ModelBundle(model, tokenizer), tmp_path / "fp32")
    int8_bytes = (tmp_path / "int8" / "model.int8.safetensors").stat().st_size
    fp32_bytes = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    assert int8_bytes < 0.6 * fp32_bytes  # int8 weights and embeddings; LayerNorms and biases stay fp32
    assert json.loads((tmp_path / "int8" / "compresso.json").read_text())["format"] == "quantize"
    meta = json.loads((tmp_path / "int8" / "quantize.json").read_text())
    assert meta["method"] == "static" and meta["backend"] == "inc" and meta["architecture"] == "BertForMaskedLM"

    loaded = load_bundle(tmp_path / "int8")  # dispatches on compresso.json to QuantizeStrategy.load
    assert loaded.format == "quantize" and isinstance(loaded.model, QuantizedModel)
    torch.testing.assert_close(logits(loaded.model, enc), int8, rtol=0, atol=1e-6)
    # and what was loaded saves to the same bytes' worth again
    QuantizeStrategy.save(loaded, tmp_path / "again")
    assert (tmp_path / "again" / "model.int8.safetensors").stat().st_size == int8_bytes


def test_safetensors_holds_int8_weights_with_scales(tokenizer, corpus, tmp_path):
    from safetensors import safe_open

    model = make(BertForSequenceClassification, tokenizer, num_labels=3)
    out, _ = quantize(model, tokenizer, tmp_path, calibration=cal(corpus),
                      exclude=["classifier", "bert.encoder.layer.0.*"])
    QuantizeStrategy.save(out, tmp_path / "int8")
    with safe_open(str(tmp_path / "int8" / "model.int8.safetensors"), framework="pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes["bert.encoder.layer.1.attention.self.query.weight"] == "I8"
    assert dtypes["bert.encoder.layer.1.attention.self.query.weight:scale"] == "F32"
    assert dtypes["bert.embeddings.word_embeddings.weight"] == "I8"
    assert dtypes["bert.encoder.layer.0.attention.self.query.weight"] == "F32"  # excluded
    assert dtypes["classifier.weight"] == "F32"  # excluded by default
    assert dtypes["bert.encoder.layer.1.output.LayerNorm.weight"] == "F32"
    assert any(k.startswith("observer:") for k in dtypes)
    meta = json.loads((tmp_path / "int8" / "quantize.json").read_text())
    assert "classifier" in meta["excluded_linear"]
    assert "bert.encoder.layer.0.output.dense" in meta["excluded_linear"]
    assert "bert.encoder.layer.1.output.dense" in meta["quantized_linear"]


def test_embeddings_can_stay_fp32(tokenizer, corpus, tmp_path):
    from safetensors import safe_open

    out, _ = quantize(make(BertForSequenceClassification, tokenizer), tokenizer, tmp_path, calibration=cal(corpus),
                      embeddings="fp32")
    QuantizeStrategy.save(out, tmp_path / "int8")
    with safe_open(str(tmp_path / "int8" / "model.int8.safetensors"), framework="pt") as f:
        assert f.get_slice("bert.embeddings.word_embeddings.weight").get_dtype() == "F32"


def test_dynamic_needs_no_calibration_and_round_trips(tokenizer, tmp_path):
    model = make(BertForSequenceClassification, tokenizer, num_labels=3)
    enc = batch(tokenizer, sentences(5, seed=3))
    out, ctx = quantize(model, tokenizer, tmp_path, method="dynamic")
    assert ctx.metrics["calibration"] is None and ctx.metrics["check"]["relative_error"] < 0.1
    int8 = logits(out.model, enc)
    assert int8.shape == (5, 3)
    assert (int8.argmax(-1) == logits(model, enc).argmax(-1)).all()
    QuantizeStrategy.save(out, tmp_path / "int8")
    loaded = load_bundle(tmp_path / "int8")
    torch.testing.assert_close(logits(loaded.model, enc), int8, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls, auto", [(BertForSequenceClassification, AutoModelForSequenceClassification),
                                       (BertForTokenClassification, AutoModelForTokenClassification)])
def test_task_heads_any_batch_and_length(tokenizer, corpus, tmp_path, cls, auto):
    model = make(cls, tokenizer, num_labels=4)
    out, _ = quantize(model, tokenizer, tmp_path, calibration=cal(corpus))
    for texts in (sentences(1, seed=4), sentences(3, seed=5), sentences(6, seed=6)):
        enc = batch(tokenizer, texts)
        got, want = logits(out.model, enc), logits(model, enc)
        assert got.shape == want.shape
        keep = enc["attention_mask"].bool() if got.dim() == 3 else slice(None)
        assert (got.argmax(-1)[keep] == want.argmax(-1)[keep]).float().mean() >= 0.9
    # keyword-less inputs default like transformers (all-ones mask, zero token types)
    ids = batch(tokenizer, sentences(2, seed=8))["input_ids"]
    assert out.model(ids).logits.shape[0] == 2
    QuantizeStrategy.save(out, tmp_path / "int8")
    assert isinstance(load_bundle(tmp_path / "int8", model_class=auto).model, QuantizedModel)
    other = AutoModelForTokenClassification if auto is AutoModelForSequenceClassification \
        else AutoModelForSequenceClassification
    with pytest.raises(ModelLoadError, match="another head"):
        load_bundle(tmp_path / "int8", model_class=other)


def test_calibration_defaults_to_the_distillation_corpus(tokenizer, corpus, tmp_path):
    lineage = [{"source": "x"}, {"stage": "00-distill", "strategy": "distill",
                                 "params": {"corpus": [str(corpus)], "dataset": None}}]
    _, ctx = quantize(make(BertForMaskedLM, tokenizer), tokenizer, tmp_path, lineage=lineage,
                      calibration={"num_samples": 32, "check_samples": 8})
    assert str(corpus) in ctx.metrics["calibration"]
    assert ctx.metrics["calibration_documents"] == 32


def test_compiled_int8_kernels_match_the_reference_graph(tokenizer, corpus, tmp_path):
    model = make(BertForTokenClassification, tokenizer, num_labels=5)
    compiled, _ = quantize(model, tokenizer, tmp_path / "a", calibration=cal(corpus), compile=True)
    QuantizeStrategy.save(compiled, tmp_path / "int8")
    reference = QuantizeStrategy.load(tmp_path / "int8", compile=False).model
    reloaded = load_bundle(tmp_path / "int8").model
    assert compiled.model.compiled and reloaded.compiled and not reference.compiled
    # two batch sizes and lengths, one dynamic-shape graph (batch 1 would compile a graph of its own)
    for texts in (sentences(4, seed=11), sentences(7, seed=13)):
        enc = batch(tokenizer, texts)
        want = logits(reference, enc)
        torch.testing.assert_close(logits(compiled.model, enc), want, rtol=0.02, atol=0.02)
        torch.testing.assert_close(logits(reloaded, enc), logits(compiled.model, enc), rtol=0, atol=1e-5)


def test_query_key_value_products_merge_into_one_with_the_same_numbers(tokenizer, corpus, tmp_path):
    """What inductor compiles for inc: each layer's int8 q/k/v linears as one product and a split."""
    from compresso.strategies.quantize.backends.fusion import concat_shared_input_linears

    model = make(BertForSequenceClassification, tokenizer, num_labels=3)
    # layer 1's value projection stays fp32: only its query and key merge
    out, _ = quantize(model, tokenizer, tmp_path, calibration=cal(corpus),
                      exclude=["classifier", "bert.encoder.layer.1.attention.self.value"])
    graph = out.model.graph
    fused, merged = concat_shared_input_linears(graph)
    assert merged == 2

    def count(g):
        return sum(n.target == torch.ops.aten.linear.default for n in g.graph.nodes)

    assert count(fused) == count(graph) - 3  # 3 → 1 in layer 0, 2 → 1 in layer 1
    assert concat_shared_input_linears(graph)[1] == 2  # the original graph was left as it was
    for texts in (sentences(1, seed=21), sentences(5, seed=22)):
        enc = batch(tokenizer, texts)
        args = [enc[n] for n in out.model.input_names]
        with torch.no_grad():
            torch.testing.assert_close(fused(*args), graph(*args), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["inc", "ort"])
def test_pruned_model_with_irregular_layers_round_trips(tokenizer, corpus, tmp_path, backend):
    from compresso.strategies.prune import PruneParams, PruneStrategy

    _skip_missing(backend)

    model = make(BertForSequenceClassification, tokenizer, num_labels=2, layers=2)
    pruned = PruneStrategy(PruneParams.model_validate({"heads": {"keep": {0: 1}}, "ffn": {"keep": [48, 40]}})) \
        .apply(ModelBundle(model, tokenizer), ctx_for(tmp_path / "p"))
    assert pruned.format == "prune"
    enc = batch(tokenizer, sentences(4, seed=21))
    strategy = QuantizeStrategy(QuantizeParams.model_validate({"backend": backend, "method": "static",
                                                               "calibration": cal(corpus), "compile": False}))
    out = strategy.apply(pruned, ctx_for(tmp_path))
    assert (logits(out.model, enc).argmax(-1) == logits(pruned.model, enc).argmax(-1)).all()
    QuantizeStrategy.save(out, tmp_path / "int8")
    # the torch graph is rebuilt from the config plus the pruned shapes; the ONNX file holds its shapes
    assert (tmp_path / "int8" / "prune_layout.json").is_file() == (backend == "inc")
    loaded = load_bundle(tmp_path / "int8")
    torch.testing.assert_close(logits(loaded.model, enc), logits(out.model, enc), rtol=0, atol=1e-6)


# --- guards and errors -----------------------------------------------------------------------

def test_degenerate_outputs_are_refused():
    ref = [torch.randn(4, 3)]
    zeros = q.compare_outputs(ref, [torch.zeros(4, 3)], [None])
    with pytest.raises(StrategyError, match="constant"):
        q.ensure_sane(zeros, 0.5)
    nan = q.compare_outputs(ref, [torch.full((4, 3), float("nan"))], [None])
    with pytest.raises(StrategyError, match="NaN"):
        q.ensure_sane(nan, 0.5)
    noise = q.compare_outputs(ref, [torch.randn(4, 3)], [None])
    with pytest.raises(StrategyError, match="relative error"):
        q.ensure_sane(noise, 0.5)
    q.ensure_sane(q.compare_outputs(ref, [ref[0] + 1e-3], [None]), 0.5)


def test_static_without_calibration_text_fails_before_work(tokenizer, tmp_path):
    with pytest.raises(StrategyError, match="calibration text"):
        quantize(make(BertForMaskedLM, tokenizer), tokenizer, tmp_path)


def test_missing_backend_names_the_extra(tokenizer, corpus, tmp_path, monkeypatch):
    real = base.importlib.import_module

    def fake_import(name, *args):
        if name.startswith("neural_compressor"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(base.importlib, "import_module", fake_import)
    strategy = QuantizeStrategy(QuantizeParams.model_validate({"backend": "inc", "calibration": cal(corpus)}))
    with pytest.raises(StrategyError, match=r"compresso\[quant\]"):
        strategy.preflight(ctx_for(tmp_path))
    # the dynamic method needs only torchao
    QuantizeStrategy(QuantizeParams(backend="torchao", compile=False)).preflight(ctx_for(tmp_path))
    # auto never picks a backend that is not installed
    backend, _ = QuantizeStrategy(QuantizeParams(method="static")).choose()
    assert backend.name != "inc" and backend.missing() is None


def test_non_x86_machines_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(checks_platform, "machine", lambda: "aarch64")
    with pytest.raises(StrategyError, match="x86-64"):
        QuantizeStrategy(QuantizeParams(method="dynamic")).preflight(ctx_for(tmp_path))


def test_unsupported_models_are_named(tokenizer, corpus, tmp_path):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    with pytest.raises(StrategyError, match="encoder"):
        quantize(gpt2, tokenizer, tmp_path, calibration=cal(corpus))
    with pytest.raises(StrategyError, match="transformers encoder models"):
        quantize(torch.nn.Linear(4, 4), tokenizer, tmp_path, calibration=cal(corpus))
    strategy = QuantizeStrategy(QuantizeParams.model_validate({"backend": "inc", "calibration": cal(corpus)}))
    with pytest.raises(StrategyError, match="format 'vocab_trim'"):
        strategy.apply(ModelBundle(make(BertForMaskedLM, tokenizer), tokenizer, format="vocab_trim"),
                       ctx_for(tmp_path))
    with pytest.raises(StrategyError, match="no Linear layer"):
        quantize(make(BertForMaskedLM, tokenizer), tokenizer, tmp_path, calibration=cal(corpus), exclude=["*"])


def test_quantizing_twice_and_moving_to_gpu_are_refused(tokenizer, corpus, tmp_path):
    out, _ = quantize(make(BertForSequenceClassification, tokenizer), tokenizer, tmp_path, method="dynamic")
    with pytest.raises(StrategyError, match="already INT8"):
        QuantizeStrategy(QuantizeParams(method="dynamic")).apply(out, ctx_for(tmp_path))
    with pytest.raises(RuntimeError, match="x86 CPUs"):
        out.model.to("cuda")
    with pytest.raises(RuntimeError, match="x86 CPUs"):
        out.model.half()
    assert out.model.to("cpu") is out.model and out.model.eval() is out.model


def test_calibration_corpus_too_small(tokenizer, tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("casa mare\n")
    with pytest.raises(StrategyError, match="documents"):
        quantize(make(BertForMaskedLM, tokenizer), tokenizer, tmp_path, calibration={"corpus": [str(small)]})


# --- the fixture teacher on real Romanian text -----------------------------------------------

@pytest.mark.shared
def test_fixture_student_int8_agrees_with_fp32_on_real_text(shared_dir, tmp_path):
    from compresso.strategies.distill.modeling import build_student, default_layers

    teacher = load_bundle(shared_dir / "teachers" / "ro-bert-small-cased")
    student = build_student(teacher.model, default_layers(12, 6)).eval()
    corpus = shared_dir / "corpus" / "ro-corpus-00.txt.xz"
    out, ctx = quantize(student, teacher.tokenizer, tmp_path,
                        calibration={"corpus": [str(corpus)], "num_samples": 32, "check_samples": 12,
                                     "max_length": 64, "scan_documents": 500})
    check = ctx.metrics["check"]
    # masked-LM predictions at every real token of 12 held-back documents
    assert check["positions"] > 400
    assert check["argmax_agreement"] > 0.85 and check["relative_error"] < 0.2, check


def test_onnx_export_runs_in_onnxruntime(tokenizer, corpus, tmp_path):
    pytest.importorskip("onnxscript", reason="ONNX export needs onnx + onnxscript (not compresso dependencies)")
    ort = pytest.importorskip("onnxruntime", reason="running the ONNX model needs onnxruntime")
    out, _ = quantize(make(BertForSequenceClassification, tokenizer, num_labels=3), tokenizer, tmp_path,
                      calibration=cal(corpus))
    onnx_path = q.export_onnx(out, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for texts in (sentences(3, seed=31), sentences(6, seed=32)):
        enc = batch(tokenizer, texts)
        got = session.run(None, {k: v.numpy() for k, v in enc.items()})[0]
        torch.testing.assert_close(torch.from_numpy(got), logits(out.model, enc), rtol=0.05, atol=0.02)


def test_onnx_export_refuses_dynamic(tokenizer, tmp_path):
    out, _ = quantize(make(BertForSequenceClassification, tokenizer), tokenizer, tmp_path, method="dynamic")
    with pytest.raises(StrategyError, match="method: static"):
        q.export_onnx(out, tmp_path / "model.onnx")


# --- backends side by side, auto, fresh-process reload, plain transformers -----------------------

BACKEND_CASES = [("inc", "static"), ("torchao", "dynamic"), ("ort", "static"), ("ort", "dynamic")]


def _skip_missing(backend):
    reason = BACKENDS[backend].missing()
    if reason:
        pytest.skip(f"backend {backend} is not installed here: {reason}")


@pytest.mark.parametrize("backend, method", BACKEND_CASES)
def test_each_backend_matches_fp32_and_reloads(tokenizer, corpus, tmp_path, backend, method, monkeypatch):
    _skip_missing(backend)
    model = make(BertForTokenClassification, tokenizer, num_labels=5)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # nothing may be written into the user's current directory (ORT's shape-inference dumps)
    out, ctx = quantize(model, tokenizer, tmp_path, backend=backend, method=method, calibration=cal(corpus))
    assert list(cwd.iterdir()) == []
    assert ctx.metrics["backend"] == backend and ctx.metrics["method"] == method
    check = ctx.metrics["check"]
    assert check["relative_error"] < 0.1 and check["argmax_agreement"] > 0.9, check
    for texts in (sentences(1, seed=41), sentences(6, seed=42)):  # batch 1 and a padded batch
        enc = batch(tokenizer, texts)
        got, want = logits(out.model, enc), logits(model, enc)
        keep = enc["attention_mask"].bool()
        assert got.shape == want.shape
        assert (got.argmax(-1)[keep] == want.argmax(-1)[keep]).float().mean() > 0.9
        assert not torch.equal(got, want)
    QuantizeStrategy.save(out, tmp_path / "int8")
    meta = json.loads((tmp_path / "int8" / "quantize.json").read_text())
    assert (meta["backend"], meta["method"]) == (backend, method)
    assert (tmp_path / "int8" / meta["weights_file"]).is_file() and not (tmp_path / "int8" / "model.safetensors").exists()
    loaded = load_bundle(tmp_path / "int8")
    enc = batch(tokenizer, sentences(4, seed=43))
    torch.testing.assert_close(logits(loaded.model, enc), logits(out.model, enc), rtol=0, atol=1e-6)


def test_capability_classes_and_auto_choice():
    flags = frozenset({"avx2", "avx512f", "avx512_vnni", "avx_vnni"})
    assert cpu.capability_class(flags, "AVX512", env={}) == "avx512_vnni"
    assert cpu.capability_class(frozenset({"avx2", "avx_vnni"}), "AVX2", env={}) == "avx2_vnni"
    assert cpu.capability_class(frozenset({"avx2"}), "AVX2", env={}) == "avx2"
    assert cpu.capability_class(frozenset({"sse4_2"}), "DEFAULT", env={}) == "other"
    # the emulation variables make an AVX-512 VNNI machine an AVX2 one (what torch/oneDNN then use)
    assert cpu.capability_class(flags, "AVX2", env={"ATEN_CPU_CAPABILITY": "avx2"}) == "avx2"
    assert cpu.capability_class(flags, "AVX512", env={"ONEDNN_MAX_CPU_ISA": "AVX2"}) == "avx2"
    assert set(cpu.AUTO_CHOICE) == {"avx512_vnni", "avx2_vnni", "avx2", "other"}
    # auto takes the table's choice when it is installed, else the next installed one offering the method
    preferred, _ = cpu.AUTO_CHOICE[cpu.capability_class()]
    assert cpu.auto_backend(None, lambda name: True)[0] == preferred
    only_torchao = cpu.auto_backend(None, lambda name: name == "torchao")
    assert only_torchao == ("torchao", "dynamic")
    assert cpu.auto_backend("static", lambda name: name == "ort") == ("ort", "static")


def test_auto_picks_a_backend_installed_here(tokenizer, tmp_path):
    strategy = QuantizeStrategy(QuantizeParams(method="dynamic", compile=False))
    backend, method = strategy.choose()
    assert available(backend.name) and method == "dynamic"
    out, ctx = quantize(make(BertForSequenceClassification, tokenizer), tokenizer, tmp_path, backend="auto",
                        method="dynamic")
    assert ctx.metrics["backend"] == backend.name and out.model.backend == backend.name


FRESH_PROCESS = """
import sys, torch
from compresso.models import load_bundle
torch.set_num_threads(1)
for folder in sys.argv[2:]:
    bundle = load_bundle(folder)
    enc = torch.load(sys.argv[1], weights_only=True)
    with torch.no_grad():
        torch.save(bundle.model(**enc).logits, folder + "/fresh_logits.pt")
"""


def test_saved_int8_gives_the_same_logits_in_a_fresh_process(tokenizer, corpus, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    folders = []
    enc = batch(tokenizer, sentences(5, seed=51))
    torch.save(enc, tmp_path / "enc.pt")
    cases = [("inc", "static"), ("ort", "dynamic")]
    expected = {}
    for backend, method in cases:
        if BACKENDS[backend].missing():
            continue
        out, _ = quantize(make(BertForSequenceClassification, tokenizer, num_labels=3), tokenizer,
                          tmp_path / backend, backend=backend, method=method, calibration=cal(corpus))
        folder = tmp_path / f"{backend}-int8"
        QuantizeStrategy.save(out, folder)
        folders.append(str(folder))
        expected[str(folder)] = logits(out.model, enc)
    if not folders:
        pytest.skip("neither inc nor ort is installed")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "enc.pt"), *folders], check=True, env=env,
                   cwd=tmp_path, timeout=600)
    for folder in folders:
        fresh = torch.load(Path(folder) / "fresh_logits.pt", weights_only=True)
        torch.testing.assert_close(fresh, expected[folder], rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend, method", [("inc", "static"), ("ort", "dynamic")])
def test_plain_transformers_refuses_an_int8_folder(tokenizer, corpus, tmp_path, backend, method):
    from transformers import AutoModelForMaskedLM

    _skip_missing(backend)
    out, _ = quantize(make(BertForMaskedLM, tokenizer), tokenizer, tmp_path, backend=backend, method=method,
                      calibration=cal(corpus))
    QuantizeStrategy.save(out, tmp_path / "int8")
    with pytest.raises(OSError, match="model.safetensors|pytorch_model.bin"):
        AutoModelForMaskedLM.from_pretrained(tmp_path / "int8")
    note = (tmp_path / "int8" / "HOW_TO_LOAD.md").read_text()
    assert "compresso.load" in note and json.loads((tmp_path / "int8" / "config.json").read_text())[
        "compresso_quantize"]["backend"] == backend


def test_ort_folder_runs_in_plain_onnxruntime(tokenizer, corpus, tmp_path):
    _skip_missing("ort")
    import onnxruntime as ort
    from transformers import AutoTokenizer

    out, _ = quantize(make(BertForSequenceClassification, tokenizer, num_labels=3), tokenizer, tmp_path,
                      backend="ort", method="static", calibration=cal(corpus))
    QuantizeStrategy.save(out, tmp_path / "int8")
    plain_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "int8")
    session = ort.InferenceSession(str(tmp_path / "int8" / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    texts = sentences(3, seed=61)
    enc = plain_tokenizer(texts, padding=True, return_tensors="np")
    got = session.run(None, {i.name: enc[i.name] for i in session.get_inputs()})[0]
    torch.testing.assert_close(torch.from_numpy(got), logits(out.model, batch(tokenizer, texts)), rtol=0, atol=1e-5)
