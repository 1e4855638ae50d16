"""``export_onnx``: the inc backend's static INT8 graph as an ONNX QDQ model (for the ort backend's
own artefact, see ``backends/ort.py``: it is saved as ONNX already)."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import torch

from compresso.strategies.quantize.modeling import GraphModel, OrtModel
from compresso.strategy import ModelBundle, StrategyError


def export_onnx(bundle: ModelBundle, path: str | Path) -> Path:
    """Write the static INT8 graph as an ONNX QDQ model (QuantizeLinear/DequantizeLinear around
    each MatMul), with dynamic batch and length; ONNX Runtime runs it with int8 kernels.

    Needs the ``onnx`` and ``onnxscript`` packages. The file keeps fp32 weights with their
    QuantizeLinear nodes, so it is about fp32-sized; ``backend: ort`` gives a small int8 ONNX file.
    """
    model = bundle.model
    path = Path(path)
    if isinstance(model, OrtModel):
        path.write_bytes(model.onnx_bytes)
        return path
    if not isinstance(model, GraphModel):
        raise StrategyError("export_onnx takes a bundle made or loaded by the quantize strategy")
    if model.method != "static":
        raise StrategyError("ONNX export is supported for method: static (a QDQ graph); torchao's dynamic "
                            "int8 tensors do not export to ONNX (use backend: ort for an INT8 ONNX model)")
    for package in ("onnx", "onnxscript"):
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise StrategyError(f"ONNX export needs the {package!r} package: pip install onnx onnxscript") from exc
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
