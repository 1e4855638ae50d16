"""INT8 post-training quantization of BERT-family encoders for x86 CPUs.

Two methods (see docs/quantization.md for measurements and the reasons behind each choice):

* ``static`` (default): Intel Neural Compressor's PT2E flow. The model is exported with
  ``torch.export`` (batch and sequence length dynamic), observers are inserted by INC's
  ``StaticQuantConfig`` (X86InductorQuantizer: int8 per-channel symmetric weights, uint8 per-tensor
  activations), calibrated on a text sample, converted to a quantize/dequantize graph and compiled
  by inductor with ``freezing`` on, which folds the q/dq pairs into oneDNN int8 linear kernels.
* ``dynamic``: torchao's ``Int8DynamicActivationInt8WeightConfig`` (int8 per-channel weights,
  activations quantized per token at run time), compiled the same way. It needs no calibration.
  INC's own ``DynamicQuantConfig`` is not used: without a calibration pass it returns all-zero
  logits, and compiled with dynamic shapes it was slower than fp32 here.

Every Linear layer is quantized except those matched by ``exclude`` (default: the task
classifier). The word-embedding table is stored as int8 with one scale per row (``embeddings:
int8``); the lookup itself runs on the de-quantized table.

After quantizing, the result is compared with the fp32 model on held-back text and the stage fails
when the outputs are degenerate (not finite, constant, or too far from fp32), so that a broken
backend cannot pass silently.

ONNX: ``export_onnx(bundle, path)`` writes the static graph as a QDQ ONNX model.

Saved form: ``model.safetensors`` with int8 weights + fp32 scales (and the static method's observer
statistics), ``config.json``, the tokenizer, ``quantize.json`` and ``compresso.json``. Loading
rebuilds the fp32 graph from the config, puts the de-quantized weights back, re-creates the
quantized graph from the stored scales (no calibration data needed; nothing is unpickled) and
compiles it again on the first call. The outputs are the same as those of the model ``apply``
returned.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import inspect
import json
import logging
import platform
import random
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from compresso.strategy import (
    BUNDLE_META,
    CompressionStrategy,
    InputPath,
    ModelBundle,
    RunContext,
    StrategyError,
    StrategyParams,
    write_json,
)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
QUANT_META = "quantize.json"
SCALE_SUFFIX = ":scale"
OBSERVER_PREFIX = "observer:"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
QUANT_EXTRA = "pip install 'compresso[quant]' (neural-compressor-pt, which brings torchao)"


# ---------------------------------------------------------------------------------------------
# Parameters


class CalibrationParams(StrategyParams):
    corpus: list[InputPath] = Field(
        default_factory=list,
        description="Text files, one document per line (.txt, .gz, .xz, .bz2). Default: the corpus of the "
                    "distillation stage that made the input model (from its lineage).")
    dataset: str | None = Field(None, description="Instead of `corpus`: a Hugging Face dataset id, streamed.")
    dataset_config: str | None = None
    dataset_split: str = "train"
    text_field: str = "text"
    num_samples: int = Field(512, ge=1, description="Documents used to calibrate activation ranges (static).")
    check_samples: int = Field(32, ge=1, description="Further documents on which the INT8 model is compared "
                                                     "with the fp32 model after quantizing.")
    max_length: int = Field(128, ge=8, description="Tokens per document (truncated).")
    batch_size: int = Field(16, ge=1)
    scan_documents: int = Field(20000, ge=1, description="Samples are drawn (seeded) from the corpus's first N "
                                                         "documents.")

    @model_validator(mode="after")
    def _one_source(self):
        if self.corpus and self.dataset:
            raise ValueError("give calibration text as either `corpus` (text files) or `dataset` (a hub "
                             "dataset id), not both")
        return self


class QuantizeParams(StrategyParams):
    method: Literal["static", "dynamic"] = Field(
        "static", description="static: INC PT2E with calibrated activation ranges (fastest). dynamic: torchao, "
                              "activation scales computed per token at run time (no calibration).")
    calibration: CalibrationParams = Field(default_factory=CalibrationParams)
    exclude: list[str] = Field(
        default_factory=lambda: ["classifier"],
        description="Modules kept in fp32, by name relative to the model (glob patterns; a pattern also "
                    "covers the module's children), e.g. [classifier, 'bert.encoder.layer.0.*'].")
    embeddings: Literal["int8", "fp32"] = Field(
        "int8", description="Storage of the word-embedding table: int8 with a scale per row, or fp32.")
    activation_observer: Literal["minmax", "kl"] = Field(
        "minmax", description="static only: how activation ranges are taken from the calibration data "
                              "(minmax: moving-average min/max; kl: histogram, minimising the L2 error).")
    compile: bool = Field(
        True, description="Compile with torch.compile (inductor, freezing) so that int8 kernels run. false "
                          "keeps the quantize/dequantize graph uncompiled: same numbers, no speed-up.")
    max_relative_error: float = Field(
        0.5, gt=0, description="Fail when the INT8 outputs differ from fp32 by more than this (relative L2 "
                               "error of centred logits on the check documents).")


# ---------------------------------------------------------------------------------------------
# Backends, model checks, calibration text


def _require_backend(method: str) -> None:
    modules = ["torchao.quantization"] + (["neural_compressor.torch.quantization"] if method == "static" else [])
    for name in modules:
        try:
            with _quiet_backends():
                importlib.import_module(name)
        except Exception as exc:  # ImportError, or a broken install failing inside the package
            raise StrategyError(
                f"quantize (method {method}) needs {name.split('.')[0]}, which cannot be imported "
                f"({type(exc).__name__}: {exc}). Install the optional backend: {QUANT_EXTRA}. Do not install "
                f"the plain `neural-compressor` package next to it.") from exc


def _check_platform(compile_: bool) -> None:
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "x64"):
        raise StrategyError(f"quantize makes INT8 models for x86-64 CPUs (oneDNN int8 kernels); this machine is "
                            f"{platform.machine()}. Quantize on an x86-64 machine.")
    if compile_ and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise StrategyError("compile: true needs a C++ compiler (g++ or clang++) for torch.compile's CPU backend; "
                            "install one, or set compile: false (same INT8 numbers, no speed-up)")


@contextlib.contextmanager
def _quiet_backends():
    """INC logs every pass at INFO and some at WARNING ('please compile it'); keep runs readable."""
    logger = logging.getLogger("neural_compressor")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _forward_inputs(model: torch.nn.Module) -> list[str]:
    params = inspect.signature(model.forward).parameters
    return [n for n in INPUT_NAMES if n in params]


def check_model(bundle: ModelBundle) -> list[str]:
    """Refuse what cannot be quantized here, before any work. Returns the model's input names."""
    from transformers import PreTrainedModel

    model = bundle.model
    if bundle.format == "quantize":
        raise StrategyError("the input model is already INT8-quantized; quantize its fp32 input instead")
    if bundle.format not in ("transformers", "prune"):
        raise StrategyError(f"quantize takes models in the transformers or prune formats; the input has format "
                            f"{bundle.format!r}")
    if not isinstance(model, PreTrainedModel):
        raise StrategyError(f"quantize works on transformers encoder models; got {type(model).__name__}")
    config = model.config
    generates = getattr(model, "can_generate", lambda: False)()
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False) or generates:
        raise StrategyError(f"{type(model).__name__} is not an encoder-only model; quantize supports BERT-family "
                            f"encoders (masked-LM, sequence and token classification heads)")
    names = _forward_inputs(model)
    if names[:2] != ["input_ids", "attention_mask"]:
        raise StrategyError(f"{type(model).__name__}.forward does not take input_ids and attention_mask; quantize "
                            f"supports BERT-family encoders")
    return names


def _lineage_corpus(lineage: list[dict]) -> dict | None:
    """The text source of the latest distillation stage in the model's history."""
    for record in reversed(lineage or []):
        params = record.get("params") or {}
        if record.get("strategy") == "distill" and (params.get("corpus") or params.get("dataset")):
            return params
    return None


def calibration_source(params: QuantizeParams, lineage: list[dict], ctx: RunContext):
    """A ``compresso.corpus.Corpus`` for calibration, or None when neither params nor lineage name one."""
    from compresso.corpus import Corpus, CorpusError

    cal = params.calibration
    src: dict[str, Any] | None
    if cal.corpus or cal.dataset:
        src = {"corpus": cal.corpus, "dataset": cal.dataset, "dataset_config": cal.dataset_config,
               "dataset_split": cal.dataset_split, "text_field": cal.text_field}
    else:
        src = _lineage_corpus(lineage)
    if src is None:
        return None
    try:
        if src.get("corpus"):
            return Corpus(files=tuple(ctx.resolve_path(p) for p in src["corpus"]))
        return Corpus(dataset=src["dataset"], dataset_config=src.get("dataset_config"),
                      split=src.get("dataset_split", "train"), text_field=src.get("text_field", "text"))
    except CorpusError as exc:
        raise StrategyError(f"calibration text: {exc}") from None


def sample_documents(source, count: int, scan: int, seed: int) -> list[str]:
    """``count`` documents drawn without replacement (seeded) from the first ``scan`` of ``source``."""
    from compresso.corpus import CorpusError, iter_documents

    rng = random.Random(seed)
    reservoir: list[str] = []
    try:
        for i, text in enumerate(iter_documents(source, part="all")):
            if i >= max(scan, count):
                break
            if len(reservoir) < count:
                reservoir.append(text)
            else:
                j = rng.randint(0, i)
                if j < count:
                    reservoir[j] = text
    except CorpusError as exc:
        raise StrategyError(f"calibration text: {exc}") from None
    return reservoir


def _batches(tokenizer, texts: list[str], input_names: list[str], max_length: int, batch_size: int):
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt")
        if "token_type_ids" in input_names and "token_type_ids" not in enc:
            enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
        yield {k: enc[k] for k in input_names}


def _random_batches(vocab_size: int, input_names: list[str], count: int, length: int, seed: int):
    """Stand-in check inputs for the dynamic method when no text is named anywhere."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (count, length), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    return [{k: batch[k] for k in input_names}]


# ---------------------------------------------------------------------------------------------
# The runnable INT8 model


class _Positional(torch.nn.Module):
    """The model as a function of positional input tensors returning one tensor (what torch.export
    and the compiled graph take)."""

    def __init__(self, model: torch.nn.Module, input_names: list[str], output_key: str):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output_key = output_key

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        out = self.model(**{n: given[n] for n in self.input_names}, return_dict=True)
        return out[self.output_key]


def _output_spec(model: torch.nn.Module, batch: dict) -> tuple[str, str]:
    with torch.no_grad():
        out = model(**batch, return_dict=True)
    key = "logits" if "logits" in out else "last_hidden_state"
    if key not in out:
        raise StrategyError(f"{type(model).__name__} returns neither logits nor last_hidden_state; quantize supports "
                            f"BERT-family encoders with masked-LM, classification or no head")
    return key, type(out).__name__


class QuantizedModel(torch.nn.Module):
    """An inference-only INT8 model, called like the fp32 one (keyword inputs, output with ``.logits``
    or ``.last_hidden_state``). Any batch size and sequence length; CPU only."""

    def __init__(self, graph: torch.nn.Module, config, input_names: list[str], output_key: str,
                 output_class: str, method: str, compile: bool = True):
        super().__init__()
        self.graph = graph
        self.config = config
        self.input_names = list(input_names)
        self.output_key = output_key
        self.output_class = output_class
        self.method = method
        self.compiled = compile
        # dynamic=True: one graph for all shapes (batch 1 gets its own); without it every new
        # (batch, length) pair recompiles, which evaluation with length-sorted batches would pay for.
        self._run = torch.compile(graph, dynamic=True) if compile else graph
        self.training = False

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None, **unused):
        """``labels`` is accepted and ignored (inference only: no loss)."""
        if input_ids.device.type != "cpu":
            raise RuntimeError(f"this INT8 model runs on x86 CPUs only; inputs are on {input_ids.device}")
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if given["attention_mask"] is None:
            given["attention_mask"] = torch.ones_like(input_ids)
        if given["token_type_ids"] is None:
            given["token_type_ids"] = torch.zeros_like(input_ids)
        args = [given[n] for n in self.input_names]
        # freezing lets inductor fold weight quantization into prepacked oneDNN int8 kernels; patched
        # per call (not set globally) because compilation happens lazily, at the first call of a shape.
        patch = torch._inductor.config.patch(freezing=True) if self.compiled else contextlib.nullcontext()
        with torch.no_grad(), patch, warnings.catch_warnings():
            # compile-time chatter of inductor's oneDNN lowering and of dynamo about transformers' globals
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            warnings.filterwarnings("ignore", message="While compiling, we found certain side effects")
            out = self._run(*args)
        return _make_output(self.output_class, self.output_key, out)

    def keep_for_saving(self, fp32, observers, observer_state, quantized, excluded, params, embedding_int8):
        """What ``save`` needs besides the graph; set without registering fp32 as a submodule."""
        for key, value in dict(_fp32=fp32, _observers=observers, _observer_state=observer_state,
                               _quantized=quantized, _excluded=excluded, _params=params,
                               _embedding_int8=embedding_int8, _check=None).items():
            object.__setattr__(self, key, value)

    def _apply(self, fn, recurse=True):
        # .to(), .cuda(), .half() ... all end here: only "stay an fp32-interface CPU model" is allowed.
        try:
            probe = fn(torch.zeros(()))
            ok = probe.device.type == "cpu" and probe.dtype == torch.float32
            where = f"{probe.device} / {probe.dtype}"
        except (RuntimeError, AssertionError) as exc:  # e.g. torch built without CUDA
            ok, where = False, f"another device ({exc})"
        if not ok:
            raise RuntimeError(f"this INT8 model runs on x86 CPUs in its own precision only; it cannot be moved to "
                               f"{where}. Serve it on a CPU, or use the fp32 model on a GPU.")
        return self

    def train(self, mode: bool = True):
        self.training = False  # no training mode for an INT8 graph (exported graphs refuse train/eval)
        return self


def _make_output(class_name: str, key: str, tensor: torch.Tensor):
    import transformers.modeling_outputs as outputs

    cls = getattr(outputs, class_name, None)
    if cls is None:
        cls = outputs.SequenceClassifierOutput if key == "logits" else outputs.BaseModelOutput
    return cls(**{key: tensor})


# ---------------------------------------------------------------------------------------------
# Quantization steps


def _excluded(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in patterns)


def linear_names(model: torch.nn.Module, patterns: list[str]) -> tuple[list[str], list[str]]:
    """(quantized, excluded) names of the model's Linear layers.

    A Linear whose weight *is* the word-embedding table (a tied masked-LM decoder) is always kept
    out of the int8 graph: the table is stored int8 anyway, and with the tied weight quantized in the
    graph a model reloaded in a fresh process ran about 100x slower (measured, torch 2.13)."""
    emb = _word_embedding(model)
    quantized, excluded = [], []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            tied = emb is not None and module.weight is emb.weight
            (excluded if tied or _excluded(name, patterns) else quantized).append(name)
    return quantized, excluded


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one fp32 scale per row (the layout of per-channel Linear weights)."""
    amax = weight.detach().abs().amax(dim=1).float()
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.clamp(torch.round(weight.detach().float() / scale[:, None]), -127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.reshape(-1, *([1] * (q.dim() - 1)))


def _word_embedding(model: torch.nn.Module) -> torch.nn.Embedding | None:
    try:
        emb = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        return None
    return emb if isinstance(emb, torch.nn.Embedding) else None


def _param_name(model: torch.nn.Module, tensor: torch.Tensor) -> str | None:
    for name, p in model.named_parameters(remove_duplicate=False):
        if p is tensor:
            return name
    return None


def _dynamic_shapes(input_names: list[str], max_length: int):
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=2, max=max_length)
    return {n: {0: batch, 1: seq} for n in input_names}


def _static_config(full_names: list[str], observer: str):
    from neural_compressor.torch.quantization import StaticQuantConfig

    config = StaticQuantConfig(act_algo=observer)
    for name in full_names:
        config.set_local(name, StaticQuantConfig(w_dtype="fp32", act_dtype="fp32"))
    return config


def _export_prepared(model: torch.nn.Module, input_names: list[str], output_key: str, excluded: list[str],
                     observer: str):
    """Export → INC prepare: the graph with observers, ready for calibration."""
    from neural_compressor.torch.export import export
    from neural_compressor.torch.quantization import prepare

    wrapper = _Positional(model, input_names, output_key).eval()
    max_len = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    # A fixed example (not the caller's batch) so that apply and load trace the very same graph.
    args = tuple(torch.ones(2, 16, dtype=torch.long) for _ in input_names)
    try:
        with _quiet_backends(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="While compiling, we found certain side effects")
            exported = export(wrapper, args, dynamic_shapes=_dynamic_shapes(input_names, max_len))
    except RuntimeError as exc:  # INC logs torch.export's reason at ERROR level and raises this
        raise StrategyError(f"torch.export could not trace {type(model).__name__} ({exc}); quantize supports "
                            f"BERT-family encoders that torch.export captures with dynamic batch and length") from None
    with _quiet_backends():
        prepared = prepare(exported, _static_config([f"model.{n}" for n in excluded], observer))
    return prepared


def _observers(prepared: torch.nn.Module) -> dict[str, str]:
    """Observer module name → what it watches (a weight's name, or the op whose output it sees)."""
    found = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module" and str(node.target).startswith("activation_post_process"):
            arg = node.args[0]
            found[str(node.target)] = (f"weight:{arg.target}" if arg.op == "get_attr"
                                       else f"{arg.op}:{getattr(arg.target, '__name__', str(arg.target))}")
    return found


def _observer_state(prepared: torch.nn.Module, names) -> dict[str, torch.Tensor]:
    state = prepared.state_dict()
    return {k: v.detach().clone() for k, v in state.items() if k.split(".")[0] in names}


def _convert(prepared: torch.nn.Module) -> torch.nn.Module:
    from neural_compressor.torch.quantization import convert

    with _quiet_backends():
        return convert(prepared)


def _torchao_quantize(model: torch.nn.Module, quantized: list[str]) -> None:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    wanted = set(quantized)
    with _quiet_backends():
        quantize_(model, Int8DynamicActivationInt8WeightConfig(),
                  filter_fn=lambda module, fqn: isinstance(module, torch.nn.Linear) and fqn in wanted)


# ---------------------------------------------------------------------------------------------
# Checking the result against fp32


def compare_outputs(reference: list[torch.Tensor], quantized: list[torch.Tensor],
                    masks: list[torch.Tensor | None]) -> dict[str, float]:
    """Relative L2 error of centred outputs, argmax agreement, and whether the outputs are usable."""
    ref_rows, q_rows = [], []
    for r, q, m in zip(reference, quantized, masks):
        if r.dim() == 3 and m is not None:  # token-level: only real tokens
            keep = m.bool()
            r, q = r[keep], q[keep]
        ref_rows.append(r.reshape(-1, r.shape[-1]).float())
        q_rows.append(q.reshape(-1, q.shape[-1]).float())
    r, q = torch.cat(ref_rows), torch.cat(q_rows)
    finite = bool(torch.isfinite(q).all())
    # Centre each row (logits are shift-invariant); a single output (regression) is centred over rows.
    dim = 0 if r.shape[-1] == 1 else -1
    rc = r - r.mean(dim, keepdim=True)
    qc = q - q.mean(dim, keepdim=True)
    denom = rc.norm().clamp_min(1e-12)
    rel = float((qc - rc).norm() / denom) if finite else float("inf")
    return {"relative_error": rel, "argmax_agreement": float((r.argmax(-1) == q.argmax(-1)).float().mean()),
            "finite": finite, "constant": bool(qc.abs().max() == 0) if finite else False,
            "positions": int(r.shape[0])}


def _run_outputs(fn, batches: list[dict]) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for batch in batches:
            out = fn(**batch)
            outs.append((out.logits if hasattr(out, "logits") and out.logits is not None
                         else out.last_hidden_state).detach())
    return outs


# ---------------------------------------------------------------------------------------------
# The strategy


class QuantizeStrategy(CompressionStrategy):
    name = "quantize"
    summary = "INT8 post-training quantization for x86 CPUs (INC static PTQ or torchao dynamic)"
    Params = QuantizeParams
    reapply_after_finetune = True
    params: QuantizeParams

    def preflight(self, ctx: RunContext) -> None:
        _require_backend(self.params.method)
        _check_platform(self.params.compile)

    def apply(self, bundle: ModelBundle, ctx: RunContext) -> ModelBundle:
        p = self.params
        _require_backend(p.method)
        _check_platform(p.compile)
        input_names = check_model(bundle)
        if ctx.device.type != "cpu":
            ctx.log(f"[yellow]quantize runs on the CPU: the INT8 model is for x86 CPUs (recipe device "
                    f"{ctx.device})[/yellow]")
        source = calibration_source(p, bundle.lineage, ctx)
        if source is None and p.method == "static":
            raise StrategyError(
                "static quantization needs calibration text: set params.calibration.corpus (text files, one "
                "document per line) or params.calibration.dataset, or quantize a model made by a distill "
                "stage (its corpus is the default); method: dynamic needs none")
        model = bundle.model
        fp32 = _copy_fp32(model)
        quantized, excluded = linear_names(fp32, p.exclude)
        if not quantized:
            raise StrategyError(f"exclude {p.exclude} leaves no Linear layer to quantize in {type(model).__name__}")
        tokenizer = bundle.tokenizer
        max_length = min(p.calibration.max_length, int(getattr(fp32.config, "max_position_embeddings", 512)))
        cal = p.calibration
        need_cal = cal.num_samples if p.method == "static" else 0
        if source is not None:
            ctx.log(f"calibration text: {source.describe()}")
            docs = sample_documents(source, need_cal + cal.check_samples, cal.scan_documents, ctx.seed)
            if len(docs) < need_cal + 1:
                raise StrategyError(f"calibration text ({source.describe()}) has {len(docs)} documents; "
                                    f"num_samples {need_cal} plus at least one check document are needed")
            calib_docs = docs[:need_cal] if need_cal else []
            check_docs = docs[need_cal:] or docs[-1:]
            check = list(_batches(tokenizer, check_docs, input_names, max_length, cal.batch_size))
        else:
            calib_docs = []
            check = _random_batches(fp32.config.vocab_size, input_names, cal.check_samples, min(64, max_length),
                                    ctx.seed)
            ctx.log("[yellow]no text named for the dynamic method's check: comparing with fp32 on random token "
                    "ids[/yellow]")
        output_key, output_class = _output_spec(fp32, check[0])
        reference = _run_outputs(fp32, check)

        embedding_int8 = None
        if p.embeddings == "int8" and (emb := _word_embedding(fp32)) is not None:
            embedding_int8 = (_param_name(fp32, emb.weight), *int8_rows(emb.weight.data))
            emb.weight.data = dequantize_rows(*embedding_int8[1:])
        if p.method == "static":
            graph, observers, state = self._static(fp32, input_names, output_key, excluded, calib_docs, tokenizer,
                                                   max_length, ctx)
        else:
            _torchao_quantize(fp32, quantized)
            graph, observers, state = _Positional(fp32, input_names, output_key).eval(), {}, {}
        qmodel = QuantizedModel(graph, fp32.config, input_names, output_key, output_class, p.method, p.compile)
        qmodel.keep_for_saving(fp32, observers, state, quantized, excluded, p.model_dump(mode="json"), embedding_int8)

        ctx.log(f"checking INT8 against fp32 on {sum(len(b['input_ids']) for b in check)} documents"
                + (" (compiling first)" if p.compile else ""))
        result = compare_outputs(reference, _run_outputs(qmodel, check), [b["attention_mask"] for b in check])
        object.__setattr__(qmodel, "_check", result)
        ctx.metrics.update({"method": p.method, "quantized_linear": len(quantized), "excluded_linear": excluded,
                            "calibration": source.describe() if source is not None else None,
                            "calibration_documents": len(calib_docs), "check": result})
        ensure_sane(result, p.max_relative_error)
        ctx.log(f"INT8 vs fp32: relative error {result['relative_error']:.4f}, argmax agreement "
                f"{result['argmax_agreement']:.4f} over {result['positions']} outputs")
        return ModelBundle(model=qmodel, tokenizer=tokenizer, lineage=list(bundle.lineage), format=self.name)

    def _static(self, fp32, input_names, output_key, excluded, calib_docs, tokenizer, max_length, ctx):
        p = self.params
        prepared = _export_prepared(fp32, input_names, output_key, excluded, p.activation_observer)
        observers = _observers(prepared)
        batches = list(_batches(tokenizer, calib_docs, input_names, max_length, p.calibration.batch_size))
        with ctx.progress() as progress, torch.no_grad():
            task = progress.add_task("calibrating", total=len(batches))
            for batch in batches:
                prepared(*[batch[n] for n in input_names])
                progress.advance(task)
        state = _observer_state(prepared, observers)
        return _convert(prepared), observers, state

    # --- persistence ------------------------------------------------------------------------

    @classmethod
    def save(cls, bundle: ModelBundle, path: Path) -> None:
        from safetensors.torch import save_file

        qmodel = bundle.model
        if not isinstance(qmodel, QuantizedModel) or not hasattr(qmodel, "_fp32"):
            raise StrategyError("quantize.save takes the bundle that quantize.apply (or load) returned")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = _int8_state(qmodel)
        save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "compresso-int8",
                                                               "method": qmodel.method})
        qmodel.config.save_pretrained(path)
        # A pruned model's per-layer shapes (which its config cannot describe) go beside it.
        from compresso.strategies.prune import write_layout_if_pruned

        write_layout_if_pruned(qmodel._fp32, path)
        if bundle.tokenizer is not None:
            bundle.tokenizer.save_pretrained(path)
        write_json(path / QUANT_META, {
            "format_version": FORMAT_VERSION, "method": qmodel.method, "architecture": type(qmodel._fp32).__name__,
            "input_names": qmodel.input_names, "output_key": qmodel.output_key,
            "output_class": qmodel.output_class, "quantized_linear": qmodel._quantized,
            "excluded_linear": qmodel._excluded,
            "embedding_int8": qmodel._embedding_int8[0] if qmodel._embedding_int8 else None, "observers": qmodel._observers, "params": qmodel._params,
            "check": getattr(qmodel, "_check", None), "versions": _versions(),
        })
        write_json(path / BUNDLE_META, {**bundle.meta(), "format": cls.name})

    @classmethod
    def load(cls, path: Path, model_class: type | None = None, **model_kwargs) -> ModelBundle:
        """Rebuild the INT8 model saved by ``save``. ``compile=False`` skips torch.compile."""
        from safetensors import safe_open
        from transformers import AutoConfig, AutoTokenizer

        import transformers

        path = Path(path)
        compile_override = model_kwargs.pop("compile", None)
        meta_path = path / QUANT_META
        if not meta_path.is_file() or not (path / WEIGHTS_FILE).is_file():
            raise StrategyError(f"{path} has format 'quantize' in {BUNDLE_META} but lacks {QUANT_META} or "
                                f"{WEIGHTS_FILE}")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise StrategyError(f"{meta_path}: format_version {meta.get('format_version')!r} is not {FORMAT_VERSION}"
                                f"; written by another compresso version")
        arch = getattr(transformers, meta["architecture"], None)
        if arch is None:
            raise StrategyError(f"{meta_path}: {meta['architecture']!r} is not a transformers class")
        if model_class is not None and model_class is not arch and not (
                getattr(model_class, "__name__", "").startswith("Auto") and _auto_gives(model_class, arch, path)):
            raise StrategyError(f"{path} is an INT8 {meta['architecture']}; it cannot be loaded under another head "
                                f"({getattr(model_class, '__name__', model_class)}). Fine-tune its fp32 input and "
                                f"quantize again.")
        if model_kwargs:
            raise StrategyError(f"an INT8 model is loaded as saved; unexpected settings {sorted(model_kwargs)}")
        params = QuantizeParams.model_validate(meta["params"])
        _require_backend(params.method)
        compile_ = params.compile if compile_override is None else bool(compile_override)
        _check_platform(compile_)

        config = AutoConfig.from_pretrained(path)
        fp32 = arch._from_config(config, attn_implementation="sdpa", dtype=torch.float32) \
            if hasattr(arch, "_from_config") else arch(config)
        fp32.eval().requires_grad_(False)  # as in apply: inference graphs, weights inductor can freeze
        from compresso.strategies.prune import apply_saved_layout

        apply_saved_layout(fp32, path)  # pruned shapes, when the model was pruned before quantizing
        tensors = {}
        with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
        skip = {f"{n}.weight" for n in meta["quantized_linear"]} if params.method == "dynamic" else set()
        _load_fp32_state(fp32, tensors, path, skip)
        input_names, output_key = meta["input_names"], meta["output_key"]
        quantized, excluded = meta["quantized_linear"], meta["excluded_linear"]
        if params.method == "static":
            prepared = _export_prepared(fp32, input_names, output_key, excluded, params.activation_observer)
            observers = _observers(prepared)
            if observers != meta["observers"]:
                raise StrategyError(f"{path}: the quantized graph rebuilt here differs from the saved one (saved "
                                    f"with {meta.get('versions')}, this is {_versions()}); quantize the fp32 "
                                    f"model again with these versions")
            state = {k[len(OBSERVER_PREFIX):]: v for k, v in tensors.items() if k.startswith(OBSERVER_PREFIX)}
            missing = prepared.load_state_dict(state, strict=False)
            unexpected = list(missing.unexpected_keys)
            if unexpected:
                raise StrategyError(f"{path}: observer statistics {unexpected[:3]} do not fit the rebuilt graph")
            graph = _convert(prepared)
        else:
            _torchao_quantize(fp32, quantized)
            for name in quantized:
                weight = fp32.get_submodule(name).weight
                weight.qdata.copy_(tensors[f"{name}.weight"])
                weight.scale.copy_(tensors[f"{name}.weight{SCALE_SUFFIX}"].reshape(weight.scale.shape))
            graph, observers, state = _Positional(fp32, input_names, output_key).eval(), {}, {}
        qmodel = QuantizedModel(graph, config, input_names, output_key, meta["output_class"], params.method, compile_)
        emb_name = meta.get("embedding_int8")
        embedding_int8 = (emb_name, tensors[emb_name], tensors[emb_name + SCALE_SUFFIX]) if emb_name else None
        qmodel.keep_for_saving(fp32, meta["observers"], state, quantized, excluded, meta["params"], embedding_int8)
        object.__setattr__(qmodel, "_check", meta.get("check"))
        tokenizer = AutoTokenizer.from_pretrained(path)
        bundle_meta = json.loads((path / BUNDLE_META).read_text()) if (path / BUNDLE_META).is_file() else {}
        return ModelBundle(model=qmodel, tokenizer=tokenizer, lineage=bundle_meta.get("lineage", []),
                           format=cls.name)


def ensure_sane(result: dict, max_relative_error: float) -> None:
    """Raise when the INT8 outputs are unusable (the guard against silently broken backends)."""
    if not result["finite"]:
        raise StrategyError("the INT8 model produced NaN or infinite outputs on the check documents")
    if result["constant"]:
        raise StrategyError("the INT8 model's outputs are constant (e.g. all zeros) on the check documents: the "
                            "quantized graph is broken (an uncalibrated backend does this)")
    if result["relative_error"] > max_relative_error:
        raise StrategyError(f"the INT8 outputs differ from fp32 by a relative error of {result['relative_error']:.3f}"
                            f" (limit max_relative_error {max_relative_error}); argmax agreement "
                            f"{result['argmax_agreement']:.3f}. Exclude sensitive layers (exclude: [...]), use "
                            f"more calibration text, or try method: dynamic")


def _auto_gives(auto_class, arch, path: Path) -> bool:
    """Whether ``auto_class`` (e.g. AutoModelForSequenceClassification) maps this config to ``arch``."""
    from transformers import AutoConfig

    try:
        mapping = auto_class._model_mapping
        return mapping[type(AutoConfig.from_pretrained(path))] is arch
    except Exception:  # an auto class without a mapping for this config
        return False


def _copy_fp32(model: torch.nn.Module) -> torch.nn.Module:
    """A detached fp32 CPU copy: the input bundle stays usable (evaluation reuses it)."""
    import copy

    clone = copy.deepcopy(model).to("cpu").float().eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def _int8_state(qmodel: QuantizedModel) -> dict[str, torch.Tensor]:
    """What goes into model.safetensors: int8 + per-row scales for quantized weights and the
    embedding table, fp32 for the rest, observer statistics for the static graph; tied tensors once.

    static: the de-quantized weights are loaded back and the rebuilt graph re-quantizes them with the
    saved observer scales, which gives the same int8 values. dynamic: the int8 data and scales go
    straight back into torchao's Int8Tensors.
    """
    fp32 = qmodel._fp32
    int8: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if qmodel.method == "static":
        int8.update(_static_weight_int8(qmodel))
    else:
        for name in qmodel._quantized:
            w = fp32.get_submodule(name).weight
            int8[f"{name}.weight"] = (w.qdata.detach(), w.scale.detach().reshape(-1).float())
    if qmodel._embedding_int8:
        # The table itself; a tied MLM decoder is re-quantized from it by the graph, as in apply.
        name, q, scale = qmodel._embedding_int8
        int8[name] = (q, scale)
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in fp32.state_dict().items():
        plain = not hasattr(value, "qdata")  # torchao Int8Tensors hold their own int8 storage
        ptr = value.untyped_storage().data_ptr() if plain and value.numel() else None
        if ptr is not None and ptr in seen:
            int8.pop(key, None)
            continue  # tied to an earlier tensor (e.g. the MLM decoder and the word embeddings)
        if ptr is not None:
            seen.add(ptr)
        if key in int8:
            q, scale = int8.pop(key)
            out[key] = q.contiguous().clone()
            out[key + SCALE_SUFFIX] = scale.float().contiguous().clone()
        else:
            out[key] = value.detach().contiguous().clone()
    if int8:
        raise StrategyError(f"internal: quantized weights {sorted(int8)[:3]} are not in the model's state")
    for key, value in qmodel._observer_state.items():
        out[OBSERVER_PREFIX + key] = value.contiguous().clone()
    return out


def _static_weight_int8(qmodel: QuantizedModel) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Weight name (in the fp32 model) → (int8 values, per-channel scales), computed by the very
    quantize op and qparams of the converted graph, so that de-quantizing and re-quantizing on load
    gives the same int8 values."""
    graph = qmodel.graph
    found = {}
    for node in graph.graph.nodes:
        if node.op != "call_function" or "quantize_per_channel" not in str(node.target) \
                or "dequantize" in str(node.target):
            continue
        weight, scale, zero = node.args[:3]
        if getattr(weight, "op", None) != "get_attr" or not str(weight.target).startswith("model."):
            continue
        w = graph.get_parameter(weight.target) if _has_param(graph, weight.target) else getattr_path(graph, weight.target)
        scale_t, zero_t = getattr_path(graph, scale.target), getattr_path(graph, zero.target)
        if bool((zero_t != 0).any()):
            raise StrategyError("internal: expected symmetric per-channel weights (zero points 0)")
        q = node.target(w.detach(), scale_t, zero_t, *node.args[3:])
        found[str(weight.target)[len("model."):]] = (q, scale_t.float())
    return found


def _has_param(module: torch.nn.Module, target: str) -> bool:
    try:
        module.get_parameter(target)
        return True
    except AttributeError:
        return False


def getattr_path(module: torch.nn.Module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module


def _load_fp32_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path,
                     skip: set[str]) -> None:
    """Load the saved tensors into a freshly built fp32 model, int8 ones de-quantized. ``skip``:
    keys written back later (torchao Int8Tensors), which must not overwrite a tied tensor here."""
    state = {}
    for key, value in tensors.items():
        if key.startswith(OBSERVER_PREFIX) or key.endswith(SCALE_SUFFIX) or key in skip:
            continue
        if value.dtype == torch.int8 and key + SCALE_SUFFIX in tensors:
            value = dequantize_rows(value, tensors[key + SCALE_SUFFIX])
        state[key] = value
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise StrategyError(f"{path / WEIGHTS_FILE}: tensors {result.unexpected_keys[:3]} do not belong to "
                            f"{type(model).__name__}")
    model.tie_weights()
    current = model.state_dict()
    loaded = {current[k].untyped_storage().data_ptr() for k in state}
    untied = [k for k in result.missing_keys if k not in skip and current[k].untyped_storage().data_ptr() not in loaded]
    if untied:
        raise StrategyError(f"{path / WEIGHTS_FILE} lacks {untied[:3]} for {type(model).__name__}")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__}
    for dist in ("neural-compressor-pt", "torchao", "transformers"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def export_onnx(bundle: ModelBundle, path: str | Path) -> Path:
    """Write the static INT8 graph as an ONNX QDQ model (QuantizeLinear/DequantizeLinear around
    each MatMul), with dynamic batch and length; ONNX Runtime runs it with int8 kernels.

    Needs the ``onnx`` and ``onnxscript`` packages (not compresso dependencies). The file keeps fp32
    weights with their QuantizeLinear nodes, so it is about fp32-sized; the safetensors folder is
    the small artefact.
    """
    model = bundle.model
    if not isinstance(model, QuantizedModel):
        raise StrategyError("export_onnx takes a bundle made or loaded by the quantize strategy")
    if model.method != "static":
        raise StrategyError("ONNX export is supported for method: static (a QDQ graph); torchao's dynamic "
                            "int8 tensors do not export to ONNX")
    for package in ("onnx", "onnxscript"):
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise StrategyError(f"ONNX export needs the {package!r} package: pip install onnx onnxscript") from exc
    path = Path(path)
    names = model.input_names
    example = tuple(torch.ones(2, 16, dtype=torch.long) for _ in names)
    max_len = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    shapes = tuple({0: torch.export.Dim("batch", min=1, max=4096), 1: torch.export.Dim("seq", min=2, max=max_len)}
                   for _ in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model.graph, example, dynamo=True, dynamic_shapes=shapes,
                                    input_names=list(names), output_names=[model.output_key])
    program.save(str(path))
    return path
