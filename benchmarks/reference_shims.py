"""Running the HuggingFace DistilBERT distiller on today's libraries, unmodified.

The reference is ``huggingface/transformers-research-projects``, folder ``distillation/``; the
benchmark uses only its ``distiller.py`` (``Distiller``), ``lm_seqs_dataset.py``
(``LmSeqsDataset``), ``grouped_batch_sampler.py`` and ``utils.py``. It is never copied into
compresso. Stand-ins, installed only while its modules are imported or run:

  * ``git`` (GitPython; ``utils.py`` imports it for ``git_log``, never called here), and
    ``tensorboardX`` where ``torch.utils.tensorboard`` cannot import (``SummaryWriter`` is only
    built by the master process; the benchmark runs the Distiller as non-master so no logs are
    written): empty stand-in modules if the real ones are missing.
  * precision ``fp16-amp``: the reference's ``--fp16`` needs NVIDIA apex's ``amp``, which NVIDIA
    deprecated in favour of ``torch.amp`` (apex has no wheels). ``ApexAmpO1`` implements its O1
    level with torch: ``initialize`` keeps the fp32 student and optimiser and adds a dynamic
    ``torch.amp.GradScaler``; ``scale_loss`` scales the loss; ``master_params`` unscales the
    gradients before clipping; the optimiser step goes through the scaler (skipped on overflow);
    and the caller runs each ``Distiller.step`` under ``torch.autocast("cuda", torch.float16)``
    (O1 casts matmuls to fp16 and keeps softmax/losses in fp32, which is what autocast does). The
    reference itself halves the teacher and rounds batches to multiples of 8, as with real apex.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import sys
import types
from pathlib import Path

import torch

REFERENCE_FILES = ("distiller.py", "lm_seqs_dataset.py", "grouped_batch_sampler.py", "utils.py")


def stand_in(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    return module


@contextlib.contextmanager
def swapped_modules(stand_ins: dict[str, types.ModuleType], force: bool = False):
    """Put stand-in modules in ``sys.modules`` for the duration: where no real one imports, or
    (``force``) in place of any real one, which is put back afterwards."""
    added, saved = [], {}
    for name, module in stand_ins.items():
        if not force:
            try:
                importlib.import_module(name)
                continue
            except ImportError:
                pass
        if name in sys.modules:
            saved[name] = sys.modules[name]
        sys.modules[name] = module
        added.append(name)
    try:
        yield added
    finally:
        for name in added:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def import_reference(ref_dir: Path):
    """``distiller.Distiller`` and ``lm_seqs_dataset.LmSeqsDataset`` from the reference folder."""
    for f in REFERENCE_FILES:
        if not (ref_dir / f).is_file():
            raise SystemExit(f"--reference-dir {ref_dir}: no {f} there; point it at the `distillation` folder of "
                             f"huggingface/transformers-research-projects")
    import transformers  # noqa: F401  (before any stand-in exists, so its availability checks see the truth)

    class _Unused:
        def __init__(self, *a, **k):
            raise RuntimeError("the benchmark runs the reference without TensorBoard logging")

    stand_ins = {"git": stand_in("git")}
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        stand_ins["tensorboardX"] = stand_in("tensorboardX", SummaryWriter=_Unused)
    sys.path.insert(0, str(ref_dir))
    try:
        with swapped_modules(stand_ins) as added:
            distiller = importlib.import_module("distiller")
            dataset = importlib.import_module("lm_seqs_dataset")
    finally:
        sys.path.remove(str(ref_dir))
    import logging

    logging.getLogger("utils").setLevel(logging.WARNING)  # its INFO logging is per batch-sampler call
    return distiller.Distiller, dataset.LmSeqsDataset, added


class ApexAmpO1:
    """Stand-in for ``apex.amp`` at opt_level O1, built on torch.amp (see the module docstring)."""

    def __init__(self, device_type: str = "cuda"):
        self.device_type = device_type
        self.scaler: torch.amp.GradScaler | None = None

    def initialize(self, model, optimizer, opt_level="O1"):
        if opt_level != "O1":
            raise ValueError(f"the apex stand-in implements O1 only, not {opt_level}")
        self.scaler = torch.amp.GradScaler(self.device_type)
        scaler, inner_step = self.scaler, optimizer.step

        def step(*args, **kwargs):
            optimizer.step = inner_step  # GradScaler.step calls optimizer.step itself
            try:
                scaler.step(optimizer, *args, **kwargs)
                scaler.update()
            finally:
                optimizer.step = step

        # the LR scheduler (built before amp.initialize) marks the step it wrapped; keep the mark so
        # it does not warn that the step was replaced (the wrapped step still runs, via the scaler)
        step._wrapped_by_lr_sched = getattr(inner_step, "_wrapped_by_lr_sched", False)
        optimizer.step = step
        return model, optimizer

    @contextlib.contextmanager
    def scale_loss(self, loss, optimizer):
        yield self.scaler.scale(loss)

    def master_params(self, optimizer):
        self.scaler.unscale_(optimizer)
        for group in optimizer.param_groups:
            yield from group["params"]
