"""The saved form of an INT8 model, and loading it back.

A folder holds the backend's weights file (``model.int8.safetensors`` for inc/torchao,
``model.int8.onnx`` for ort: names plain transformers does not look for, so that
``from_pretrained`` refuses the folder instead of loading garbage), ``config.json`` (with a
``compresso_quantize`` marker), the tokenizer, ``quantize.json`` (backend, method, layers,
check, versions), ``HOW_TO_LOAD.md`` and ``compresso.json``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from compresso.strategies.load_note import write_load_note
from compresso.strategies.quantize.backends import get_backend
from compresso.strategies.quantize.modeling import QuantizedModel
from compresso.strategy import BUNDLE_META, ModelBundle, StrategyError, write_json

FORMAT_VERSION = 2
QUANT_META = "quantize.json"
LEGACY_WEIGHTS = "model.safetensors"  # format_version 1 (inc / torchao only)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__}
    for dist in ("neural-compressor-pt", "torchao", "onnxruntime", "onnx", "transformers"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def save(bundle: ModelBundle, path: Path, fmt: str) -> None:
    from compresso.strategies.prune import write_layout_if_pruned
    from compresso.strategies.quantize import cpu

    qmodel = bundle.model
    if not isinstance(qmodel, QuantizedModel) or not qmodel.saved:
        raise StrategyError("quantize.save takes the bundle that quantize.apply (or load) returned")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    backend = get_backend(qmodel.backend)
    extra = backend.save(qmodel, path)
    config = copy.deepcopy(qmodel.config)
    # A marker for readers of config.json; loading is refused by the absence of model.safetensors.
    config.compresso_quantize = {"backend": qmodel.backend, "method": qmodel.method,
                                 "weights_file": backend.weights_file, "load_with": "compresso.load"}
    config.save_pretrained(path)
    if qmodel.saved.get("fp32") is not None:
        # A pruned model's per-layer shapes (which its config cannot describe) go beside it.
        write_layout_if_pruned(qmodel.saved["fp32"], path)
    if bundle.tokenizer is not None:
        bundle.tokenizer.save_pretrained(path)
    write_json(path / QUANT_META, {
        "format_version": FORMAT_VERSION, "backend": qmodel.backend, "method": qmodel.method,
        "weights_file": backend.weights_file, "architecture": qmodel.saved.get("architecture"),
        "input_names": qmodel.input_names, "output_key": qmodel.output_key, "output_class": qmodel.output_class,
        "quantized_linear": qmodel.saved["quantized"], "excluded_linear": qmodel.saved["excluded"],
        **extra, "params": qmodel.saved.get("params"), "check": qmodel._check,
        "quantized_on": qmodel.saved.get("quantized_on") or cpu.describe(), "versions": versions(),
    })
    plain = ("`AutoModel*.from_pretrained` refuses this folder (it holds no `model.safetensors`; the INT8 "
             f"weights are in `{backend.weights_file}`, which transformers does not read)")
    extra_text = ""
    if qmodel.backend == "ort":
        names = ", ".join(f'"{n}": enc["{n}"]' for n in qmodel.input_names)
        extra_text = f"""
Plain ONNX Runtime runs the model file directly, with the tokenizer saved here:

```python
import onnxruntime as ort
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained(".")
session = ort.InferenceSession("{backend.weights_file}", providers=["CPUExecutionProvider"])
enc = tokenizer(["Un text."], return_tensors="np")
{qmodel.output_key} = session.run(None, {{{names}}})[0]
```
"""
    write_load_note(path, fmt, f"an INT8 model for x86-64 CPUs ({qmodel.backend}, {qmodel.method})", plain,
                    extra_text)
    write_json(path / BUNDLE_META, {**bundle.meta(), "format": fmt})


def load(path: Path, fmt: str, model_class: type | None = None, **model_kwargs) -> ModelBundle:
    """Rebuild the INT8 model saved by ``save``. ``compile=False`` skips torch.compile (inc, torchao)."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from compresso.strategies.quantize.checks import check_platform
    from compresso.strategies.quantize.params import QuantizeParams

    path = Path(path)
    compile_override = model_kwargs.pop("compile", None)
    meta_path = path / QUANT_META
    if not meta_path.is_file():
        raise StrategyError(f"{path} has format 'quantize' in {BUNDLE_META} but lacks {QUANT_META}")
    meta = json.loads(meta_path.read_text())
    version = meta.get("format_version")
    if version == 1:  # inc / torchao, weights in model.safetensors
        meta = {**meta, "backend": "inc" if meta["method"] == "static" else "torchao", "weights_file": LEGACY_WEIGHTS}
    elif version != FORMAT_VERSION:
        raise StrategyError(f"{meta_path}: format_version {version!r} is not {FORMAT_VERSION}; written by another "
                            f"compresso version")
    if not (path / meta["weights_file"]).is_file():
        raise StrategyError(f"{path} lacks {meta['weights_file']}, the INT8 weights named in {QUANT_META}")
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
    params = QuantizeParams.model_validate({**meta["params"], "backend": meta["backend"], "method": meta["method"]})
    backend = get_backend(meta["backend"])
    backend.require()
    compile_ = params.compile if compile_override is None else bool(compile_override)
    check_platform(compile_ and backend.compiles)
    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "compresso_quantize"):
        del config.compresso_quantize
    qmodel = backend.load(path, meta, config, compile_)
    qmodel.saved.update(params=meta["params"], architecture=meta["architecture"],
                        quantized_on=meta.get("quantized_on"))
    object.__setattr__(qmodel, "_check", meta.get("check"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    bundle_meta = json.loads((path / BUNDLE_META).read_text()) if (path / BUNDLE_META).is_file() else {}
    return ModelBundle(model=qmodel, tokenizer=tokenizer, lineage=bundle_meta.get("lineage", []), format=fmt)


def _auto_gives(auto_class, arch, path: Path) -> bool:
    """Whether ``auto_class`` (e.g. AutoModelForSequenceClassification) maps this config to ``arch``."""
    from transformers import AutoConfig

    try:
        mapping = auto_class._model_mapping
        return mapping[type(AutoConfig.from_pretrained(path))] is arch
    except Exception:  # an auto class without a mapping for this config
        return False
