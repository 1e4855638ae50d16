"""INT8 backends behind one interface (``base.Backend``): inc, torchao, ort."""

from __future__ import annotations

from compresso.strategies.quantize.backends.base import Backend, Job
from compresso.strategies.quantize.backends.inc import IncBackend
from compresso.strategies.quantize.backends.ort import OrtBackend
from compresso.strategies.quantize.backends.torchao import TorchaoBackend

BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (IncBackend, TorchaoBackend, OrtBackend)}


def get_backend(name: str) -> Backend:
    return BACKENDS[name]()


def available(name: str) -> bool:
    return BACKENDS[name].missing() is None


__all__ = ["Backend", "Job", "BACKENDS", "get_backend", "available"]
