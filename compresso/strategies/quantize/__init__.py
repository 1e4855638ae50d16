"""INT8 post-training quantization of BERT-family encoders for x86 CPUs.

Backends (``backend:``; see docs/quantization.md for measurements and the reasons behind each):

* ``inc``: Intel Neural Compressor's PT2E static flow compiled by inductor (oneDNN int8 kernels);
* ``torchao``: torchao int8 weights with per-token dynamic activations, compiled the same way;
* ``ort``: ONNX Runtime int8 (static QDQ or dynamic) on a graph with BERT's attention, GELU and
  LayerNorms fused; saved as an ``.onnx`` file plain onnxruntime runs;
* ``auto`` (default): the one measured fastest for this CPU's class (``cpu.AUTO_CHOICE``).

Every Linear layer is quantized except those matched by ``exclude`` (default: the task classifier);
the word-embedding table is stored as int8 with one scale per row. After quantizing, the result is
compared with the fp32 model on held-back text, and the stage fails when the outputs are degenerate
(not finite, constant, or too far from fp32), so that a broken backend cannot pass silently.

One file per job: ``params``, ``calibration`` (text), ``checks`` (before and after), ``weights``
(which layers, int8 rows), ``modeling`` (the runnable INT8 models), ``backends/`` (one file per
backend behind ``backends.base.Backend``), ``cpu`` (capabilities and ``auto``), ``saving``
(the folder format), ``export`` (ONNX) and ``strategy`` (``QuantizeStrategy``).
"""

from __future__ import annotations

from compresso.strategies.quantize.checks import compare_outputs, ensure_sane
from compresso.strategies.quantize.export import export_onnx
from compresso.strategies.quantize.modeling import GraphModel, OrtModel, QuantizedModel
from compresso.strategies.quantize.params import CalibrationParams, QuantizeParams
from compresso.strategies.quantize.strategy import QuantizeStrategy

__all__ = ["QuantizeStrategy", "QuantizeParams", "CalibrationParams", "QuantizedModel", "GraphModel", "OrtModel",
           "compare_outputs", "ensure_sane", "export_onnx"]
