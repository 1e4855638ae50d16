"""``inc``: Intel Neural Compressor's PT2E static flow, compiled by inductor.

The model is exported with ``torch.export`` (batch and sequence length dynamic), observers are
inserted by INC's ``StaticQuantConfig`` (X86InductorQuantizer: int8 per-channel symmetric weights,
uint8 per-tensor activations), calibrated on text, converted to a quantize/dequantize graph and
compiled by inductor with ``freezing`` on, which folds the q/dq pairs into oneDNN int8 linear kernels.
INC's own ``DynamicQuantConfig`` is not offered: without a calibration pass it returns all-zero
logits, and compiled with dynamic shapes it was slower than fp32.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from compresso.strategies.quantize.backends.base import Job, quiet_backends
from compresso.strategies.quantize.backends.fusion import concat_shared_input_linears
from compresso.strategies.quantize.backends.torch_graph import (
    OBSERVER_PREFIX,
    TorchGraphBackend,
)
from compresso.strategies.quantize.modeling import GraphModel, Positional
from compresso.strategy import StrategyError


class IncBackend(TorchGraphBackend):
    name = "inc"
    methods = ("static",)
    modules = ("torchao.quantization", "neural_compressor.torch.quantization")

    def build(self, job: Job):
        observer = job.params.activation_observer if job.params is not None else "minmax"
        prepared = export_prepared(job.fp32, job.input_names, job.output_key, job.excluded, observer)
        observers = observer_map(prepared)
        progress = job.ctx.progress() if job.ctx is not None else None
        with torch.no_grad():
            if progress is None:
                for batch in job.calibration:
                    prepared(*[batch[n] for n in job.input_names])
            else:
                with progress:
                    task = progress.add_task("calibrating", total=len(job.calibration))
                    for batch in job.calibration:
                        prepared(*[batch[n] for n in job.input_names])
                        progress.advance(task)
        state = {k: v.detach().clone() for k, v in prepared.state_dict().items() if k.split(".")[0] in observers}
        return convert(prepared), observers, state

    def rebuild(self, fp32, tensors, meta, path: Path):
        from compresso.strategies.quantize.saving import versions

        observer = (meta.get("params") or {}).get("activation_observer", "minmax")
        prepared = export_prepared(fp32, meta["input_names"], meta["output_key"], meta["excluded_linear"], observer)
        if observer_map(prepared) != meta["observers"]:
            raise StrategyError(f"{path}: the quantized graph rebuilt here differs from the saved one (saved with "
                                f"{meta.get('versions')}, this is {versions()}); quantize the fp32 model again with "
                                f"these versions")
        state = {k[len(OBSERVER_PREFIX):]: v for k, v in tensors.items() if k.startswith(OBSERVER_PREFIX)}
        unexpected = list(prepared.load_state_dict(state, strict=False).unexpected_keys)
        if unexpected:
            raise StrategyError(f"{path}: observer statistics {unexpected[:3]} do not fit the rebuilt graph")
        return convert(prepared), state

    def compiled_form(self, graph):
        # one int8 product for each layer's query, key and value projections (same numbers, fewer calls)
        return concat_shared_input_linears(graph)[0]

    def weight_int8(self, qmodel: GraphModel):
        """Computed by the very quantize op and qparams of the converted graph, so that de-quantizing
        and re-quantizing on load gives the same int8 values."""
        graph = qmodel.graph
        found = {}
        for node in graph.graph.nodes:
            if node.op != "call_function" or "quantize_per_channel" not in str(node.target) \
                    or "dequantize" in str(node.target):
                continue
            weight, scale, zero = node.args[:3]
            if getattr(weight, "op", None) != "get_attr" or not str(weight.target).startswith("model."):
                continue
            w, scale_t, zero_t = (getattr_path(graph, weight.target), getattr_path(graph, scale.target),
                                  getattr_path(graph, zero.target))
            if bool((zero_t != 0).any()):
                raise StrategyError("internal: expected symmetric per-channel weights (zero points 0)")
            q = node.target(w.detach(), scale_t, zero_t, *node.args[3:])
            found[str(weight.target)[len("model."):]] = (q, scale_t.float())
        return found


def getattr_path(module: torch.nn.Module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module


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


def export_prepared(model: torch.nn.Module, input_names: list[str], output_key: str, excluded: list[str],
                    observer: str):
    """Export → INC prepare: the graph with observers, ready for calibration."""
    from neural_compressor.torch.export import export
    from neural_compressor.torch.quantization import prepare

    wrapper = Positional(model, input_names, output_key).eval()
    max_len = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    # A fixed example (not the caller's batch) so that apply and load trace the very same graph.
    args = tuple(torch.ones(2, 16, dtype=torch.long) for _ in input_names)
    try:
        with quiet_backends(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="While compiling, we found certain side effects")
            exported = export(wrapper, args, dynamic_shapes=_dynamic_shapes(input_names, max_len))
    except RuntimeError as exc:  # INC logs torch.export's reason at ERROR level and raises this
        raise StrategyError(f"torch.export could not trace {type(model).__name__} ({exc}); quantize supports "
                            f"BERT-family encoders that torch.export captures with dynamic batch and length") from None
    with quiet_backends():
        return prepare(exported, _static_config([f"model.{n}" for n in excluded], observer))


def observer_map(prepared: torch.nn.Module) -> dict[str, str]:
    """Observer module name → what it watches (a weight's name, or the op whose output it sees)."""
    found = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module" and str(node.target).startswith("activation_post_process"):
            arg = node.args[0]
            found[str(node.target)] = (f"weight:{arg.target}" if arg.op == "get_attr"
                                       else f"{arg.op}:{getattr(arg.target, '__name__', str(arg.target))}")
    return found


def convert(prepared: torch.nn.Module) -> torch.nn.Module:
    from neural_compressor.torch.quantization import convert as inc_convert

    with quiet_backends():
        return inc_convert(prepared)
