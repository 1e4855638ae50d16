"""Size and speed of a model's encoder: parameters, bytes on disk, GPU throughput, CPU latency.

Speed is measured on the encoder alone (``model.base_model`` where there is one): that is the
part every downstream task runs, and an MLM or task head would blur teacher/student ratios.
Inputs are random token ids with full attention (batch × sequence as configured).
"""

from __future__ import annotations

import copy
import json
import os
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
        files = weight_files(path)
        if not files:
            return None, [], f"no weight file ({', '.join(WEIGHT_SUFFIXES)}) in {path}"
        dtypes = sorted(DTYPE_NAMES.get(d, d.lower()) for d in safetensors_bytes_by_dtype(files))
        return sum(p.stat().st_size for p in files), dtypes, None
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(ref, files_metadata=True)
        sizes = [s.size for s in info.siblings if s.rfilename.endswith(WEIGHT_SUFFIXES) and s.size]
        if any(s.rfilename.endswith(".safetensors") for s in info.siblings):
            sizes = [s.size for s in info.siblings if s.rfilename.endswith(".safetensors") and s.size]
        return (sum(sizes) if sizes else None), [], None if sizes else "no weight file listed on the hub"
    except Exception as exc:  # offline or unknown id: size unknown, the rest still measured
        return None, [], f"size unknown ({type(exc).__name__})"


def weight_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]


# Bytes per element of the safetensors dtype names (the header's spelling).
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}
DTYPE_NAMES = {"F64": "fp64", "F32": "fp32", "F16": "fp16", "BF16": "bf16", "I8": "int8", "U8": "uint8",
               "I32": "int32", "I64": "int64"}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def safetensors_bytes_by_dtype(files: list[Path]) -> dict[str, int]:
    """Tensor bytes per dtype in the safetensors files, read from their JSON headers (no tensor
    is loaded). Files that are not plain safetensors are left out."""
    out: dict[str, int] = {}
    for f in files:
        if f.suffix != ".safetensors":
            continue
        try:
            with f.open("rb") as fh:
                length = int.from_bytes(fh.read(8), "little")
                if not 0 < length < 100_000_000:
                    continue
                header = json.loads(fh.read(length))
        except (OSError, ValueError):
            continue
        for key, t in header.items():
            if key == "__metadata__" or not isinstance(t, dict):
                continue
            begin, end = t.get("data_offsets", (0, 0))
            out[str(t.get("dtype"))] = out.get(str(t.get("dtype")), 0) + int(end) - int(begin)
    return out


def size_at_fp32(ref: str) -> int | None:
    """Bytes of the weights with every floating-point tensor counted at 4 bytes per element and
    every integer tensor (INT8 weights) at its own size: sizes of models saved in different float
    dtypes (a teacher in fp16, its student in fp32) compared like with like. None when the folder
    holds weights that are not safetensors (their dtypes cannot be read without loading)."""
    path = Path(ref).expanduser()
    if not path.exists():
        return None
    files = weight_files(path)
    if not files or any(f.suffix != ".safetensors" for f in files):
        return None
    total = 0
    for dtype, nbytes in safetensors_bytes_by_dtype(files).items():
        if dtype in _FLOAT_DTYPES:
            total += nbytes // _DTYPE_BYTES[dtype] * 4
        else:
            total += nbytes
    return total or None


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


def cpu_latency(encoder: torch.nn.Module, vocab: int, cfg: EfficiencyConfig) -> dict[str, dict]:
    """Milliseconds per forward pass at each batch size, fp32 (or the model's own quantized
    format), with ``cpu_threads`` intra-op threads: after ``warmup`` passes, at least
    ``repeats`` timed passes and at least ``min_seconds`` of them; returns, per batch size, the
    median with its spread (quartiles, min, max), the number of passes and the load average."""
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
                for _ in range(cfg.warmup):
                    forward(batch)
                times, started = [], time.perf_counter()
                while (len(times) < cfg.repeats or time.perf_counter() - started < cfg.min_seconds) \
                        and len(times) < 1000:
                    t0 = time.perf_counter()
                    forward(batch)
                    times.append(1000.0 * (time.perf_counter() - t0))
                out[str(batch_size)] = spread(times) | {"load_average": _load_average()}
    finally:
        torch.set_num_threads(previous)
    return out


def spread(times_ms: list[float]) -> dict:
    """Median, quartiles, extremes and relative interquartile range of repeated timings."""
    if len(times_ms) > 1:
        q1, median, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
    else:
        q1 = median = q3 = times_ms[0]
    return {"median": median, "q1": q1, "q3": q3, "min": min(times_ms), "max": max(times_ms),
            "repeats": len(times_ms), "iqr_pct": 100.0 * (q3 - q1) / median if median else None}


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _architecture(model: torch.nn.Module) -> dict:
    config = getattr(model, "config", None)
    if config is None:
        return {}
    return {key: getattr(config, key, None) for key in ("num_hidden_layers", "hidden_size", "intermediate_size")}


def measure(ref: str, cfg: EfficiencyConfig, console=None, fallback_parameters: int | None = None) -> dict:
    """Everything the efficiency table shows for one model; failures become notes, not errors.

    ``cpu_latency_ms`` maps each batch size to the median; ``cpu_latency`` holds the spread."""
    from compresso.evaluation.runner import quiet_transformers
    from compresso.models import load_bundle

    result: dict = {"parameters": None, "disk_bytes": None, "weights_dtypes": [], "size_fp32_bytes": None,
                    "architecture": {}, "gpu_throughput": None, "cpu_latency_ms": {}, "cpu_latency": {},
                    "cpu_count": os.cpu_count(), "notes": []}
    disk, dtypes, note = disk_usage(ref)
    result["disk_bytes"], result["weights_dtypes"] = disk, dtypes
    result["size_fp32_bytes"] = size_at_fp32(ref)
    if note:
        result["notes"].append(note)
    try:
        with quiet_transformers():
            bundle = load_bundle(ref)
    except Exception as exc:
        result["notes"].append(f"could not load for timing: {type(exc).__name__}: {exc}")
        return result
    encoder = encoder_of(bundle.model)
    result["architecture"] = _architecture(bundle.model)
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
            result["cpu_latency"] = cpu_latency(encoder, vocab, cfg)
            result["cpu_latency_ms"] = {b: t["median"] for b, t in result["cpu_latency"].items()}
        except Exception as exc:
            result["cpu_note"] = f"n/a ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    return result


NOISY_IQR_PCT = 20.0
"""A CPU timing whose interquartile range exceeds this share of its median is called noisy."""


MAX_SPEEDUP_OVER_COMPUTE = 2.5
"""A measured speed-up more than this many times the ratio of encoder compute is suspect (INT8
kernels can gain up to about 2x over fp32 at equal compute; more points at the timing)."""


def compare(measured: dict[str, dict], reference: str, seq_length: int = 128) -> None:
    """Ratios of every model to ``reference`` (in place, as ``ratios``), and ``suspect`` notes
    where a ratio contradicts the architecture.

    Sizes are compared at equal dtype (``size_fp32``); the ratio of bytes as saved
    (``disk_bytes``) is given only when both models were saved in the same dtypes. A model with
    fewer parameters and no more layers or width than the reference must not be bigger at equal
    dtype nor slower, and no model should be faster than its share of the reference's compute
    allows (``MAX_SPEEDUP_OVER_COMPUTE``); when one measures so, the ratio is marked suspect (a
    loaded machine, a timing too short) instead of being reported as a finding.
    """
    ref = measured[reference]
    for name, e in measured.items():
        ratios: dict[str, float] = {}
        suspect: dict[str, str] = {}
        if e.get("parameters") and ref.get("parameters"):
            ratios["parameters"] = e["parameters"] / ref["parameters"]
        if e.get("size_fp32_bytes") and ref.get("size_fp32_bytes"):
            ratios["size_fp32"] = e["size_fp32_bytes"] / ref["size_fp32_bytes"]
        if e.get("disk_bytes") and ref.get("disk_bytes") and e.get("weights_dtypes") \
                and e.get("weights_dtypes") == ref.get("weights_dtypes"):
            ratios["disk_bytes"] = e["disk_bytes"] / ref["disk_bytes"]
        if e.get("gpu_throughput") and ref.get("gpu_throughput"):
            ratios["gpu_speedup"] = e["gpu_throughput"] / ref["gpu_throughput"]
        for b, ms in e.get("cpu_latency_ms", {}).items():
            if ref.get("cpu_latency_ms", {}).get(b):
                ratios[f"cpu_speedup_b{b}"] = ref["cpu_latency_ms"][b] / ms
        e["ratios"] = ratios
        compute = _compute_ratio(ref, e, seq_length)
        if name != reference and compute:
            e["compute_ratio"] = compute
            for key in [k for k in ratios if k.startswith(("cpu_speedup_b", "gpu_speedup"))]:
                if ratios[key] > MAX_SPEEDUP_OVER_COMPUTE * compute:
                    suspect[key] = (f"{ratios[key]:.1f}x faster, but the encoder does only {1 / compute:.2f}x the "
                                    f"reference's compute per token; re-measure on a quiet machine")
        if name != reference and _smaller_architecture(e, ref):
            why = "fewer parameters and no more layers or width than the reference"
            if ratios.get("size_fp32", 0.0) > 1.0:
                suspect["size_fp32"] = f"{why}, yet bigger at equal dtype"
            if ratios.get("gpu_speedup", 2.0) < 1.0:
                suspect["gpu_speedup"] = f"{why}, yet measured slower on GPU"
            for key in [k for k in ratios if k.startswith("cpu_speedup_b")]:
                if ratios[key] < 1.0:
                    b = key.removeprefix("cpu_speedup_b")
                    load = e.get("cpu_latency", {}).get(b, {}).get("load_average")
                    suspect[key] = (f"{why}, yet measured slower on CPU at batch {b}"
                                    + (f" (load average {load:g} on {e.get('cpu_count')} cores while timing)"
                                       if load is not None else "") + "; re-measure on a quiet machine")
        noisy = {f"cpu_b{b}": f"CPU timing at batch {b} varies by {t['iqr_pct']:.0f}% (interquartile range / median)"
                 for b, t in e.get("cpu_latency", {}).items()
                 if t.get("iqr_pct") is not None and t["iqr_pct"] > NOISY_IQR_PCT}
        e["suspect"], e["noisy"] = suspect, noisy


def _encoder_flops(arch: dict, seq_length: int) -> float | None:
    """Multiply-adds per token of a BERT encoder: per layer, Q/K/V/output projections (4h²), the
    feed-forward block (2·h·i) and attention over the sequence (2·s·h)."""
    layers, h, i = arch.get("num_hidden_layers"), arch.get("hidden_size"), arch.get("intermediate_size")
    if not (layers and h and i):
        return None
    return layers * (4 * h * h + 2 * h * i + 2 * seq_length * h)


def _compute_ratio(ref: dict, e: dict, seq_length: int) -> float | None:
    """Reference compute / model compute: the speed-up the architecture alone predicts."""
    a = _encoder_flops(e.get("architecture") or {}, seq_length)
    r = _encoder_flops(ref.get("architecture") or {}, seq_length)
    return r / a if a and r else None


def _smaller_architecture(e: dict, ref: dict) -> bool:
    if not (e.get("parameters") and ref.get("parameters")) or e["parameters"] >= ref["parameters"]:
        return False
    a, r = e.get("architecture") or {}, ref.get("architecture") or {}
    return not any(a.get(k) and r.get(k) and a[k] > r[k]
                   for k in ("num_hidden_layers", "hidden_size", "intermediate_size"))


def _fmt_ratio(e: dict, key: str) -> str:
    x = e.get("ratios", {}).get(key)
    if not x:
        return "–"
    return f"{x:.2f}×" + (" (suspect)" if key in e.get("suspect", {}) else "")


def _mib(n: int | None) -> str:
    return f"{n / 2**20:.1f} MiB" if n else "–"


def markdown_section(eff: dict, models: list[dict], env: dict) -> list[str]:
    """The report's efficiency section: one table and the notes that qualify it."""
    ref = eff["reference"]
    cfg_e = eff["config"]
    out = ["## Efficiency", "",
           f"Ratios are to {ref}"
           f"{' (first teacher)' if eff.get('reference_is_teacher') else ' (first model; no teacher given)'}: "
           f"size ratios = model / reference, speed-ups = reference time / model time. Size is compared at "
           f"equal dtype (every float tensor counted at fp32, INT8 tensors at 1 byte); the size as saved is "
           f"shown with its dtype. Speed is the encoder alone on random ids: GPU at batch "
           f"{cfg_e['gpu_batch_size']} × {cfg_e['gpu_seq_length']} in bf16; CPU at sequence "
           f"{cfg_e['cpu_seq_length']} with {cfg_e['cpu_threads']} threads ({env.get('cpu', '?')}), median of "
           f"at least {cfg_e.get('repeats', 5)} timed passes after {cfg_e.get('warmup', 2)} warm-up passes, "
           f"with the interquartile range (IQR) and the number of passes.", ""]
    batches = [str(b) for b in cfg_e["cpu_batch_sizes"]]
    header = ["model", "parameters", "× ref", "size at fp32", "× ref", "size as saved (dtype)", "GPU seq/s",
              "speed-up"]
    for b in batches:
        header += [f"CPU ms (batch {b})", "speed-up"]
    rows = []
    for m in models:
        e = eff["models"].get(m["name"])
        if e is None:
            continue
        gpu = f"{e['gpu_throughput']:.0f}" if e.get("gpu_throughput") else e.get("gpu_note", "–")
        saved = _mib(e.get("disk_bytes"))
        if e.get("weights_dtypes"):
            saved += f" ({', '.join(e['weights_dtypes'])})"
        row = [m["name"], f"{e['parameters'] / 1e6:.2f} M" if e.get("parameters") else "–",
               _fmt_ratio(e, "parameters"), _mib(e.get("size_fp32_bytes")), _fmt_ratio(e, "size_fp32"), saved,
               gpu, _fmt_ratio(e, "gpu_speedup")]
        for b in batches:
            t = e.get("cpu_latency", {}).get(b)
            if t:
                cell = f"{t['median']:.1f} (IQR {t['q1']:.1f}–{t['q3']:.1f}, n={t['repeats']})"
            else:
                ms = e.get("cpu_latency_ms", {}).get(b)
                cell = f"{ms:.1f}" if ms else e.get("cpu_note", "–")
            row += [cell, _fmt_ratio(e, f"cpu_speedup_b{b}")]
        rows.append(row)
    sep = [":---"] + ["---:"] * (len(header) - 1)
    out += ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out.append("")
    notes = [f"- {name}: {n}" for name, e in eff["models"].items() for n in e.get("notes", [])]
    notes += [f"- {name}: **suspect** ({key.replace('_', ' ')}): {why}" for name, e in eff["models"].items()
              for key, why in e.get("suspect", {}).items()]
    notes += [f"- {name}: noisy: {why}" for name, e in eff["models"].items() for why in e.get("noisy", {}).values()]
    if notes:
        out += notes + [""]
    return out
