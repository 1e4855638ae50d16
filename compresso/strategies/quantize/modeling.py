"""The runnable INT8 models: one interface (keyword inputs in, transformers output out) over a
torch graph (inc, torchao) or an ONNX Runtime session (ort)."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch


class Positional(torch.nn.Module):
    """The model as a function of positional input tensors returning one tensor (what torch.export,
    the compiled graph and the ONNX exporter take)."""

    def __init__(self, model: torch.nn.Module, input_names: list[str], output_key: str):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output_key = output_key

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        out = self.model(**{n: given[n] for n in self.input_names}, return_dict=True)
        return out[self.output_key]


def make_output(class_name: str, key: str, tensor: torch.Tensor):
    import transformers.modeling_outputs as outputs

    cls = getattr(outputs, class_name, None)
    if cls is None:
        cls = outputs.SequenceClassifierOutput if key == "logits" else outputs.BaseModelOutput
    return cls(**{key: tensor})


class QuantizedModel(torch.nn.Module):
    """An inference-only INT8 model, called like the fp32 one (keyword inputs, output with ``.logits``
    or ``.last_hidden_state``). Any batch size and sequence length; CPU only.

    Subclasses run the positional inputs: ``GraphModel`` (a torch graph: inc, torchao) and
    ``OrtModel`` (an ONNX Runtime session: ort). ``saved`` holds what ``save`` needs besides."""

    backend: str = ""
    runs_on_cpu_only = True
    """Read by callers that place models on a device (evaluation): this one stays on the CPU."""

    def __init__(self, config, input_names: list[str], output_key: str, output_class: str, method: str):
        super().__init__()
        self.config = config
        self.input_names = list(input_names)
        self.output_key = output_key
        self.output_class = output_class
        self.method = method
        self.training = False
        object.__setattr__(self, "saved", {})
        object.__setattr__(self, "_check", None)

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
        return make_output(self.output_class, self.output_key, self.run([given[n] for n in self.input_names]))

    def run(self, args: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

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


INDUCTOR_OPTIONS = {"freezing": True, "cpp_wrapper": True}
"""How inductor compiles the torch INT8 graphs. ``freezing`` folds each quantize/dequantize pair
around a Linear into one prepacked oneDNN int8 linear (with bias, GELU, residual add and the next
quantize fused into it); without it the int8 arithmetic runs as fp32 ops. ``cpp_wrapper`` makes
the generated graph call its kernels from C++ instead of Python: about 5% less time per call at
batch 1 × 128 tokens on the 6-layer student with AVX-512 VNNI, none at batch 8
(``benchmarks/quantize_cpu.py --compare-levers`` measures it; docs/quantization.md). ``max_autotune``
with the CPP GEMM template is not used: its AVX-512 VNNI int8 micro-kernel was faster at batch 1
but changed the student's logits by up to 0.3 (0.005 without it) on torch 2.13."""


class GraphModel(QuantizedModel):
    """A torch INT8 graph (INC's converted PT2E graph, or the model with torchao int8 tensors),
    compiled by inductor with ``freezing`` so that oneDNN int8 kernels run."""

    def __init__(self, graph: torch.nn.Module, config, input_names: list[str], output_key: str,
                 output_class: str, method: str, backend: str, compile: bool = True,
                 inductor_options: dict | None = None, compiled_graph: torch.nn.Module | None = None):
        super().__init__(config, input_names, output_key, output_class, method)
        self.graph = graph
        self.backend = backend
        self.compiled = compile
        self.inductor_options = dict(INDUCTOR_OPTIONS if inductor_options is None else inductor_options)
        # What inductor compiles: the graph itself, or an equivalent form of it made for speed
        # (``compiled_graph``: inc's with the query/key/value products merged); ``graph`` stays the reference.
        # dynamic=True: one graph for all shapes (batch 1 gets its own); without it every new
        # (batch, length) pair recompiles, which evaluation with length-sorted batches would pay for.
        self._run = torch.compile(graph if compiled_graph is None else compiled_graph, dynamic=True) if compile \
            else graph

    def run(self, args: list[torch.Tensor]) -> torch.Tensor:
        # Patched per call (not set globally) because compilation happens lazily, at the first call of a shape.
        patch = torch._inductor.config.patch(**self.inductor_options) if self.compiled else contextlib.nullcontext()
        with torch.no_grad(), patch, warnings.catch_warnings():
            # compile-time chatter of inductor's oneDNN lowering and of dynamo about transformers' globals
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            warnings.filterwarnings("ignore", message="While compiling, we found certain side effects")
            return self._run(*args)


class OrtModel(QuantizedModel):
    """An INT8 ONNX model run by ONNX Runtime's CPU provider (MLAS int8 kernels)."""

    backend = "ort"

    def __init__(self, onnx_bytes: bytes, config, input_names: list[str], output_key: str, output_class: str,
                 method: str, threads: int | None = None):
        super().__init__(config, input_names, output_key, output_class, method)
        object.__setattr__(self, "onnx_bytes", onnx_bytes)
        object.__setattr__(self, "session", make_session(onnx_bytes, threads))
        self.session_inputs = [i.name for i in self.session.get_inputs()]

    def run(self, args: list[torch.Tensor]) -> torch.Tensor:
        feed = {name: np.ascontiguousarray(arg.numpy(), dtype=np.int64)
                for name, arg in zip(self.input_names, args) if name in self.session_inputs}
        return torch.from_numpy(self.session.run(None, feed)[0])


def make_session(onnx_bytes: bytes, threads: int | None = None):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (default: torch's setting, so that
    ``torch.set_num_threads`` governs both kinds of INT8 model alike)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
