"""What the two torch backends (inc, torchao) share: the INT8 safetensors form and its reloading.

Saved form: ``model.int8.safetensors`` with every quantized Linear weight as int8 plus its fp32
per-channel scale (``<name>:scale``), the word-embedding table as int8 with row scales, the rest
fp32, and (inc) the observers' statistics. Loading rebuilds the fp32 model from the config, puts
the de-quantized weights back and lets the backend re-create its INT8 graph (no calibration data,
nothing unpickled); the outputs are the same as those of the model ``apply`` returned.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

import torch

from compresso.strategies.quantize.backends.base import Backend, Job
from compresso.strategies.quantize.modeling import GraphModel
from compresso.strategies.quantize.weights import dequantize_rows
from compresso.strategy import StrategyError

SCALE_SUFFIX = ":scale"
OBSERVER_PREFIX = "observer:"


class TorchGraphBackend(Backend):
    weights_file = "model.int8.safetensors"
    compiles = True

    @abstractmethod
    def build(self, job: Job) -> tuple[torch.nn.Module, dict, dict]:
        """(graph, observer map, observer state) for the fp32 model of ``job``."""

    @abstractmethod
    def rebuild(self, fp32: torch.nn.Module, tensors: dict, meta: dict, path: Path) -> tuple[torch.nn.Module, dict]:
        """(graph, observer state) from the saved tensors, ``fp32`` already holding the de-quantized weights."""

    @abstractmethod
    def weight_int8(self, qmodel: GraphModel) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Weight name → (int8 values, per-channel scales) as the graph computes with them."""

    def compiled_form(self, graph: torch.nn.Module) -> torch.nn.Module:
        """What inductor compiles for ``graph``: an equivalent graph that runs faster, or ``graph``."""
        return graph

    def reloaded_later(self, meta: dict) -> set[str]:
        """Keys written into the model by ``rebuild`` rather than loaded as fp32 first."""
        return set()

    def quantize(self, job: Job, compile: bool) -> GraphModel:
        graph, observers, state = self.build(job)
        qmodel = GraphModel(graph, job.fp32.config, job.input_names, job.output_key, job.output_class, job.method,
                            self.name, compile, compiled_graph=self.compiled_form(graph) if compile else None)
        qmodel.saved.update(fp32=job.fp32, observers=observers, observer_state=state, quantized=job.quantized,
                            excluded=job.excluded)
        return qmodel

    def save(self, qmodel: GraphModel, path: Path) -> dict:
        from safetensors.torch import save_file

        save_file(self._int8_state(qmodel), str(path / self.weights_file),
                  metadata={"format": "compresso-int8", "backend": self.name, "method": qmodel.method})
        emb = qmodel.saved.get("embedding_int8")
        return {"observers": qmodel.saved["observers"], "embedding_int8": emb[0] if emb else None}

    def load(self, path: Path, meta: dict, config, compile: bool) -> GraphModel:
        import transformers
        from safetensors import safe_open

        from compresso.strategies.prune import apply_saved_layout

        arch = getattr(transformers, meta["architecture"])
        fp32 = arch._from_config(config, attn_implementation="sdpa", dtype=torch.float32) \
            if hasattr(arch, "_from_config") else arch(config)
        fp32.eval().requires_grad_(False)  # as in apply: inference graphs, weights inductor can freeze
        apply_saved_layout(fp32, path)  # pruned shapes, when the model was pruned before quantizing
        weights = path / meta.get("weights_file", self.weights_file)
        tensors = {}
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
        _load_fp32_state(fp32, tensors, weights, self.reloaded_later(meta))
        graph, state = self.rebuild(fp32, tensors, meta, path)
        qmodel = GraphModel(graph, config, meta["input_names"], meta["output_key"], meta["output_class"],
                            meta["method"], self.name, compile, compiled_graph=self.compiled_form(graph) if compile else None)
        emb_name = meta.get("embedding_int8")
        qmodel.saved.update(fp32=fp32, observers=meta.get("observers") or {}, observer_state=state,
                            quantized=meta["quantized_linear"], excluded=meta["excluded_linear"],
                            embedding_int8=(emb_name, tensors[emb_name], tensors[emb_name + SCALE_SUFFIX])
                            if emb_name else None)
        return qmodel

    def _int8_state(self, qmodel: GraphModel) -> dict[str, torch.Tensor]:
        """int8 + per-row scales for quantized weights and the embedding table, fp32 for the rest,
        observer statistics for the static graph; tied tensors once."""
        fp32 = qmodel.saved["fp32"]
        int8 = dict(self.weight_int8(qmodel))
        if qmodel.saved.get("embedding_int8"):
            # The table itself; a tied MLM decoder is re-quantized from it by the graph, as in apply.
            name, q, scale = qmodel.saved["embedding_int8"]
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
        for key, value in qmodel.saved["observer_state"].items():
            out[OBSERVER_PREFIX + key] = value.contiguous().clone()
        return out


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
        raise StrategyError(f"{path}: tensors {result.unexpected_keys[:3]} do not belong to {type(model).__name__}")
    model.tie_weights()
    current = model.state_dict()
    loaded = {current[k].untyped_storage().data_ptr() for k in state}
    untied = [k for k in result.missing_keys if k not in skip and current[k].untyped_storage().data_ptr() not in loaded]
    if untied:
        raise StrategyError(f"{path} lacks {untied[:3]} for {type(model).__name__}")
