"""``torchao``: ``Int8DynamicActivationInt8WeightConfig`` (int8 per-channel weights, activations
quantized per token at run time), compiled by inductor like ``inc``. No calibration."""

from __future__ import annotations

from pathlib import Path

import torch

from compresso.strategies.quantize.backends.base import Job, quiet_backends
from compresso.strategies.quantize.backends.torch_graph import (
    SCALE_SUFFIX,
    TorchGraphBackend,
)
from compresso.strategies.quantize.modeling import GraphModel, Positional


class TorchaoBackend(TorchGraphBackend):
    name = "torchao"
    methods = ("dynamic",)
    modules = ("torchao.quantization",)

    def build(self, job: Job):
        torchao_quantize(job.fp32, job.quantized)
        return Positional(job.fp32, job.input_names, job.output_key).eval(), {}, {}

    def reloaded_later(self, meta: dict) -> set[str]:
        return {f"{n}.weight" for n in meta["quantized_linear"]}

    def rebuild(self, fp32, tensors, meta, path: Path):
        torchao_quantize(fp32, meta["quantized_linear"])
        for name in meta["quantized_linear"]:
            weight = fp32.get_submodule(name).weight
            weight.qdata.copy_(tensors[f"{name}.weight"])
            weight.scale.copy_(tensors[f"{name}.weight{SCALE_SUFFIX}"].reshape(weight.scale.shape))
        return Positional(fp32, meta["input_names"], meta["output_key"]).eval(), {}

    def weight_int8(self, qmodel: GraphModel):
        fp32 = qmodel.saved["fp32"]
        out = {}
        for name in qmodel.saved["quantized"]:
            w = fp32.get_submodule(name).weight
            out[f"{name}.weight"] = (w.qdata.detach(), w.scale.detach().reshape(-1).float())
        return out


def torchao_quantize(model: torch.nn.Module, quantized: list[str]) -> None:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    wanted = set(quantized)
    with quiet_backends():
        quantize_(model, Int8DynamicActivationInt8WeightConfig(),
                  filter_fn=lambda module, fqn: isinstance(module, torch.nn.Linear) and fqn in wanted)
