"""``ort``: ONNX Runtime INT8, static (QDQ, calibrated) or dynamic (per-tensor activation scales at
run time), on a graph with BERT's attention, GELU and LayerNorms fused.

Steps: the fp32 model (attention in its eager form, which the fusion recognises) is exported with
the TorchScript-based ``torch.onnx.export`` (dynamic batch and length); ONNX Runtime's transformer
optimizer fuses embeddings + LayerNorm, each layer's attention, bias + GELU and residual +
LayerNorm into single kernels (so that what remains outside int8 matrix products is a few fused
ops; ``dynamic`` only: static QDQ quantization leaves fused attention in fp32, so ``static``
quantizes the plain graph, whose LayerNorms and GELUs ONNX Runtime fuses when the session starts);
``onnxruntime.quantization`` then quantizes the weights per channel (int8) and the activations (uint8; ``reduce_range`` 7-bit weights on CPUs without VNNI, where the AVX2 u8×s8
instruction can saturate). The result is one self-contained ``model.int8.onnx`` that plain
onnxruntime runs with the tokenizer saved beside it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch

from compresso.strategies.quantize.backends.base import Backend, Job, errors_only
from compresso.strategies.quantize.modeling import OrtModel, Positional
from compresso.strategy import StrategyError

OPSET = 17


class OrtBackend(Backend):
    name = "ort"
    methods = ("static", "dynamic")
    modules = ("onnxruntime", "onnxruntime.quantization", "onnx")
    weights_file = "model.int8.onnx"

    def quantize(self, job: Job, compile: bool) -> OrtModel:
        from compresso.strategies.quantize import cpu

        reduce_range = not cpu.has_vnni()
        with tempfile.TemporaryDirectory(prefix="compresso-ort-") as tmp:
            tmp = Path(tmp).resolve()
            with _working_dir(tmp):
                # static QDQ leaves fused Attention nodes in fp32: it quantizes the plain graph, whose LayerNorm and
                # GELU ONNX Runtime fuses when the session starts; dynamic has int8 kernels for the fused ops.
                fused = export_fused(job.fp32, job.input_names, job.output_key, tmp, fuse=job.method == "dynamic")
                excluded_nodes = onnx_nodes_of(fused, job.excluded)
                out = tmp / "int8.onnx"
                _quantize(fused, out, job, excluded_nodes, reduce_range)
                onnx_bytes = out.read_bytes()
        qmodel = OrtModel(onnx_bytes, job.fp32.config, job.input_names, job.output_key, job.output_class,
                          job.method)
        qmodel.saved.update(quantized=job.quantized, excluded=job.excluded, reduce_range=reduce_range,
                            excluded_nodes=excluded_nodes)
        return qmodel

    def save(self, qmodel: OrtModel, path: Path) -> dict:
        (path / self.weights_file).write_bytes(qmodel.onnx_bytes)
        return {"onnx_file": self.weights_file, "reduce_range": qmodel.saved.get("reduce_range"),
                "onnx_inputs": qmodel.session_inputs, "onnx_output": qmodel.output_key}

    def load(self, path: Path, meta: dict, config, compile: bool) -> OrtModel:
        onnx_path = path / meta.get("weights_file", self.weights_file)
        qmodel = OrtModel(onnx_path.read_bytes(), config, meta["input_names"], meta["output_key"],
                          meta["output_class"], meta["method"])
        qmodel.saved.update(quantized=meta["quantized_linear"], excluded=meta["excluded_linear"],
                            reduce_range=meta.get("reduce_range"))
        return qmodel


def export_fused(model: torch.nn.Module, input_names: list[str], output_key: str, tmp: Path, fuse: bool = True):
    """fp32 ONNX (TorchScript exporter, eager attention), with the transformer fusions applied if ``fuse``."""
    import onnx

    names = list(input_names)
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation("eager")  # the fusion recognises eager attention's MatMul/Softmax
    except (AttributeError, ValueError):
        pass
    path = tmp / "fp32.onnx"
    args = tuple(torch.ones(2, 16, dtype=torch.long) for _ in names)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(Positional(model, names, output_key).eval(), args, str(path), dynamo=False,
                              input_names=names, output_names=[output_key], opset_version=OPSET,
                              dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names}
                              | {output_key: {0: "batch", 1: "sequence"}})
    except Exception as exc:  # the exporter raises many types; all mean "this model does not export"
        raise StrategyError(f"torch.onnx.export could not export {type(model).__name__} for ONNX Runtime "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); use "
                            f"backend: inc or torchao") from None
    finally:
        try:
            model.set_attn_implementation(previous)
        except (AttributeError, ValueError):
            pass
    from compresso.strategies.prune import config_describes

    plain = onnx.load(str(path))
    try:
        regular = config_describes(model)  # per-layer head counts would mislead the attention fusion
    except StrategyError:
        regular = False
    if not (fuse and regular):
        return plain
    from onnxruntime.transformers.optimizer import optimize_model

    config = model.config
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = optimize_model(plain, model_type="bert", num_heads=int(config.num_attention_heads),
                                   hidden_size=int(config.hidden_size))
    return optimized.model


def onnx_module_prefix(name: str) -> str:
    """The ONNX node-name prefix the TorchScript exporter gives a module's ops: ``bert.encoder.layer.0.x``
    → ``/model/bert/encoder/layer.0/x/`` (list indices stay joined to their list)."""
    parts: list[str] = []
    for part in name.split("."):
        if part.isdigit() and parts:
            parts[-1] += "." + part
        else:
            parts.append(part)
    return "/model/" + "/".join(parts) + "/"


def onnx_nodes_of(model, module_names: list[str]) -> list[str]:
    """Names of the MatMul/Gemm nodes that compute the given Linear layers (to keep them fp32)."""
    found = []
    for name in module_names:
        prefix = onnx_module_prefix(name)
        nodes = [n.name for n in model.graph.node if n.name.startswith(prefix) and n.op_type in ("MatMul", "Gemm")]
        if not nodes:
            raise StrategyError(f"exclude: Linear layer {name!r} is not a separate node in the fused ONNX graph "
                                f"(ONNX Runtime fuses attention projections); with backend: ort exclude whole "
                                f"layers' FFN or the head, or use backend: inc")
        found += nodes
    return found


@contextlib.contextmanager
def _working_dir(path: Path):
    """onnxruntime's symbolic shape inference, when it cannot infer every shape, saves
    ``sym_shape_infer_temp.onnx`` and its external data (tens of MB) into the current directory:
    run the export and quantization from the scratch folder so the user's folder stays clean."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over compresso's calibration batches."""

    def __init__(self, batches: list[dict[str, torch.Tensor]], names: list[str]):
        self._items = iter([{n: b[n].numpy() for n in names} for b in batches])

    def get_next(self):
        return next(self._items, None)


def _quantize(model, out: Path, job: Job, excluded_nodes: list[str], reduce_range: bool) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    with warnings.catch_warnings(), errors_only(None):  # ORT's quantization advice goes to the root logger
        warnings.simplefilter("ignore")
        if job.method == "dynamic":
            quantize_dynamic(model, out, per_channel=True, reduce_range=reduce_range, weight_type=QuantType.QInt8,
                             nodes_to_exclude=excluded_nodes, extra_options=extra)
            return
        if not job.calibration:
            raise StrategyError("ort static quantization needs calibration batches")
        reader = _Reader(job.calibration, job.input_names)
        CalibrationDataReader.register(_Reader)
        quantize_static(model, out, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=excluded_nodes, op_types_to_quantize=["MatMul", "Gemm", "Gather",
                                                                               "EmbedLayerNormalization"],
                        extra_options={**extra, "ActivationSymmetric": False, "WeightSymmetric": True})


