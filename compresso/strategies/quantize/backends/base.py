"""The interface every INT8 backend implements (inc, torchao, ort): import check, quantize, save, load."""

from __future__ import annotations

import contextlib
import importlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from compresso.strategy import RunContext, StrategyError

QUANT_EXTRA = "pip install 'compresso[quant]' (neural-compressor-pt, which brings torchao, and onnxruntime)"


@dataclass
class Job:
    """Everything a backend needs to quantize one model."""

    fp32: torch.nn.Module
    """A private fp32 CPU copy (its word-embedding table already rounded to int8 when asked)."""
    input_names: list[str]
    output_key: str
    output_class: str
    quantized: list[str]
    """Names of the Linear layers to quantize; the others (``excluded``) stay fp32."""
    excluded: list[str]
    method: str
    calibration: list[dict[str, torch.Tensor]] = field(default_factory=list)
    """Batches of calibration inputs (static methods)."""
    params: Any = None
    ctx: RunContext | None = None


@contextlib.contextmanager
def errors_only(logger_name: str | None):
    """Raise one logger (``None``: the root logger) to ERROR for the duration, then restore it."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def quiet_backends():
    """INC logs every pass at INFO and some at WARNING ('please compile it'); keep runs readable."""
    return errors_only("neural_compressor")


class Backend(ABC):
    """One way of making and running an INT8 model. Stateless: instances are interchangeable."""

    name: ClassVar[str]
    methods: ClassVar[tuple[str, ...]]
    modules: ClassVar[tuple[str, ...]]
    """Modules that must import for this backend to work."""
    weights_file: ClassVar[str]
    """The file holding the INT8 model, named so that plain transformers does not pick it up."""
    compiles: ClassVar[bool] = False
    """Whether the ``compile`` parameter applies (torch.compile needs a C++ compiler)."""

    @classmethod
    def missing(cls) -> str | None:
        """None when the backend can run here, else why not."""
        for name in cls.modules:
            try:
                with quiet_backends():
                    importlib.import_module(name)
            except Exception as exc:  # ImportError, or a broken install failing inside the package
                return f"{name.split('.')[0]} cannot be imported ({type(exc).__name__}: {exc})"
        return None

    @classmethod
    def require(cls) -> None:
        reason = cls.missing()
        if reason:
            raise StrategyError(f"quantize backend {cls.name} needs {reason}. Install the optional backends: "
                                f"{QUANT_EXTRA}. Do not install the plain `neural-compressor` package next to it.")

    @abstractmethod
    def quantize(self, job: Job, compile: bool):
        """Return the runnable ``QuantizedModel`` with ``saved`` filled for ``save``."""

    @abstractmethod
    def save(self, qmodel, path: Path) -> dict:
        """Write the model's weights file(s) into ``path``; return extra entries for quantize.json."""

    @abstractmethod
    def load(self, path: Path, meta: dict, config, compile: bool):
        """Rebuild the ``QuantizedModel`` that ``save`` wrote (``meta`` is quantize.json)."""
