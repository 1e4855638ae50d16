"""Distillation training speed: compresso's ``distill`` step against the HuggingFace reference.

The reference is the DistilBERT distillation code (``huggingface/transformers-research-projects``,
folder ``distillation/``: ``distiller.py``, ``lm_seqs_dataset.py``). It is not part of compresso and
is never copied into it: point ``--reference-dir`` at a checkout of that folder.

Both run in this one process, one after the other, on the same randomly initialised models and the
same data, with the same loss definition:

  teacher   BertForMaskedLM, 12 layers, hidden 768, 12 heads, FFN 3072, vocabulary 50,000
  student   6 layers (0, 2, 4, 7, 9, 11) copied from the teacher, embeddings and MLM head too
            (compresso's ``build_student``; the reference gets an identical copy)
  data      synthetic documents of ``seq_len - 2`` single-token words, so every row is
            ``[CLS] doc [SEP]`` = ``seq_len`` tokens with no padding in both pipelines
  loss      5 * T^2 * KL(teacher || student at T=2) on masked tokens + 2 * MLM cross-entropy on
            masked tokens + 1 * (1 - cos) of last hidden states on every token; masking 15 % with
            80/10/10 (the reference runs with ``restrict_ce_to_mask``, its option for exactly this
            KL; ``--reference-ce all`` gives its default, KL on every token)
  optimiser AdamW, clipping at 5, linear warm-up/decay; same micro-batch and accumulation

Each run also reports its loss components averaged over all its steps (``mean_losses``; KL·T²,
MLM, cosine): on random models both sides land on the same values when the losses are the same.

compresso runs through its public strategy API (``DistillStrategy.apply`` on an in-memory teacher,
corpus file written to a temporary folder): its real input pipeline, bf16 autocast on GPU, teachers
in bf16 and inference mode, MLM head at masked positions only, fused AdamW. The timed window is
bounded through ``Trainer.on_step_end`` (the trainer's step hook): from the end of step
``warmup`` to the end of step ``warmup + steps``, with ``torch.cuda.synchronize()`` at both ends;
two more steps follow the window: the first is recorded by a host-sync census on CUDA (see
``SyncCensus``), the second logs and writes the final checkpoint, both outside the window.

The reference runs its own ``Distiller.prepare_batch_mlm`` and ``Distiller.step`` on batches from
its own ``LmSeqsDataset`` / ``DataLoader`` (exactly the body of ``Distiller.train``), timed the same
way. Runtime shims, installed only while its modules are imported or run (nothing of it is edited):

  * ``git`` (GitPython; ``utils.py`` imports it for ``git_log``, never called here), and
    ``tensorboardX`` where ``torch.utils.tensorboard`` cannot import (``SummaryWriter`` is only
    built by the master process; the benchmark runs the Distiller as non-master so no logs are
    written): empty stand-in modules if the real ones are missing.
  * precision ``fp16-amp`` (CUDA): the reference's ``--fp16`` needs NVIDIA apex's ``amp``, which
    NVIDIA deprecated in favour of ``torch.amp`` (apex has no wheels; it is compiled from source
    against the installed torch). A stand-in ``apex.amp`` implements its O1 level with torch:
    ``initialize`` keeps the fp32 student and optimiser and adds a dynamic ``torch.amp.GradScaler``;
    ``scale_loss`` scales the loss; ``master_params`` unscales the gradients before clipping; the
    optimiser step goes through the scaler (skipped on overflow); and each ``Distiller.step`` call
    runs under ``torch.autocast("cuda", torch.float16)`` (O1 casts matmuls to fp16 and keeps
    softmax/losses in fp32, which is what autocast does). The reference itself halves the teacher
    and rounds batches to multiples of 8, as with real apex.
  * precision ``fp32``: the reference unmodified, as it runs on modern torch without apex.

Usage (repository root):
  python benchmarks/distill_vs_reference.py --reference-dir PATH/distillation --device cuda --out result.json
  python benchmarks/distill_vs_reference.py --reference-dir PATH/distillation --tiny      # CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib
import importlib.machinery
import json
import os
import platform
import sys
import tempfile
import time
import types
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing compresso
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4


@dataclass(frozen=True)
class Sizes:
    vocab: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    student_layers: int
    seq_len: int
    batch_size: int
    grad_accum: int
    steps: int
    warmup: int


BASE = Sizes(vocab=50_000, hidden=768, layers=12, heads=12, ffn=3072, student_layers=6, seq_len=128,
             batch_size=64, grad_accum=1, steps=50, warmup=10)
TINY = Sizes(vocab=2_000, hidden=64, layers=4, heads=2, ffn=128, student_layers=2, seq_len=32,
             batch_size=8, grad_accum=1, steps=4, warmup=2)
LOSS = dict(temperature=2.0, alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0)
OPTIM = dict(lr=5e-4, eps=1e-6, max_grad_norm=5.0, warmup_ratio=0.05)


# --- shared inputs -----------------------------------------------------------------------------

def make_tokenizer(vocab_size: int):
    """A WordPiece tokenizer whose vocabulary is the special tokens and words ``w5``..``w{V-1}``:
    every such word is one token, so documents have exactly the length we write."""
    from transformers import BertTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL), vocab_size)})
    return BertTokenizerFast(vocab=vocab, do_lower_case=False)


def make_teacher(sizes: Sizes, seed: int):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=sizes.vocab, hidden_size=sizes.hidden, num_hidden_layers=sizes.layers,
                        num_attention_heads=sizes.heads, intermediate_size=sizes.ffn,
                        max_position_embeddings=max(512, sizes.seq_len), pad_token_id=0,
                        attn_implementation="sdpa")
    return BertForMaskedLM(config).eval()


def make_documents(sizes: Sizes, count: int, seed: int) -> np.ndarray:
    """(count, seq_len - 2) word ids, uniform over the non-special vocabulary."""
    rng = np.random.default_rng(seed)
    return rng.integers(len(SPECIAL), sizes.vocab, size=(count, sizes.seq_len - 2), dtype=np.int64)


def write_corpus(docs: np.ndarray, path: Path) -> None:
    with path.open("w") as f:
        for row in docs:
            f.write(" ".join(f"w{i}" for i in row) + "\n")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def allocated_mib(device: torch.device) -> float | None:
    return round(torch.cuda.memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class SyncCensus:
    """Records the host synchronisations of one optimiser step (CUDA only).

    ``torch.cuda.set_sync_debug_mode("warn")`` makes every blocking CUDA call (``.item()``,
    ``.tolist()``, a ``torch.tensor(..., device="cuda")`` from host data, ``nonzero``...) issue a
    warning; each is recorded with the Python line that caused it. Run on one untimed step after
    the timed window, so the warnings cost the timing nothing.
    """

    def __init__(self, device: torch.device):
        self.enabled = device.type == "cuda"
        self.records: list = []
        self._cm = None

    def start(self) -> None:
        if not self.enabled:
            return
        self._cm = warnings.catch_warnings(record=True)
        self.records = self._cm.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> None:
        if self._cm is None:
            return
        torch.cuda.set_sync_debug_mode(0)
        self._cm.__exit__(None, None, None)
        self._cm = None

    def report(self) -> dict | None:
        if not self.enabled:
            return None
        sites: dict[str, int] = {}
        for w in self.records:
            if "synchroniz" not in str(w.message):
                continue
            where = f"{Path(w.filename).name}:{w.lineno}"
            sites[where] = sites.get(where, 0) + 1
        return {"count": sum(sites.values()), "sites": dict(sorted(sites.items(), key=lambda kv: -kv[1]))}


def summarise(name: str, system: str, sizes: Sizes, seconds: float, peak: float | None, **extra) -> dict:
    tokens_per_step = sizes.batch_size * sizes.grad_accum * sizes.seq_len
    step_s = seconds / sizes.steps
    return {"name": name, "system": system, "step_ms": round(1000 * step_s, 2),
            "tokens_per_s": round(tokens_per_step / step_s, 1), "tokens_per_step": tokens_per_step,
            "timed_steps": sizes.steps, "warmup_steps": sizes.warmup, "peak_gpu_mib": peak, **extra}


# --- compresso ---------------------------------------------------------------------------------

def run_compresso(teachers: list, tokenizer, corpus: Path, sizes: Sizes, device: torch.device, work: Path,
                  workers: int | None, name: str) -> dict:
    """``DistillStrategy.apply`` with in-memory teachers; times steps warmup+1 .. warmup+steps."""
    from rich.console import Console

    from compresso.strategies.distill import DistillStrategy
    from compresso.strategies.distill.trainer import Trainer
    from compresso.strategy import ModelBundle, RunContext, TeacherRef

    class InMemoryTeacher(TeacherRef):
        def __init__(self, ref_name: str, bundle: ModelBundle):
            super().__init__(ref_name, f"in-memory:{ref_name}", None, False)
            self.bundle = bundle

        def load(self) -> ModelBundle:
            return self.bundle

    refs = {f"teacher{i}": InMemoryTeacher(f"teacher{i}", ModelBundle(t, tokenizer)) for i, t in enumerate(teachers)}
    params = DistillStrategy.Params(
        corpus=[corpus], seq_len=sizes.seq_len, batch_size=sizes.batch_size, grad_accum_steps=sizes.grad_accum,
        max_steps=sizes.warmup + sizes.steps + 2, heldout_documents=0, checkpoint_every=10**9,
        log_every=sizes.warmup + sizes.steps + 2,
        num_layers=sizes.student_layers, lr=OPTIM["lr"], adam_eps=OPTIM["eps"],
        max_grad_norm=OPTIM["max_grad_norm"], warmup_ratio=OPTIM["warmup_ratio"], num_workers=workers, **LOSS)
    stage = work / f"{name}-stage"
    stage.mkdir(parents=True)
    ctx = RunContext(stage_dir=stage, work_dir=work / f"{name}-work", device=device, seed=0, teachers=refs,
                     base_dir=work, console=Console(stderr=True))
    marks: dict = {}
    first, last = sizes.warmup, sizes.warmup + sizes.steps
    census = SyncCensus(device)

    def on_step_end(self, step: int) -> None:
        if step == first:
            sync(device)
            reset_peak(device)
            marks["t0"] = time.perf_counter()
        elif step == last:
            sync(device)
            marks["t1"] = time.perf_counter()
            marks["peak"] = peak_mib(device)
            census.start()  # the next step is a plain one: no log, no checkpoint
        elif step == last + 1:
            census.stop()

    original = Trainer.on_step_end
    Trainer.on_step_end = on_step_end
    try:
        before = allocated_mib(device)
        result = DistillStrategy(params).apply(ModelBundle(teachers[0], tokenizer), ctx)
    finally:
        census.stop()
        Trainer.on_step_end = original
    m = ctx.metrics
    expected_tokens = params.max_steps * sizes.batch_size * sizes.grad_accum * sizes.seq_len
    if m.get("tokens") != expected_tokens:
        raise RuntimeError(f"compresso trained on {m.get('tokens')} tokens, expected {expected_tokens}: rows "
                           f"were not all full, so tokens/s below would be wrong")
    report = json.loads((stage / "distill.json").read_text())
    del result
    free_memory(device)
    t2 = LOSS["temperature"] ** 2
    return summarise(name, "compresso", sizes, marks["t1"] - marks["t0"], marks["peak"],
                     teachers=len(teachers), precision="bf16 autocast, bf16 teachers" if device.type == "cuda"
                     else "fp32", resident_before_mib=before, host_syncs_one_step=census.report(),
                     whole_run_tokens_per_s=m.get("tokens_per_second"),
                     mean_losses={"kl": m.get("final_ce"), "kl_t2": None if m.get("final_ce") is None
                                   else round(m["final_ce"] * t2, 4),
                                   "mlm": m.get("final_mlm"), "cos": m.get("final_cos"), "total": m.get("final_loss")},
                     student_layers=report["student"]["layers_kept"],
                     loss_share={k[len("loss_share_"):]: v for k, v in m.items() if k.startswith("loss_share_")})


# --- the reference -----------------------------------------------------------------------------

def _stand_in(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    return module


@contextlib.contextmanager
def _modules(stand_ins: dict[str, types.ModuleType], force: bool = False):
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
    for f in ("distiller.py", "lm_seqs_dataset.py", "grouped_batch_sampler.py", "utils.py"):
        if not (ref_dir / f).is_file():
            raise SystemExit(f"--reference-dir {ref_dir}: no {f} there; point it at the `distillation` folder of "
                             f"huggingface/transformers-research-projects")
    import transformers  # noqa: F401  (before any stand-in exists, so its availability checks see the truth)

    class _Unused:
        def __init__(self, *a, **k):
            raise RuntimeError("the benchmark runs the reference without TensorBoard logging")

    stand_ins = {"git": _stand_in("git")}
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        stand_ins["tensorboardX"] = _stand_in("tensorboardX", SummaryWriter=_Unused)
    sys.path.insert(0, str(ref_dir))
    try:
        with _modules(stand_ins) as added:
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


def run_reference(ref_dir: Path, teacher, tokenizer, docs: np.ndarray, sizes: Sizes, device: torch.device,
                  precision: str, ce_scope: str, work: Path) -> dict:
    from compresso.strategies.distill.modeling import build_student, default_layers

    Distiller, LmSeqsDataset, stand_ins = import_reference(ref_dir)
    fp16 = precision == "fp16-amp"
    special = {"pad_token": tokenizer.pad_token_id, "unk_token": tokenizer.unk_token_id,
               "cls_token": tokenizer.cls_token_id, "sep_token": tokenizer.sep_token_id,
               "mask_token": tokenizer.mask_token_id}
    n_gpu = 1 if device.type == "cuda" else 0
    params = argparse.Namespace(
        # train.py's defaults and the README's DistilBERT command, with our sizes
        dump_path=str(work / "reference-dump"), multi_gpu=False, n_gpu=n_gpu, local_rank=device.index or 0,
        is_master=False, fp16=fp16, fp16_opt_level="O1", group_by_size=True, max_model_input_size=sizes.seq_len,
        batch_size=sizes.batch_size, gradient_accumulation_steps=sizes.grad_accum, n_epoch=1,
        temperature=LOSS["temperature"], alpha_ce=LOSS["alpha_ce"], alpha_mlm=LOSS["alpha_mlm"], alpha_clm=0.0,
        alpha_mse=0.0, alpha_cos=LOSS["alpha_cos"], mlm=True, mlm_mask_prop=0.15, word_mask=0.8, word_keep=0.1,
        word_rand=0.1, mlm_smoothing=0.7, restrict_ce_to_mask=ce_scope == "mask", special_tok_ids=special,
        weight_decay=0.0, learning_rate=OPTIM["lr"], adam_epsilon=OPTIM["eps"], warmup_prop=OPTIM["warmup_ratio"],
        max_grad_norm=OPTIM["max_grad_norm"], log_interval=10**9, checkpoint_interval=10**9)

    micro = (sizes.warmup + sizes.steps) * sizes.grad_accum
    rows = docs[: (micro + sizes.grad_accum) * sizes.batch_size]  # + one untimed step for the sync census
    data = [np.concatenate([[special["cls_token"]], r, [special["sep_token"]]]) for r in rows]
    dataset = LmSeqsDataset(params=params, data=data)
    # train.py: token probabilities from the corpus counts, smoothed, never a special token
    counts = np.bincount(np.concatenate(data), minlength=sizes.vocab)
    token_probs = np.maximum(counts, 1) ** -params.mlm_smoothing
    for idx in special.values():
        token_probs[idx] = 0.0

    ref_teacher = copy.deepcopy(teacher)
    ref_teacher.config.output_hidden_states = True
    student = build_student(teacher, default_layers(sizes.layers, sizes.student_layers))
    student.config.output_hidden_states = True
    student.train()
    ref_teacher.to(device)
    student.to(device)

    amp = ApexAmpO1(device.type) if fp16 else None
    # forced: a real apex today has no `amp`, and the reference imports it inside its step
    apex = {"apex": _stand_in("apex", amp=amp)} if fp16 else {}
    autocast = (lambda: torch.autocast(device.type, dtype=torch.float16)) if fp16 else contextlib.nullcontext
    free_memory(device)
    before = allocated_mib(device)
    marks: dict = {}
    census = SyncCensus(device)
    loss_sums: dict[str, float] = {}
    with _modules(apex, force=True):
        distiller = Distiller(params=params, dataset=dataset, token_probs=torch.from_numpy(token_probs),
                              student=student, teacher=ref_teacher)
        distiller.student.train()
        distiller.teacher.eval()
        done = 0
        for batch in distiller.dataloader:  # the body of Distiller.train()
            if n_gpu > 0:
                batch = tuple(t.to(f"cuda:{params.local_rank}") for t in batch)
            token_ids, attn_mask, lm_labels = distiller.prepare_batch_mlm(batch=batch)
            with autocast():
                distiller.step(input_ids=token_ids, attention_mask=attn_mask, lm_labels=lm_labels)
            # already host floats in the reference; summed for the mean over the run, like compresso's log
            for key, value in (("kl_t2", distiller.last_loss_ce), ("mlm", distiller.last_loss_mlm),
                               ("cos", distiller.last_loss_cos), ("total", distiller.last_loss)):
                loss_sums[key] = loss_sums.get(key, 0.0) + value
            done += 1
            if done == sizes.warmup * sizes.grad_accum:
                sync(device)
                reset_peak(device)
                marks["t0"] = time.perf_counter()
            if done == micro:
                sync(device)
                marks["t1"] = time.perf_counter()
                marks["peak"] = peak_mib(device)
                census.start()
            if done == micro + sizes.grad_accum:
                census.stop()
                break
        census.stop()
    if done != micro + sizes.grad_accum:
        raise RuntimeError(f"the reference's DataLoader gave {done} batches, expected {micro + sizes.grad_accum}")
    t2 = LOSS["temperature"] ** 2
    losses = {k: round(v / done, 4) for k, v in loss_sums.items()}
    losses["kl"] = round(loss_sums["kl_t2"] / done / t2, 5)
    scale = amp.scaler.get_scale() if fp16 else None
    attn = getattr(student.config, "_attn_implementation", None)
    del distiller, student, ref_teacher, dataset, data
    free_memory(device)
    desc = {"fp16-amp": "apex O1 emulated: fp16 autocast + GradScaler, fp16 teacher", "fp32": "fp32 (no apex)"}
    return summarise(f"reference-{precision}" + ("" if ce_scope == "mask" else "-ce-all"), "reference", sizes,
                     marks["t1"] - marks["t0"], marks["peak"], teachers=1, precision=desc[precision],
                     resident_before_mib=before, host_syncs_one_step=census.report(), mean_losses=losses,
                     kl_positions=ce_scope,
                     attn_implementation=attn, loss_scale=scale, stand_in_modules=stand_ins + list(apex))


# --- driver ------------------------------------------------------------------------------------

def environment(device: torch.device) -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "device": str(device), "cpus": os.cpu_count(),
           "host": platform.node(), "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
           "cudnn_tf32": torch.backends.cudnn.allow_tf32}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def print_table(runs: list[dict], ratios: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="distillation training step (timed steps only)")
    for col in ("run", "teachers", "precision", "step ms", "tokens/s", "peak GPU MiB", "host syncs/step", "KL·T²",
                "MLM", "cos"):
        table.add_column(col, justify="left" if col in ("run", "precision") else "right")
    for r in runs:
        fl = r.get("mean_losses") or {}
        fmt = (lambda v: "-" if v is None else f"{v:.3f}")
        table.add_row(r["name"], str(r["teachers"]), r["precision"], f"{r['step_ms']:.1f}",
                      f"{r['tokens_per_s']:,.0f}", "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:,.0f}",
                      str(r["host_syncs_one_step"]["count"]) if r.get("host_syncs_one_step") else "-",
                      fmt(fl.get("kl_t2")), fmt(fl.get("mlm")), fmt(fl.get("cos")))
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    for r in runs:
        if r.get("host_syncs_one_step") and r["host_syncs_one_step"]["sites"]:
            console.print(f"{r['name']}: host syncs in one step at {r['host_syncs_one_step']['sites']}")
    for k, v in ratios.items():
        console.print(f"{k}: [bold]{v:.2f}[/bold]")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--reference-dir", type=Path, help="the reference's `distillation` folder")
    ap.add_argument("--skip-reference", action="store_true", help="time compresso only")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--tiny", action="store_true", help="small models and batches (a CPU smoke run)")
    ap.add_argument("--steps", type=int, help="timed optimiser steps per run")
    ap.add_argument("--warmup", type=int, help="untimed optimiser steps before them")
    ap.add_argument("--batch-size", type=int, help="sequences per micro-batch")
    ap.add_argument("--grad-accum", type=int, help="micro-batches per optimiser step")
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--teachers", default="1,2", help="compresso teacher counts to run (comma list)")
    ap.add_argument("--reference-precision", default=None,
                    help="comma list of fp16-amp, fp32 (default: fp16-amp,fp32 on CUDA, fp32 on CPU)")
    ap.add_argument("--reference-ce", choices=("mask", "all"), default="mask",
                    help="reference KL on masked tokens (restrict_ce_to_mask; compresso's definition) or all")
    ap.add_argument("--workers", type=int, default=None, help="compresso tokenizer workers (default: its own)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for the run (default: torch's); 1 gives steady CPU timings on a "
                         "busy machine, where multi-threaded steps stall on descheduled threads")
    ap.add_argument("--out", type=Path, help="write results as JSON here")
    args = ap.parse_args(argv)

    if not args.skip_reference and args.reference_dir is None:
        ap.error("--reference-dir is required (or --skip-reference)")
    spec = args.device
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if spec == "auto" else spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {spec}: torch {torch.__version__} sees no CUDA device")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    sizes = TINY if args.tiny else BASE
    overrides = {k: v for k, v in dict(steps=args.steps, warmup=args.warmup, batch_size=args.batch_size,
                                       grad_accum=args.grad_accum, seq_len=args.seq_len).items() if v is not None}
    sizes = replace(sizes, **overrides)
    if sizes.warmup < 1 or sizes.steps < 1:
        ap.error("--warmup and --steps must be at least 1")
    precisions = [p.strip() for p in (args.reference_precision or ("fp16-amp,fp32" if device.type == "cuda"
                                                                   else "fp32")).split(",")]
    unknown = set(precisions) - {"fp16-amp", "fp32"}
    if unknown:
        ap.error(f"--reference-precision: unknown {', '.join(sorted(unknown))}; choose from fp16-amp, fp32")
    if "fp16-amp" in precisions and device.type != "cuda":
        ap.error("--reference-precision fp16-amp needs a CUDA device (the reference's fp16 path is GPU-only)")
    counts = [int(c) for c in args.teachers.split(",") if c.strip()]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, device, sizes, precisions, counts)
    finally:
        torch.set_num_threads(threads_before)


def _run(args, device: torch.device, sizes: Sizes, precisions: list[str], counts: list[int]) -> dict:

    tokenizer = make_tokenizer(sizes.vocab)
    teachers = [make_teacher(sizes, seed=i) for i in range(max(counts + [1]))]
    micro_batches = (sizes.warmup + sizes.steps + 2) * sizes.grad_accum
    docs = make_documents(sizes, micro_batches * sizes.batch_size + 256, seed=0)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="compresso-bench-") as tmp:
        work = Path(tmp)
        corpus = work / "corpus.txt"
        write_corpus(docs, corpus)
        for n in counts:
            runs.append(run_compresso(teachers[:n], tokenizer, corpus, sizes, device, work, args.workers,
                                      f"compresso-{n}-teacher{'s' if n > 1 else ''}"))
        if not args.skip_reference:
            for precision in precisions:
                runs.append(run_reference(args.reference_dir.resolve(), teachers[0], tokenizer, docs, sizes, device,
                                          precision, args.reference_ce, work))

    by = {r["name"]: r for r in runs}
    ratios = {}
    refs = [r for r in runs if r["system"] == "reference"]
    one = by.get("compresso-1-teacher")
    if one and refs:
        best = max(refs, key=lambda r: r["tokens_per_s"])
        ratios[f"compresso 1 teacher / {best['name']} (tokens/s)"] = one["tokens_per_s"] / best["tokens_per_s"]
    if one and "compresso-2-teachers" in by:
        ratios["compresso 2 teachers / 1 teacher (step time)"] = by["compresso-2-teachers"]["step_ms"] / one["step_ms"]
    print_table(runs, ratios)
    out = {"benchmark": "distill_vs_reference", "sizes": asdict(sizes), "loss": LOSS, "optimiser": OPTIM,
           "tiny": args.tiny, "reference_dir": None if args.skip_reference else str(args.reference_dir),
           "environment": {**environment(device), "torch_threads": torch.get_num_threads()}, "runs": runs, "ratios": {k: round(v, 3) for k, v in ratios.items()}}
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
