"""Size and speed of a model's encoder: parameters, bytes on disk, GPU throughput, CPU latency.

Speed is measured on the encoder alone (``model.base_model`` where there is one): that is the
part every downstream task runs, and an MLM or task head would blur teacher/student ratios.
Inputs are random token ids with full attention (batch × sequence as configured).
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import torch

from compresso.evaluation.config import EfficiencyConfig
from compresso.evaluation.finetune import make_call

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pt2", ".pth", ".ckpt", ".onnx", ".gguf")


def encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    base = getattr(model, "base_model", None)
    return base if isinstance(base, torch.nn.Module) else model


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() yields tied weights once


def disk_usage(ref: str) -> tuple[int | None, list[str], str | None]:
    """(bytes of weight files, their dtypes, note) for a local folder or a hub id."""
    path = Path(ref).expanduser()
    if path.exists():
        files = [p for p in sorted(path.rglob("*")) if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
        if not files:
            return None, [], f"no weight file ({', '.join(WEIGHT_SUFFIXES)}) in {path}"
        return sum(p.stat().st_size for p in files), _safetensors_dtypes(files), None
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(ref, files_metadata=True)
        sizes = [s.size for s in info.siblings if s.rfilename.endswith(WEIGHT_SUFFIXES) and s.size]
        if any(s.rfilename.endswith(".safetensors") for s in info.siblings):
            sizes = [s.size for s in info.siblings if s.rfilename.endswith(".safetensors") and s.size]
        return (sum(sizes) if sizes else None), [], None if sizes else "no weight file listed on the hub"
    except Exception as exc:  # offline or unknown id: size unknown, the rest still measured
        return None, [], f"size unknown ({type(exc).__name__})"


def _safetensors_dtypes(files: list[Path]) -> list[str]:
    from safetensors import safe_open

    dtypes: set[str] = set()
    for f in files:
        if f.suffix == ".safetensors":
            try:
                with safe_open(str(f), framework="pt") as st:
                    for key in st.keys():
                        dtypes.add(str(st.get_slice(key).get_dtype()))
            except Exception:  # not a plain safetensors file: report no dtype rather than fail
                continue
    return sorted(dtypes)


def _inputs(batch: int, seq: int, vocab: int, device: torch.device, with_types: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, seq), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    if with_types:
        out["token_type_ids"] = torch.zeros(batch, seq, dtype=torch.long)
    return {k: v.to(device) for k, v in out.items()}


def _vocab_size(model: torch.nn.Module, tokenizer) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None) if config is not None else None
    return int(size or len(tokenizer))


def gpu_throughput(encoder: torch.nn.Module, vocab: int, cfg: EfficiencyConfig) -> float:
    """Sequences per second, bf16 weights and activations, on the current CUDA device."""
    device = torch.device("cuda", torch.cuda.current_device())
    model = copy.deepcopy(encoder).to(device=device, dtype=torch.bfloat16).eval()
    forward = make_call(model)
    batch = _inputs(cfg.gpu_batch_size, cfg.gpu_seq_length, vocab, device, True)
    try:
        with torch.inference_mode():
            for _ in range(3):
                forward(batch)
            torch.cuda.synchronize(device)
            runs, started = 0, time.perf_counter()
            while runs < 10 or time.perf_counter() - started < cfg.min_seconds:
                forward(batch)
                runs += 1
                if runs % 10 == 0:
                    torch.cuda.synchronize(device)
            torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started
    finally:
        del model
        torch.cuda.empty_cache()
    return runs * cfg.gpu_batch_size / elapsed


def cpu_latency(encoder: torch.nn.Module, vocab: int, cfg: EfficiencyConfig) -> dict[str, float]:
    """Median (and minimum, as ``"<batch>_min"``) milliseconds per forward pass at each batch
    size, fp32 (or the model's own quantized format), with ``cpu_threads`` intra-op threads."""
    model = encoder if all(p.device.type == "cpu" for p in encoder.parameters()) else copy.deepcopy(encoder).cpu()
    model.eval()
    forward = make_call(model)
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.cpu_threads)
    out = {}
    try:
        with torch.inference_mode():
            for batch_size in cfg.cpu_batch_sizes:
                batch = _inputs(batch_size, cfg.cpu_seq_length, vocab, torch.device("cpu"), True)
                for _ in range(2):
                    forward(batch)
                times, started = [], time.perf_counter()
                while (len(times) < 5 or time.perf_counter() - started < cfg.min_seconds) and len(times) < 500:
                    t0 = time.perf_counter()
                    forward(batch)
                    times.append(time.perf_counter() - t0)
                out[str(batch_size)] = 1000.0 * statistics.median(times)
                out[f"{batch_size}_min"] = 1000.0 * min(times)  # steadier than the median on a shared machine
    finally:
        torch.set_num_threads(previous)
    return out


def measure(ref: str, cfg: EfficiencyConfig, console=None, fallback_parameters: int | None = None) -> dict:
    """Everything the efficiency table shows for one model; failures become notes, not errors."""
    from compresso.evaluation.runner import quiet_transformers
    from compresso.models import load_bundle

    result: dict = {"parameters": None, "disk_bytes": None, "weights_dtypes": [], "gpu_throughput": None,
                    "cpu_latency_ms": {}, "notes": []}
    disk, dtypes, note = disk_usage(ref)
    result["disk_bytes"], result["weights_dtypes"] = disk, dtypes
    if note:
        result["notes"].append(note)
    try:
        with quiet_transformers():
            bundle = load_bundle(ref)
    except Exception as exc:
        result["notes"].append(f"could not load for timing: {type(exc).__name__}: {exc}")
        return result
    encoder = encoder_of(bundle.model)
    count = parameter_count(encoder)
    if count == 0 and fallback_parameters:
        count = fallback_parameters
        result["notes"].append("parameters counted on the model before quantization (the saved graph keeps "
                               "its weights outside nn.Parameters)")
    result["parameters"] = count or None
    vocab = _vocab_size(bundle.model, bundle.tokenizer)
    if cfg.gpu:
        if not torch.cuda.is_available():
            result["gpu_note"] = "n/a (no GPU)"
        else:
            try:
                result["gpu_throughput"] = gpu_throughput(encoder, vocab, cfg)
                result["gpu_device"] = torch.cuda.get_device_name()
            except Exception as exc:
                result["gpu_note"] = f"n/a ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    if cfg.cpu:
        try:
            result["cpu_latency_ms"] = cpu_latency(encoder, vocab, cfg)
        except Exception as exc:
            result["cpu_note"] = f"n/a ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    return result
