"""What this CPU can do for INT8, and which backend ``backend: auto`` picks for it.

Capability classes, from ``/proc/cpuinfo`` flags and ``torch.backends.cpu.get_cpu_capability()``:

* ``avx512_vnni``: AVX-512 with VNNI (Intel Cascade Lake and later, AMD Zen 4 and later) or AMX;
* ``avx2_vnni``: AVX2 with AVX-VNNI but no AVX-512 (Intel Alder Lake and later client CPUs);
* ``avx2``: AVX2 without any VNNI (Intel Haswell to Comet Lake, AMD Zen 1-3): int8 products go
  through ``vpmaddubsw``, about half the int8 throughput of VNNI;
* ``other``: anything else (no int8 path is measured for it; auto falls back to the avx2 choice).

torch's own dispatch can be capped for emulation with ``ATEN_CPU_CAPABILITY=avx2`` (ATen kernels),
``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN, which runs inductor's int8 linears) and
``MKL_ENABLE_INSTRUCTIONS=AVX2`` (MKL's fp32 GEMM); these are honoured here as the capability
class, so that an emulated AVX2 run picks what a real AVX2 CPU would. ONNX Runtime's MLAS kernels
have no such switch (it dispatches on CPUID), so ort timings under emulation are not AVX2 timings.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache

AUTO_CHOICE: dict[str, tuple[str, str]] = {
    "avx512_vnni": ("inc", "static"),
    "avx2_vnni": ("ort", "static"),
    "avx2": ("ort", "static"),
    "other": ("ort", "static"),
}
"""Capability class → (backend, method) measured fastest at batch 1 and 8 for the INT8 6-layer
student by ``benchmarks/quantize_cpu.py``; the JSON behind each row, and how provisional it is, is
named in docs/quantization.md ("How auto chooses")."""

AUTO_FALLBACK = {"inc": ("ort", "torchao"), "ort": ("inc", "torchao"), "torchao": ("ort", "inc")}
"""When the preferred backend is not installed: the next ones to try, in order."""

EMULATION_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_capability() -> str | None:
    try:
        import torch

        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # torch without the query (old versions)
        return None


def capability_class(flags: frozenset[str] | None = None, torch_cap: str | None = None,
                     env: dict | None = None) -> str:
    """The capability class of this CPU, capped by the emulation variables when they are set."""
    flags = cpu_flags() if flags is None else flags
    env = os.environ if env is None else env
    torch_cap = torch_capability() if torch_cap is None else torch_cap
    avx512_vnni = "avx512_vnni" in flags or "amx_int8" in flags
    avx_vnni = "avx_vnni" in flags
    avx2 = "avx2" in flags
    capped = (str(env.get("ONEDNN_MAX_CPU_ISA", "")).upper().startswith("AVX2")
              or str(env.get("ATEN_CPU_CAPABILITY", "")).lower() == "avx2"
              or (torch_cap or "").upper() == "AVX2" and avx512_vnni)
    if capped:
        avx512_vnni = False
        avx_vnni = avx_vnni and str(env.get("ONEDNN_MAX_CPU_ISA", "")).upper() == "AVX2_VNNI"
    if avx512_vnni:
        return "avx512_vnni"
    if avx2 and avx_vnni:
        return "avx2_vnni"
    if avx2:
        return "avx2"
    return "other"


def has_vnni() -> bool:
    return capability_class() in ("avx512_vnni", "avx2_vnni")


def describe() -> dict:
    """What the benchmark and quantize.json record about the CPU."""
    flags = cpu_flags()
    return {"model": cpu_model(), "machine": platform.machine(), "cores": os.cpu_count(),
            "capability_class": capability_class(), "torch_capability": torch_capability(),
            "flags": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                                                      "avx512_bf16", "amx_int8", "amx_bf16", "fma", "f16c")),
            "emulation_env": {k: os.environ[k] for k in EMULATION_ENV if k in os.environ}}


def auto_backend(method: str | None, available) -> tuple[str, str]:
    """(backend, method) for ``backend: auto``: the table's choice for this CPU class, else the first
    installed fallback that offers ``method``. ``available(name)`` says whether a backend can run."""
    from compresso.strategies.quantize.params import BACKEND_METHODS

    preferred, preferred_method = AUTO_CHOICE[capability_class()]
    for name in (preferred, *AUTO_FALLBACK[preferred]):
        if method is not None and method not in BACKEND_METHODS[name]:
            continue
        if available(name):
            chosen = method or (preferred_method if name == preferred else BACKEND_METHODS[name][-1])
            return name, chosen
    return preferred, method or preferred_method  # nothing installed: require() then names the extra
