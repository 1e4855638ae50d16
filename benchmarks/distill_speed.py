"""Distillation training speed, measured so the numbers can be trusted: compresso against itself
(1 teacher, 2 teachers, a second teacher with another tokenizer, synthetic rows or real text) and
against the HuggingFace DistilBERT distiller, interleaved in one process.

Method
  * Every configuration runs in its own thread: compresso through its public strategy API
    (``DistillStrategy.apply`` on in-memory teachers: its real input pipeline with worker
    processes, bf16 autocast, bf16 teachers, fused AdamW), the reference through its own
    ``Distiller.prepare_batch_mlm`` / ``Distiller.step`` on its own ``LmSeqsDataset`` DataLoader
    (the body of ``Distiller.train``). A baton lets exactly one thread run at a time: after every
    optimiser step a configuration calls the gate (compresso: ``Trainer.on_step_end``), which
    either lets it go on or parks it and wakes the next one. So all configurations share one
    process, one GPU and its clocks, and are measured in turns ``A B C D A B C D ...``.
  * A turn is ``k`` consecutive steps between two ``torch.cuda.synchronize()`` calls; its sample is
    the mean step time of the turn. ``k`` is chosen per configuration so a turn lasts about
    ``--turn-s`` seconds (fixed once measurement starts).
  * Set-up (models, workers, the first step) runs one configuration after another and is reported
    as ``first_step_s`` (wall time from the thread's start to the end of its first step). It is
    outside the time budget: ``--budget-s`` is the warm-up and measurement time of each batch size,
    counted from the end of its set-up (on an H200 set-up takes 30-40 s per compresso
    configuration, which a budget that included it could spend whole).
  * Warm-up: turns, interleaved, until every configuration has done at least
    ``--warmup-min-steps`` steps and its last ``--steady-turns`` samples lie within
    ``--steady-spread`` of their median ((max - min) / median), or it reaches
    ``--warmup-max-steps`` or the warm-up's share of the budget (``--warmup-share``) is spent
    (then it is flagged ``steady: false``); the minimum is done even past that share. Warm-up
    samples are kept in the JSON but are not in the statistics.
  * Measurement: interleaved rounds until the batch size's budget is spent (at least
    ``--min-rounds``). Reported: median step time, min/max and the inter-quartile range of the
    samples, tokens/s at the median (real student tokens, counted by the pipeline).
  * Peak GPU memory of a configuration = its resident memory (what its setup and first step left
    allocated) + the largest growth above the process's allocation during its turns
    (``torch.cuda.max_memory_allocated`` reset at the start of each turn).
  * Host synchronisations per step: one extra step of each configuration under
    ``torch.cuda.set_sync_debug_mode("warn")``, every warning recorded with its source line.
  * Model FLOPs utilisation (MFU): model FLOPs per step (formula below and in
    docs/performance.md) / median step time / ``--peak-tflops`` (default: 790 TFLOP/s, the dense
    bf16 figure the project uses for the H200; recorded in the JSON).
  * ``--profile-steps N``: after the sync census, one more turn of N steps per configuration under
    ``torch.profiler`` (CPU + CUDA), started and stopped in the runner's own thread (``ProfileCapture``);
    summarised per ``compresso.*`` range of the step (``record_function`` ranges in the distill
    trainer and losses) and top kernels as each result's ``profile``; ``cx* - c1*`` range by range
    as each phase's ``profile_diff``. Not part of the step-time statistics.
  * The GPU: ``nvidia-smi`` (name, SM/memory clocks, utilisation, memory, power) before, between
    and after the phases, and the GPU's compute processes other than this one (should be none).

FLOPs per step (forward of one encoder layer per token: ``8h^2 + 4hf + 4Lh``, i.e. QKV+output
projections, FFN, attention scores and their weighted sum over a row of L tokens; the MLM head per
predicted token: ``2h^2 + 2hV``; backward = 2 x forward; embeddings, layer norms, losses ignored):

    compresso   T * [ 3 * (n_s * layer + m * head_s) + sum over teachers (n_t * layer + m * head_t) ]
    reference   T * [ 3 * (n_s * layer + head_s) + (n_t * layer + head_t) ]    (head on every token)

with T real student tokens per step and m the fraction of them where compresso runs the MLM
heads: the masked fraction (measured by the pipeline), or 1 for the configurations with the KL at
every token (``-all``); the reference runs its head everywhere. A teacher
with another tokenizer is counted with T tokens too (exact for the synthetic rows, where every
word is one token in both tokenizers).

Configurations (``--configs``):
  c1         compresso, 1 teacher (A)                              synthetic rows
  c2         compresso, 2 teachers with the student's tokenizer   synthetic rows
  cx         compresso, 2 teachers, the second (B) with another tokenizer (other ids, uncased,
             smaller vocabulary): alignment, vocabulary push-forward, word pooling every step
  ref        the reference, fp16 (apex O1 emulated: autocast + GradScaler)   synthetic rows
  ref-fp32   the reference in fp32 (how it runs on today's torch without apex)
  c1-text    compresso, 1 teacher, real text: ``--shared``/corpus with the cased fixture tokenizer
  cx-text    compresso, 2 teachers, real text: cased (student, A) and uncased (B) fixture tokenizers
  c1c-text, cxc-text   c1-text, cx-text compiled (what ``compile: auto`` runs on a GPU)
  c1g, cxg, c1g-text, cxg-text   c1c, cxc, c1c-text, cxc-text with the teachers' encoder passes
                         replayed from CUDA graphs (``teacher_cuda_graphs: true``; teachers then not compiled)
  c1s, cxs               c1c, cxc with the student's encoder pass, forward and backward, replayed from CUDA
                         graphs (``student_cuda_graphs: true``; its encoder then not compiled)
  c1gs, cxgs, c1gs-text  c1g, cxg, c1g-text with the student's pass replayed too
  c1c, c2c, cxc          c1, c2, cx with ``compile: true`` (regional torch.compile, fixed-width batches)
  c1c8, cxc8             c1c, cxc with float8 teachers (``teacher_float8: true``; compute capability 8.9+)
  c1-all, c1-all-chunk   1 teacher, KL at every token (``ce_scope: all``), without / with chunked head
                         losses (``loss_chunk_rows: --chunk-rows``); c1c-all-chunk compiled too;
                         cx-all-chunk the cross-tokenizer pair, chunked
  ref-all, ref-fp32-all  the reference with the KL at every token (``restrict_ce_to_mask`` off)

Every lever runs beside its plain twin in the same interleaved run; the ratios say what it pays.
Both sides train at a constant learning rate (``OPTIM``) and each configuration's first-step
losses (initial weights, the same on every side) are recorded, so the loss values can be compared.

Models are random, base size: teachers BertForMaskedLM 12 x 768, 12 heads, FFN 3072; teacher A
and the student have vocabulary ``--vocab``'s first size (default 16,000: the cased fixture
tokenizer's), teacher B the second (14,000: the uncased one's); the student keeps 6 of A's layers
(0, 2, 4, 7, 9, 11). Synthetic documents are ``seq_len - 2`` one-token words, so every synthetic row
is exactly ``seq_len`` tokens, in both tokenizers. The loss everywhere: 5 T^2 KL (T = 2) on masked
tokens + 2 MLM + 1 cosine of last hidden states.

The reference is not part of compresso and is never copied into it: ``--reference-dir`` points at
the ``distillation`` folder of huggingface/transformers-research-projects (files used:
``distiller.py``, ``lm_seqs_dataset.py``, ``grouped_batch_sampler.py``, ``utils.py``). Its runtime
stand-ins (GitPython, TensorBoard, apex ``amp``) are described in ``reference_shims.py``.

Usage (repository root):
  python benchmarks/distill_speed.py --reference-dir PATH/distillation --shared ../shared --out DIR
  python benchmarks/distill_speed.py --tiny --configs c1,cx --batch-sizes 8 --budget-s 20   # CPU smoke
"""

from __future__ import annotations

import argparse
import copy
import gc
import io
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing compresso
sys.path.insert(0, str(Path(__file__).resolve().parent))

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4
LOSS = dict(temperature=2.0, alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0)
# A constant learning rate on both sides (no warm-up, no decay; the reference's own schedule is
# replaced): the strategy's warm-up is a share of max_steps, which is endless here, and the
# reference's is a share of one pass over its rows, so left alone the two would train at
# unrelated rates and their losses could not be compared.
OPTIM = dict(lr=5e-4, eps=1e-6, max_grad_norm=5.0, warmup_ratio=0.0)
FIXTURE_TOKENIZERS = ("ro-bert-small-cased", "ro-robert-small-uncased")
CONFIGS = {
    "c1": dict(system="compresso", teachers=("A",), data="synthetic", label="compresso, 1 teacher"),
    "c2": dict(system="compresso", teachers=("A", "A2"), data="synthetic",
               label="compresso, 2 teachers, same tokenizer"),
    "cx": dict(system="compresso", teachers=("A", "B"), data="synthetic",
               label="compresso, 2 teachers, cross-tokenizer"),
    "ref": dict(system="reference", precision="fp16-amp", data="synthetic",
                label="reference (HF DistilBERT), fp16 apex-O1 emulated"),
    "ref-fp32": dict(system="reference", precision="fp32", data="synthetic", label="reference (HF DistilBERT), fp32"),
    # The speed levers, each against its eager / unchunked twin in the same run.
    "c1c": dict(system="compresso", teachers=("A",), data="synthetic", compile=True,
                label="compresso, 1 teacher, compiled"),
    "c2c": dict(system="compresso", teachers=("A", "A2"), data="synthetic", compile=True,
                label="compresso, 2 teachers, same tokenizer, compiled"),
    "cxc": dict(system="compresso", teachers=("A", "B"), data="synthetic", compile=True,
                label="compresso, 2 teachers, cross-tokenizer, compiled"),
    # KL at every position (ce_scope all, DistilBERT's default): logits of every token, the memory hog.
    "c1-all": dict(system="compresso", teachers=("A",), data="synthetic", scope="all",
                   label="compresso, 1 teacher, KL at every token"),
    "c1-all-chunk": dict(system="compresso", teachers=("A",), data="synthetic", scope="all", chunk=True,
                         label="compresso, 1 teacher, KL at every token, chunked losses"),
    "c1c-all-chunk": dict(system="compresso", teachers=("A",), data="synthetic", scope="all", chunk=True,
                          compile=True, label="compresso, 1 teacher, KL at every token, chunked, compiled"),
    "cx-all-chunk": dict(system="compresso", teachers=("A", "B"), data="synthetic", scope="all", chunk=True,
                         label="compresso, 2 teachers, cross-tokenizer, KL at every token, chunked"),
    "ref-all": dict(system="reference", precision="fp16-amp", data="synthetic", scope="all",
                    label="reference (HF DistilBERT), fp16, KL at every token"),
    "ref-fp32-all": dict(system="reference", precision="fp32", data="synthetic", scope="all",
                         label="reference (HF DistilBERT), fp32, KL at every token"),
    "c1-text": dict(system="compresso", teachers=("A",), data="text", label="compresso, 1 teacher, real text"),
    "cx-text": dict(system="compresso", teachers=("A", "B"), data="text",
                    label="compresso, 2 teachers, cross-tokenizer, real text"),
    # compiled student + the teachers' encoder passes replayed from CUDA graphs (teacher_cuda_graphs: true; teachers not compiled)
    "c1g": dict(system="compresso", teachers=("A",), data="synthetic", compile=True, graphs=True,
                label="compresso, 1 teacher, compiled, teacher CUDA graphs"),
    "cxg": dict(system="compresso", teachers=("A", "B"), data="synthetic", compile=True, graphs=True,
                label="compresso, 2 teachers, cross-tokenizer, compiled, teacher CUDA graphs"),
    "c1g-text": dict(system="compresso", teachers=("A",), data="text", compile=True, graphs=True,
                     label="compresso, 1 teacher, real text, compiled, teacher CUDA graphs"),
    "cxg-text": dict(system="compresso", teachers=("A", "B"), data="text", compile=True, graphs=True,
                     label="compresso, 2 teachers, cross-tokenizer, real text, compiled, teacher CUDA graphs"),
    # the student's encoder pass, forward and backward, replayed from CUDA graphs (student_cuda_graphs: true;
    # its encoder then not compiled): teachers compiled (s) or replayed too (gs)
    "c1s": dict(system="compresso", teachers=("A",), data="synthetic", compile=True, student_graphs=True,
                label="compresso, 1 teacher, compiled, student CUDA graphs"),
    "cxs": dict(system="compresso", teachers=("A", "B"), data="synthetic", compile=True, student_graphs=True,
                label="compresso, 2 teachers, cross-tokenizer, compiled, student CUDA graphs"),
    "c1gs": dict(system="compresso", teachers=("A",), data="synthetic", compile=True, graphs=True,
                 student_graphs=True, label="compresso, 1 teacher, teacher and student CUDA graphs"),
    "cxgs": dict(system="compresso", teachers=("A", "B"), data="synthetic", compile=True, graphs=True,
                 student_graphs=True, label="compresso, 2 teachers, cross-tokenizer, teacher and student CUDA graphs"),
    "c1gs-text": dict(system="compresso", teachers=("A",), data="text", compile=True, graphs=True,
                      student_graphs=True, label="compresso, 1 teacher, real text, teacher and student CUDA graphs"),
    # compiled, the teachers' encoder layers in float8 (teacher_float8: true; GPUs of compute capability 8.9+)
    "c1c8": dict(system="compresso", teachers=("A",), data="synthetic", compile=True, float8=True,
                 label="compresso, 1 teacher, compiled, float8 teachers"),
    "cxc8": dict(system="compresso", teachers=("A", "B"), data="synthetic", compile=True, float8=True,
                 label="compresso, 2 teachers, cross-tokenizer, compiled, float8 teachers"),
    "c1c-text": dict(system="compresso", teachers=("A",), data="text", compile=True,
                     label="compresso, 1 teacher, real text, compiled"),
    "cxc-text": dict(system="compresso", teachers=("A", "B"), data="text", compile=True,
                     label="compresso, 2 teachers, cross-tokenizer, real text, compiled"),
}


@dataclass(frozen=True)
class Sizes:
    hidden: int
    layers: int
    heads: int
    ffn: int
    student_layers: int
    seq_len: int


BASE = Sizes(hidden=768, layers=12, heads=12, ffn=3072, student_layers=6, seq_len=128)
TINY = Sizes(hidden=64, layers=4, heads=2, ffn=128, student_layers=2, seq_len=32)


# --- inputs ------------------------------------------------------------------------------------

def synthetic_tokenizer(vocab_size: int, other: bool = False):
    """Words ``w5``..``w{V-1}``, one token each. ``other``: another tokenizer for the same words:
    other ids (a fixed permutation), uncased; words beyond its size are unknown to it."""
    from transformers import BertTokenizerFast

    words = [f"w{i}" for i in range(len(SPECIAL), vocab_size)]
    if other:
        words = list(np.random.default_rng(1).permutation(words))
    vocab = {tok: i for i, tok in enumerate(SPECIAL + words)}
    return BertTokenizerFast(vocab=vocab, do_lower_case=other)


def make_teacher(sizes: Sizes, vocab: int, seed: int):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=sizes.hidden, num_hidden_layers=sizes.layers,
                        num_attention_heads=sizes.heads, intermediate_size=sizes.ffn,
                        max_position_embeddings=max(512, sizes.seq_len), pad_token_id=0,
                        attn_implementation="sdpa")
    return BertForMaskedLM(config).eval()


def synthetic_rows(vocab: int, seq_len: int, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(len(SPECIAL), vocab, size=(count, seq_len - 2), dtype=np.int64)


def write_synthetic_corpus(rows: np.ndarray, path: Path) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(" ".join(f"w{i}" for i in row) + "\n")


# --- measuring ---------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nvidia_smi() -> dict:
    """GPU state and the compute processes on it (other than this one), from nvidia-smi."""
    fields = "index,name,clocks.sm,clocks.mem,clocks.max.sm,utilization.gpu,memory.used,power.draw,temperature.gpu"
    out: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        gpus = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20, check=True).stdout
        out["gpus"] = [dict(zip(fields.split(","), (v.strip() for v in line.split(","))))
                       for line in gpus.strip().splitlines()]
        apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,process_name,used_gpu_memory",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20,
                              check=True).stdout
        procs = [dict(zip(("pid", "name", "used_mib"), (v.strip() for v in line.split(","))))
                 for line in apps.strip().splitlines() if line.strip()]
        out["other_processes"] = [p for p in procs if p["pid"] != str(os.getpid())]
    except (OSError, subprocess.SubprocessError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


class SyncCensus:
    """Host synchronisations of one step, under ``torch.cuda.set_sync_debug_mode("warn")`` (CUDA)."""

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
            if "synchroniz" in str(w.message):
                path = Path(w.filename)  # with its folder: "__init__.py:1270" alone does not say which module
                where = f"{path.parent.name}/{path.name}:{w.lineno}"
                sites[where] = sites.get(where, 0) + 1
        return {"count": sum(sites.values()), "sites": dict(sorted(sites.items(), key=lambda kv: -kv[1]))}


PROFILE_PREFIX = "compresso."  # the ranges compresso's distillation step marks (losses.py, trainer.py)
# the ranges that do not nest in one another; together they are the step
TOP_LEVEL_RANGE = re.compile(r"compresso\.(teacher\d+\.(same|cross)|student\.forward|loss\.head|loss\.hidden"
                             r"|backward|optimizer)")


class ProfileCapture:
    """``torch.profiler`` over one turn of a runner, started and stopped in the runner's own thread:
    a profiler started in another thread does not see that thread's operators (nor its
    ``record_function`` ranges). Autograd's backward threads inherit the profiler from it."""

    def __init__(self, device: torch.device):
        from torch.profiler import ProfilerActivity, profile

        self.device = device
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        self.profiler = profile(activities=activities)
        self.pending, self.running = True, False

    @staticmethod
    def initialise(device: torch.device) -> None:
        """Start and stop a profiler once in the main thread: the profiler's backend (kineto)
        initialises in the thread that registered it, and refuses when a runner thread is first."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities):
            torch.zeros(1, device=device).add_(1)

    def start(self) -> None:
        self.pending = False
        self.profiler.start()
        self.running = True

    def stop(self) -> None:
        sync(self.device)  # the turn's kernels are done before the profiler collects them
        self.profiler.stop()
        self.running = False


def summarise_profile(profiler, steps: int, wall_s: float, device: torch.device, n_ops: int = 40) -> dict:
    """Per step: device time in all, every ``compresso.*`` range (device and CPU time, inclusive), and
    the kernels with the most device time. Without a CUDA device the times are CPU times, and the
    operators with the most self CPU time stand for the kernels.

    A range's device time is the span of its GPU-side annotation (first kernel start to last
    kernel end, idle gaps included) where the profiler records one, else the kernels launched under
    its CPU range in the runner's thread (which misses kernels launched by autograd's own threads:
    ``compresso.backward``'s work)."""
    from torch.autograd import DeviceType

    on_device = device.type == "cuda"

    def per_step(us: float) -> float:  # µs summed over the turn -> ms per step
        return round(us / 1000 / steps, 4)

    ranges: dict[str, dict] = {}
    for e in profiler.events():
        if not e.name.startswith(PROFILE_PREFIX):
            continue
        r = ranges.setdefault(e.name, {"calls": 0, "cpu_us": 0.0, "kernel_us": 0.0, "span_us": 0.0, "spans": 0})
        if e.device_type == DeviceType.CPU:
            r["calls"] += 1
            r["cpu_us"] += e.cpu_time_total
            r["kernel_us"] += e.device_time_total
        else:  # the GPU-side annotation of the range
            r["span_us"] += e.time_range.elapsed_us()
            r["spans"] += 1
    regions = {}
    for name in sorted(ranges):
        r = ranges[name]
        device_ms = None
        if on_device:
            device_ms = per_step(r["span_us"] if r["spans"] else r["kernel_us"])
        regions[name] = {
            "ms": device_ms if on_device else per_step(r["cpu_us"]),
            "device_ms": device_ms,
            "device_source": None if not on_device else ("gpu_annotation" if r["spans"] else "kernels_in_cpu_range"),
            "kernel_ms": per_step(r["kernel_us"]) if on_device else None,
            "cpu_ms": per_step(r["cpu_us"]), "calls_per_step": round(r["calls"] / steps, 3)}
    # The host's wall time outside the top-level ranges (next batch, the benchmark's hook, the
    # turn's closing sync); and on a GPU the top-level ranges' device time summed, to hold against
    # the kernels' total (the ranges' spans count idle gaps; kernels autograd launches from its own
    # threads may fall outside ``compresso.backward``'s annotation).
    top = [v for name, v in regions.items() if TOP_LEVEL_RANGE.fullmatch(name)]
    host_outside = 1000 * wall_s / steps - sum(v["cpu_ms"] for v in top)
    # On a GPU the kernels (and copies) themselves, as torch's own table totals them: an operator's
    # self device time is its kernels' again. On the CPU the operators, by self CPU time.
    ops = [a for a in profiler.key_averages()
           if not a.key.startswith(PROFILE_PREFIX) and not getattr(a, "is_user_annotation", False)
           and (a.device_type != DeviceType.CPU) == on_device]

    def self_us(a) -> float:
        return a.self_device_time_total if on_device else a.self_cpu_time_total

    ops.sort(key=self_us, reverse=True)
    total_us = sum(self_us(a) for a in ops)
    return {"steps": steps, "basis": "device" if on_device else "cpu",
            "wall_ms_per_step": round(1000 * wall_s / steps, 4),
            "total_ms_per_step": per_step(total_us),
            "ranges": regions, "host_outside_ranges_ms_per_step": round(host_outside, 4),
            "top_level_device_ms_per_step": round(sum(v["device_ms"] for v in top), 4) if on_device else None,
            "top_ops": [{"name": a.key[:80], "ms": per_step(self_us(a)),
                         "calls_per_step": round(a.count / steps, 3)} for a in ops[:n_ops]]}


class GCPauses:
    """Seconds the interpreter spent in garbage collection, by generation (``gc.callbacks``): a
    full collection walks every Python object, and a process holding compiled graphs and several
    models has millions, so a gen-2 pass inside a turn shows up in its step time."""

    def __init__(self):
        self.seconds = [0.0, 0.0, 0.0]
        self.counts = [0, 0, 0]
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._t0
            self.counts[info["generation"]] += 1

    def snapshot(self) -> tuple[list[float], list[int]]:
        return list(self.seconds), list(self.counts)


GC_PAUSES = GCPauses()


class StopRun(Exception):
    """Raised inside a configuration's thread when the benchmark is done with it."""


class Runner:
    """One configuration, run in its own thread; ``after_step`` is its only contact with the gate."""

    kl_scale = 1.0

    def __init__(self, name: str, spec: dict, gate: "Gate"):
        self.name, self.spec, self.gate = name, spec, gate
        self.thread = threading.Thread(target=self._main, name=f"bench-{name}", daemon=True)
        self.error: BaseException | None = None
        self.error_text = ""
        self.finished = False
        self.steps = 0
        self.turn_left = 0
        self.tokens = 0  # real student tokens and masked ones so far (host counts)
        self.masked = 0
        self.loss_sum: torch.Tensor | None = None  # [kl_t2, mlm, cos] summed over measured steps, on device
        self.loss_steps = 0
        self.first_losses: torch.Tensor | None = None  # [kl_t2, mlm, cos] of the first step: same weights on all sides
        self.record_losses = False
        self.census: SyncCensus | None = None
        self.result: dict = {}
        self.stream_cfg = None  # compresso: the strategy's input pipeline settings, from its trainer
        self.capture: ProfileCapture | None = None  # a profiled turn: started and stopped in this thread
        self.input_wait_s = 0.0  # compresso: host seconds its trainer waited for the next batch, so far
        # CPU seconds of this thread during its turns, so far (up to each turn's closing sync): the host's
        # own work per step. Near the step time, the host sets the pace; well under it, the GPU does.
        self.cpu_s = 0.0
        self.cpu_mark = 0.0  # set in the runner's own thread (_main, turn_done): CPU time counts per thread
        # How long each turn's closing synchronisation waited: the GPU work the host had queued
        # ahead. Near zero, the GPU was waiting for the host; a few ms, the host ran ahead.
        self.closing_sync_s = 0.0

    def _main(self) -> None:
        self.cpu_mark = time.thread_time()
        self.marks = {"start": time.perf_counter()}  # set-up milestones (wall clock), see setup_breakdown
        try:
            self.run()
        except StopRun:
            pass
        except BaseException as exc:  # handed to the scheduler
            self.error = exc
            self.error_text = traceback.format_exc()
        finally:
            self.finished = True
            self.gate.release(self)

    def run(self) -> None:
        raise NotImplementedError

    def after_step(self, tokens: int, masked: int, losses: torch.Tensor | None) -> None:
        self.steps += 1
        self.tokens, self.masked = tokens, masked
        if self.steps == 1 and losses is not None:
            self.first_losses = losses.clone()
        if self.record_losses and losses is not None:
            self.loss_sum = losses if self.loss_sum is None else self.loss_sum + losses
            self.loss_steps += 1
        self.turn_left -= 1
        if self.turn_left > 0:
            return
        if self.census is not None:
            self.census.stop()
        if self.capture is not None and self.capture.running:
            self.capture.stop()
        self.gate.turn_done(self)
        if self.capture is not None and self.capture.pending:
            self.capture.start()  # the turn the scheduler asked to profile begins with the next step


class Gate:
    """The baton: exactly one runner thread executes at a time; the scheduler (main thread) hands
    it out turn by turn and times each turn between two device synchronisations."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cond = threading.Condition()
        self.holder: Runner | None = None
        self.stopping = False
        self.turn_end: float = 0.0

    # runner side
    def turn_done(self, runner: Runner) -> None:
        runner.cpu_s += time.thread_time() - runner.cpu_mark  # before the sync, whose wait is not host work
        t_sync = time.perf_counter()
        sync(self.device)
        runner.closing_sync_s = time.perf_counter() - t_sync
        with self.cond:
            self.turn_end = time.perf_counter()
            self.holder = None
            self.cond.notify_all()
            while self.holder is not runner and not self.stopping:
                self.cond.wait()
            if self.stopping:
                raise StopRun
        runner.cpu_mark = time.thread_time()

    def release(self, runner: Runner) -> None:
        with self.cond:
            if self.holder is runner:
                self.holder = None
            self.cond.notify_all()

    # scheduler side
    def run_turn(self, runner: Runner, steps: int, start_thread: bool = False,
                 census: SyncCensus | None = None) -> float:
        """Let ``runner`` do ``steps`` steps; returns the wall seconds between the two syncs."""
        runner.turn_left = steps
        sync(self.device)
        if census is not None:
            runner.census = census
            census.start()  # stopped by the runner at the end of its step, before the closing sync
        with self.cond:
            t0 = time.perf_counter()
            self.holder = runner
            if start_thread:
                runner.thread.start()
            self.cond.notify_all()
            while self.holder is runner and not runner.finished:
                self.cond.wait()
        if runner.error is not None:
            raise RuntimeError(f"{runner.name} failed:\n{runner.error_text}") from runner.error
        if runner.finished:
            raise RuntimeError(f"{runner.name} stopped before its turn ended")
        return self.turn_end - t0

    def stop_all(self, runners: list[Runner]) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        for r in runners:
            if r.thread.is_alive():
                r.thread.join(timeout=120)


# --- compresso ---------------------------------------------------------------------------------

_RUNNER_OF_THREAD: dict[int, Runner] = {}


def _train_with_mark(original):
    """Trainer.train, marking when the strategy's set-up is done and training starts."""
    def train(trainer):
        runner = _RUNNER_OF_THREAD.get(threading.get_ident())
        if runner is not None:
            runner.marks["train"] = time.perf_counter()
        return original(trainer)
    return train


def _stream_with_mark(original):
    """BatchStream, marking when its first batch reaches the training thread (workers started)."""
    class MarkedStream(original):
        def __iter__(self):
            runner = _RUNNER_OF_THREAD.get(threading.get_ident())
            for i, batch in enumerate(super().__iter__()):
                if i == 0 and runner is not None:
                    runner.marks.setdefault("first_batch", time.perf_counter())
                yield batch
    return MarkedStream


def setup_breakdown(marks: dict, end: float) -> dict:
    """Seconds of a configuration's set-up: the strategy's own (models, views, teachers to the
    device), waiting for the first batch (worker processes start, first chunk), the first step
    (first kernels, torch.compile's compilation)."""
    start = marks["start"]
    train, first = marks.get("train", start), marks.get("first_batch", marks.get("train", start))
    return {"strategy_s": round(train - start, 3), "first_batch_s": round(first - train, 3),
            "first_step_s": round(end - first, 3)}


def _trainer_hook(trainer, step: int) -> None:
    runner = _RUNNER_OF_THREAD.get(threading.get_ident())
    if runner is None:
        return
    if runner.stream_cfg is None:
        runner.stream_cfg = trainer.stream_cfg
    runner.input_wait_s = trainer.input_wait_s
    losses = trainer.last_losses
    # [KL, MLM, cos] on the device (KL scaled by T² when read at the end): no host copy in the step
    parts = None if losses is None else losses.parts[:3].detach()
    runner.after_step(trainer.tokens_seen, trainer.masked_seen, parts)


class CompressoRunner(Runner):
    kl_scale = LOSS["temperature"] ** 2  # its KL part is unscaled; the reference reports KL·T²
    def __init__(self, name, spec, gate, *, teachers: dict, student_bundle, corpus: list[Path], batch_size: int,
                 sizes: Sizes, device: torch.device, work: Path, workers: int | None, chunk_rows: int):
        super().__init__(name, spec, gate)
        self.chunk_rows = chunk_rows
        self.teachers, self.student_bundle, self.corpus = teachers, student_bundle, corpus
        self.batch_size, self.sizes, self.device, self.work, self.workers = batch_size, sizes, device, work, workers

    def run(self) -> None:
        from rich.console import Console

        from compresso.strategies.distill import DistillStrategy
        from compresso.strategy import RunContext, TeacherRef

        class InMemoryTeacher(TeacherRef):
            def __init__(self, ref_name, bundle):
                super().__init__(ref_name, f"in-memory:{ref_name}", None, False)
                self.bundle = bundle

            def load(self):
                return self.bundle

        _RUNNER_OF_THREAD[threading.get_ident()] = self
        never = 10**9
        params = DistillStrategy.Params(
            corpus=self.corpus, seq_len=self.sizes.seq_len, batch_size=self.batch_size, max_steps=never,
            heldout_documents=0, checkpoint_every=never, log_every=never, num_layers=self.sizes.student_layers,
            lr=OPTIM["lr"], adam_eps=OPTIM["eps"], max_grad_norm=OPTIM["max_grad_norm"],
            warmup_ratio=OPTIM["warmup_ratio"], num_workers=self.workers,
            # the reference's restrict_ce_to_mask=True is ce_scope 'masked' (its False: 'all')
            ce_scope=self.spec.get("scope", "masked"), compile=self.spec.get("compile", False),
            teacher_cuda_graphs=self.spec.get("graphs", False),
            student_cuda_graphs=self.spec.get("student_graphs", False),
            teacher_float8=self.spec.get("float8", False),
            loss_chunk_rows=self.chunk_rows if self.spec.get("chunk") else None, **LOSS)
        stage = self.work / f"{self.name}-b{self.batch_size}-stage"
        stage.mkdir(parents=True)
        ctx = RunContext(stage_dir=stage, work_dir=self.work / f"{self.name}-b{self.batch_size}-work",
                         device=self.device, seed=0,
                         teachers={n: InMemoryTeacher(n, b) for n, b in self.teachers.items()},
                         base_dir=self.work, console=Console(file=io.StringIO()))
        DistillStrategy(params).apply(self.student_bundle, ctx)


# --- the reference -----------------------------------------------------------------------------

class ReferenceRunner(Runner):
    def __init__(self, name, spec, gate, *, ref_dir: Path, teacher, tokenizer, rows: np.ndarray, batch_size: int,
                 sizes: Sizes, device: torch.device, work: Path):
        super().__init__(name, spec, gate)
        self.ref_dir, self.teacher, self.tokenizer, self.rows = ref_dir, teacher, tokenizer, rows
        self.batch_size, self.sizes, self.device, self.work = batch_size, sizes, device, work

    def run(self) -> None:
        from compresso.strategies.distill.modeling import build_student, default_layers
        from reference_shims import ApexAmpO1, import_reference, stand_in, swapped_modules

        Distiller, LmSeqsDataset, stand_ins = import_reference(self.ref_dir)
        precision = self.spec["precision"]
        fp16 = precision == "fp16-amp"
        tok, device, sizes = self.tokenizer, self.device, self.sizes
        special = {"pad_token": tok.pad_token_id, "unk_token": tok.unk_token_id, "cls_token": tok.cls_token_id,
                   "sep_token": tok.sep_token_id, "mask_token": tok.mask_token_id}
        n_gpu = 1 if device.type == "cuda" else 0
        params = argparse.Namespace(
            # train.py's defaults and the README's DistilBERT command, with our sizes
            dump_path=str(self.work / "reference-dump"), multi_gpu=False, n_gpu=n_gpu, local_rank=device.index or 0,
            is_master=False, fp16=fp16, fp16_opt_level="O1", group_by_size=True,
            max_model_input_size=sizes.seq_len, batch_size=self.batch_size, gradient_accumulation_steps=1,
            n_epoch=1, temperature=LOSS["temperature"], alpha_ce=LOSS["alpha_ce"], alpha_mlm=LOSS["alpha_mlm"],
            alpha_clm=0.0, alpha_mse=0.0, alpha_cos=LOSS["alpha_cos"], mlm=True, mlm_mask_prop=0.15,
            word_mask=0.8, word_keep=0.1, word_rand=0.1, mlm_smoothing=0.7,
            restrict_ce_to_mask=self.spec.get("scope", "masked") == "masked",
            special_tok_ids=special, weight_decay=0.0, learning_rate=OPTIM["lr"], adam_epsilon=OPTIM["eps"],
            warmup_prop=OPTIM["warmup_ratio"], max_grad_norm=OPTIM["max_grad_norm"], log_interval=10**9,
            checkpoint_interval=10**9)
        data = [np.concatenate([[special["cls_token"]], r, [special["sep_token"]]]) for r in self.rows]
        dataset = LmSeqsDataset(params=params, data=data)
        vocab = self.teacher.config.vocab_size
        # train.py: token probabilities from the corpus counts, smoothed, never a special token
        counts = np.bincount(np.concatenate(data), minlength=vocab)
        token_probs = np.maximum(counts, 1) ** -params.mlm_smoothing
        for idx in special.values():
            token_probs[idx] = 0.0
        teacher = copy.deepcopy(self.teacher)
        teacher.config.output_hidden_states = True
        student = build_student(self.teacher, default_layers(sizes.layers, sizes.student_layers))
        student.config.output_hidden_states = True
        student.train()
        teacher.to(device)
        student.to(device)
        amp = self.amp = ApexAmpO1(device.type) if fp16 else None
        apex = {"apex": stand_in("apex", amp=amp)} if fp16 else {}
        self.result = {"precision": {"fp16-amp": "apex O1 emulated: fp16 autocast + GradScaler, fp16 teacher",
                                     "fp32": "fp32 (no apex)"}[precision],
                       "stand_in_modules": stand_ins + list(apex)}
        with swapped_modules(apex, force=True):
            distiller = Distiller(params=params, dataset=dataset, token_probs=torch.from_numpy(token_probs),
                                  student=student, teacher=teacher)
            # a constant learning rate, as on compresso's side (see OPTIM)
            distiller.scheduler = torch.optim.lr_scheduler.LambdaLR(distiller.optimizer, lambda step: 1.0)
            distiller.student.train()
            distiller.teacher.eval()
            tokens = masked = 0
            while True:  # epochs over the rows, as long as the benchmark wants steps
                for batch in distiller.dataloader:  # the body of Distiller.train()
                    n_tokens = int(batch[1].sum())  # lengths, still on the host
                    if n_gpu > 0:
                        batch = tuple(t.to(f"cuda:{params.local_rank}") for t in batch)
                    token_ids, attn_mask, lm_labels = distiller.prepare_batch_mlm(batch=batch)
                    with torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
                        distiller.step(input_ids=token_ids, attention_mask=attn_mask, lm_labels=lm_labels)
                    tokens += n_tokens
                    masked += math.ceil(params.mlm_mask_prop * n_tokens)  # prepare_batch_mlm's own count
                    # already host floats in the reference
                    losses = torch.tensor([distiller.last_loss_ce, distiller.last_loss_mlm, distiller.last_loss_cos])
                    self.after_step(tokens, masked, losses)


# --- FLOPs -------------------------------------------------------------------------------------

def flops_per_token(sizes: Sizes, system: str, vocabs: list[int], head_fraction: float) -> float:
    """Model FLOPs per real student token of one optimiser step (see the module docstring)."""
    h, f, L = sizes.hidden, sizes.ffn, sizes.seq_len
    layer = 8 * h * h + 4 * h * f + 4 * L * h
    head = [2 * h * h + 2 * h * v for v in vocabs]  # student's (= teacher A's) first
    if system == "reference":
        return 3 * (sizes.student_layers * layer + head[0]) + (sizes.layers * layer + head[0])
    student = 3 * (sizes.student_layers * layer + head_fraction * head[0])
    teachers = sum(sizes.layers * layer + head_fraction * head[i] for i in range(len(vocabs)))
    return student + teachers


# --- the driver --------------------------------------------------------------------------------

def host_per_turn(st: dict, timed_input: bool) -> dict:
    """Every timed turn (warm-up, then measurement) with what the host spent per step waiting for
    input and collecting garbage; the medians are over the measured turns. A turn far slower than
    the median with neither explained points at something else (the GPU, other processes). The
    input wait is compresso's trainer's own count (``timed_input``); the reference's loader has none."""
    steps = st["warmup"] + st["samples"]
    wait, gcms, full, cpu = st["turn_input_wait_ms"], st["turn_gc_ms"], st["turn_gc_full"], st["turn_cpu_ms"]
    ahead = st["turn_closing_sync_ms"]
    if not timed_input:
        wait = [None] * len(wait)
    k = len(st["warmup"])
    slowest = max(range(len(steps)), key=steps.__getitem__) if steps else None
    def r3(x):
        return None if x is None else round(x, 3)

    return {"turns": [{"step_ms": round(1000 * t, 3), "input_wait_ms": r3(w), "gc_ms": round(g, 3),
                       "full_collections": n, "thread_cpu_ms": r3(c), "closing_sync_ms": r3(a)}
                      for t, w, g, n, c, a in zip(steps, wait, gcms, full, cpu, ahead)],
            "measured_from_turn": k,
            # the training thread's CPU time per step (its own host work, not time spent waiting)
            "thread_cpu_ms_median": r3(statistics.median(cpu[k:])) if cpu[k:] else None,
            # the GPU work still queued when each turn ended (its closing sync's wait)
            "closing_sync_ms_median": r3(statistics.median(ahead[k:])) if ahead[k:] else None,
            "input_wait_ms_median": r3(statistics.median(wait[k:])) if timed_input and wait[k:] else None,
            "gc_ms_median": round(statistics.median(gcms[k:]), 3) if gcms[k:] else None,
            "slowest_turn": None if slowest is None else {
                "turn": slowest, "step_ms": round(1000 * steps[slowest], 3),
                "input_wait_ms": r3(wait[slowest]), "gc_ms": round(gcms[slowest], 3),
                "thread_cpu_ms": r3(cpu[slowest])}}


def quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def steady(samples: list[float], turns: int, spread: float) -> bool:
    if len(samples) < turns:
        return False
    last = samples[-turns:]
    med = statistics.median(last)
    return (max(last) - min(last)) / med <= spread


def run_batch_size(batch_size: int, names: list[str], inputs: dict, args, device: torch.device,
                   budget_s: float, work: Path, log) -> dict:
    gate = Gate(device)
    runners: list[Runner] = []
    for name in names:
        spec = CONFIGS[name]
        if spec["system"] == "compresso":
            data = inputs[spec["data"]]
            teachers = {t: data["bundles"][t] for t in spec["teachers"]}
            runners.append(CompressoRunner(name, spec, gate, teachers=teachers, student_bundle=data["bundles"]["A"],
                                           corpus=data["corpus"], batch_size=batch_size, sizes=args.sizes,
                                           device=device, work=work, workers=args.workers,
                                           chunk_rows=args.chunk_rows))
        else:
            data = inputs["synthetic"]
            runners.append(ReferenceRunner(name, spec, gate, ref_dir=args.reference_dir, teacher=data["models"]["A"],
                                           tokenizer=data["bundles"]["A"].tokenizer, rows=data["rows"],
                                           batch_size=batch_size, sizes=args.sizes, device=device, work=work))
    phase_start = time.perf_counter()
    state = {r.name: {"resident_mib": None, "first_step_s": None, "warmup": [], "samples": [], "turn_steps": 2,
                      "peak_growth": 0, "warm_steps": 0, "turn_input_wait_ms": [], "turn_gc_ms": [],
                      "turn_gc_full": [], "turn_cpu_ms": [], "turn_closing_sync_ms": []} for r in runners}

    def allocated() -> int:
        return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0

    def turn(r: Runner, steps: int) -> float:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        base = allocated()
        wait0, cpu0, (gc0, gcn0) = r.input_wait_s, r.cpu_s, GC_PAUSES.snapshot()
        seconds = gate.run_turn(r, steps)
        if device.type == "cuda":
            state[r.name]["peak_growth"] = max(state[r.name]["peak_growth"],
                                               torch.cuda.max_memory_allocated(device) - base)
        # Where a slow turn's time went on the host: waiting for the input pipeline (compresso), and
        # garbage collection (any thread's, but only this runner's thread runs during its turn).
        gc1, gcn1 = GC_PAUSES.snapshot()
        st = state[r.name]
        st["turn_input_wait_ms"].append(1000 * (r.input_wait_s - wait0) / steps)
        st["turn_gc_ms"].append(1000 * (sum(gc1) - sum(gc0)) / steps)
        st["turn_gc_full"].append(gcn1[2] - gcn0[2])
        st["turn_cpu_ms"].append(1000 * (r.cpu_s - cpu0) / steps)
        st["turn_closing_sync_ms"].append(1000 * r.closing_sync_s)
        return seconds / steps

    try:
        # Set-up, one configuration after the other: its models, workers and first step.
        for r in runners:
            before = allocated()
            t0 = time.perf_counter()
            gate.run_turn(r, 1, start_thread=True)
            state[r.name]["first_step_s"] = round(time.perf_counter() - t0, 3)
            state[r.name]["setup"] = setup_breakdown(r.marks, time.perf_counter()) if "marks" in vars(r) else None
            state[r.name]["resident_mib"] = (allocated() - before) / 2**20
            su = state[r.name]["setup"]
            log(f"  batch {batch_size} · {r.name}: set up and first step in {state[r.name]['first_step_s']:.1f} s"
                + (f" (strategy {su['strategy_s']:.1f} s, first batch {su['first_batch_s']:.1f} s, first step "
                   f"{su['first_step_s']:.1f} s)" if su and r.spec["system"] == "compresso" else ""))
        # The budget (warm-up + measurement) starts now: set-up is not in it.
        setup_end = time.perf_counter()
        setup_s = setup_end - phase_start
        warm_deadline = setup_end + budget_s * args.warmup_share
        min_warm_steps = min(args.warmup_min_steps, args.warmup_max_steps)

        # Warm-up: interleaved turns until every configuration is steady (or capped).
        warming = list(runners)
        while warming:
            for r in list(warming):
                st = state[r.name]
                per_step = turn(r, st["turn_steps"])
                st["warmup"].append(per_step)
                st["warm_steps"] += st["turn_steps"]
                st["turn_steps"] = max(2, min(args.max_turn_steps, round(args.turn_s / max(per_step, 1e-6))))
                if st["warm_steps"] < min_warm_steps:
                    continue  # the guaranteed minimum, even past the warm-up's share of the budget
                if steady(st["warmup"], args.steady_turns, args.steady_spread):
                    st["steady"] = True
                    warming.remove(r)
                elif st["warm_steps"] >= args.warmup_max_steps or time.perf_counter() > warm_deadline:
                    st["steady"] = False
                    warming.remove(r)
        gpu_mid = nvidia_smi() if device.type == "cuda" else None

        # Measurement: interleaved rounds until the budget is spent.
        for r in runners:
            r.record_losses = True
            state[r.name]["tokens_at_start"], state[r.name]["masked_at_start"] = r.tokens, r.masked
            state[r.name]["steps_at_start"] = r.steps
        rounds = 0
        measure_deadline = setup_end + budget_s
        round_s = 0.0
        while rounds < args.min_rounds or (time.perf_counter() + round_s < measure_deadline
                                           and rounds < args.max_rounds):
            t_round = time.perf_counter()
            for r in runners:
                state[r.name]["samples"].append(turn(r, state[r.name]["turn_steps"]))
            rounds += 1
            round_s = time.perf_counter() - t_round  # the next round would end past the budget: stop
        for r in runners:
            r.record_losses = False
            st = state[r.name]
            st["tokens_measured"] = r.tokens - st["tokens_at_start"]
            st["masked_measured"] = r.masked - st["masked_at_start"]
            st["steps_measured"] = r.steps - st["steps_at_start"]
            if r.loss_sum is None:
                st["mean_losses"] = None
            else:
                kl, mlm, cos = (v / max(r.loss_steps, 1) for v in r.loss_sum.tolist())
                st["mean_losses"] = {"kl_t2": round(kl * r.kl_scale, 4), "mlm": round(mlm, 4), "cos": round(cos, 4)}
            if r.first_losses is None:
                st["first_step_losses"] = None
            else:
                kl, mlm, cos = r.first_losses.tolist()
                st["first_step_losses"] = {"kl_t2": round(kl * r.kl_scale, 4), "mlm": round(mlm, 4),
                                           "cos": round(cos, 4)}
        # Host synchronisations of one step each (not timed).
        for r in runners:
            census = SyncCensus(device)
            try:
                gate.run_turn(r, 1, census=census)
            finally:
                census.stop()
                r.census = None
            state[r.name]["host_syncs_one_step"] = census.report()
        # One more turn of each configuration under the profiler (not timed with the others).
        if args.profile_steps:
            ProfileCapture.initialise(device)
            for r in runners:
                capture = r.capture = ProfileCapture(device)
                try:
                    seconds = gate.run_turn(r, args.profile_steps)
                finally:
                    r.capture = None
                state[r.name]["profile"] = summarise_profile(capture.profiler, args.profile_steps, seconds, device)
                log(f"  batch {batch_size} · {r.name}: {args.profile_steps} steps profiled")
    finally:
        gate.stop_all(runners)
        _RUNNER_OF_THREAD.clear()

    results = []
    for r in runners:
        st, spec = state[r.name], r.spec
        samples = st["samples"]
        med = statistics.median(samples)
        q1, q3 = quartiles(samples)
        tokens_per_step = st["tokens_measured"] / max(st["steps_measured"], 1)
        masked_fraction = st["masked_measured"] / max(st["tokens_measured"], 1)
        vocabs = [inputs[spec["data"]]["vocab"][t] for t in spec.get("teachers", ("A",))]
        # compresso runs the heads where the KL is taken: masked tokens, or every token (scope all)
        head_fraction = 1.0 if spec.get("scope") == "all" else masked_fraction
        fpt = flops_per_token(args.sizes, spec["system"], vocabs, head_fraction)
        flops = fpt * tokens_per_step
        peak = None
        if device.type == "cuda":
            peak = round(st["resident_mib"] + st["peak_growth"] / 2**20, 1)
        results.append({
            "config": r.name, "label": spec["label"], "system": spec["system"], "data": spec["data"],
            "batch_size": batch_size, "teachers": len(spec.get("teachers", ("A",))),
            "step_ms": {"median": round(1000 * med, 3), "min": round(1000 * min(samples), 3),
                        "max": round(1000 * max(samples), 3), "q1": round(1000 * q1, 3), "q3": round(1000 * q3, 3),
                        "samples": [round(1000 * s, 3) for s in samples]},
            "tokens_per_step": round(tokens_per_step, 1), "masked_fraction": round(masked_fraction, 4),
            "tokens_per_s": round(tokens_per_step / med, 1),
            "model_tflop_per_step": round(flops / 1e12, 4), "flop_per_token": round(fpt),
            "mfu": None if args.peak_tflops is None else round(flops / med / (args.peak_tflops * 1e12), 4),
            "peak_gpu_mib": peak, "resident_mib": None if device.type != "cuda" else round(st["resident_mib"], 1),
            "host_syncs_one_step": st["host_syncs_one_step"], "mean_losses": st["mean_losses"],
            "first_step_losses": st["first_step_losses"], "scope": spec.get("scope", "masked"),
            "compiled": spec.get("compile", False), "loss_chunk_rows": args.chunk_rows if spec.get("chunk") else None,
            "first_step_s": st["first_step_s"], "setup": st.get("setup"),
            "warmup": {"steady": st["steady"], "steps": st["warm_steps"],
                       "turn_ms": [round(1000 * s, 3) for s in st["warmup"]]},
            "turn_steps": st["turn_steps"], "turns_measured": len(samples), "profile": st.get("profile"),
            "host": host_per_turn(st, timed_input=spec["system"] == "compresso"),
            **r.result})
        if getattr(r, "amp", None) is not None:
            results[-1]["loss_scale"] = r.amp.scaler.get_scale()
    if batch_size == args.pipeline_batch:
        for r in runners:
            if r.spec["data"] == "text" and r.stream_cfg is not None:
                log(f"  batch {batch_size} · {r.name}: input pipeline alone for {args.pipeline_s:.0f} s")
                next(x for x in results if x["config"] == r.name)["pipeline"] = \
                    pipeline_throughput(r.stream_cfg, args.pipeline_s)
    return {"batch_size": batch_size, "wall_s": round(time.perf_counter() - phase_start, 1),
            "setup_s": round(setup_s, 1), "budget_s": round(budget_s, 1), "gpu_after_warmup": gpu_mid,
            "compile": compile_stats() if any(CONFIGS[n].get("compile") for n in names) else None,
            "runs": results}


def compile_stats() -> dict:
    """torch.compile's counters so far in this process: graphs made, graph breaks with their
    reasons, recompilations (a compiled configuration that fell back to eager code would show here)."""
    from torch._dynamo.utils import counters

    return {"stats": dict(counters["stats"]), "graph_breaks": dict(counters["graph_break"]),
            "recompiles": dict(counters["recompiles"]) if "recompiles" in counters else {}}


def pipeline_throughput(cfg, seconds: float) -> dict:
    """Tokens/s of the strategy's input pipeline alone (``BatchStream`` with the settings the
    strategy chose), drained as fast as it delivers; the rate over the second half of the window,
    when the batches buffered at start-up are used up."""
    from compresso.strategies.distill.data import BatchStream

    t0 = time.perf_counter()
    marks = []
    with BatchStream(cfg) as stream:
        batches = iter(stream)
        next(batches)
        t1 = time.perf_counter()
        tokens = 0
        while time.perf_counter() - t1 < seconds:
            tokens += next(batches).tokens
            marks.append((time.perf_counter(), tokens))
    half = next(i for i, (t, _) in enumerate(marks) if t - t1 >= seconds / 2) if marks else 0
    if len(marks) - half < 2:
        rate = tokens / max(marks[-1][0] - t1, 1e-9) if marks else 0.0
    else:
        rate = (marks[-1][1] - marks[half][1]) / (marks[-1][0] - marks[half][0])
    return {"workers": cfg.num_workers, "batch_size": cfg.batch_size, "views": len(cfg.views),
            "tokens_per_s": round(rate, 1), "batches": len(marks), "first_batch_s": round(t1 - t0, 3),
            "window_s": seconds}


def finish_phases(phases: list[dict]) -> None:
    """Sustained real-text tokens/s (the GPU's rate, unless the input pipeline alone is slower) and
    the ratios of every phase."""
    pipeline = {r["config"]: r["pipeline"] for p in phases for r in p["runs"] if r.get("pipeline")}
    for phase in phases:
        for r in phase["runs"]:
            if r["config"] in pipeline:
                r["sustained_tokens_per_s"] = round(min(r["tokens_per_s"], pipeline[r["config"]]["tokens_per_s"]), 1)
        by = {r["config"]: r for r in phase["runs"]}
        ratios, best_reference = {}, None

        def step_ratio(a, b):
            if a in by and b in by:
                ratios[f"{a} / {b} step time"] = round(by[a]["step_ms"]["median"] / by[b]["step_ms"]["median"], 3)

        for one, many in (("c1", "c2"), ("c1", "cx"), ("c1c", "c2c"), ("c1c", "cxc"), ("c1g", "cxg"),
                          ("c1g-text", "cxg-text"), ("c1s", "cxs"), ("c1gs", "cxgs"),
                          ("c1c8", "cxc8")):
            step_ratio(many, one)
        # each lever against its eager / unchunked twin, same run
        for lever, plain in (("c1c", "c1"), ("c2c", "c2"), ("cxc", "cx"), ("c1g", "c1c"), ("cxg", "cxc"),
                             ("c1s", "c1c"), ("cxs", "cxc"), ("c1gs", "c1g"), ("cxgs", "cxg"), ("c1gs", "c1c"),
                             ("c1c8", "c1c"), ("cxc8", "cxc"),
                             ("c1-all-chunk", "c1-all"),
                             ("c1c-all-chunk", "c1-all"), ("c1c-all-chunk", "c1-all-chunk"), ("cx-all-chunk", "c1-all-chunk")):
            step_ratio(lever, plain)
            if lever in by and plain in by and by[lever]["peak_gpu_mib"] and by[plain]["peak_gpu_mib"]:
                ratios[f"{lever} / {plain} peak memory"] = round(by[lever]["peak_gpu_mib"] / by[plain]["peak_gpu_mib"], 3)
        for name in ("c1", "c1c", "c1g", "c1s", "c1gs", "c1c8", "c1-all", "c1-all-chunk", "c1c-all-chunk"):
            if name not in by:
                continue
            one = by[name]
            # against the reference's faster mode with the same loss (KL on masked tokens, or everywhere)
            refs = [r for r in phase["runs"] if r["system"] == "reference" and r.get("scope") == one.get("scope")]
            if not refs:
                continue
            best = max(refs, key=lambda r: r["tokens_per_s"])
            if name == "c1":
                best_reference = best["config"]
            ratios[f"{name} / reference tokens/s"] = round(one["tokens_per_s"] / best["tokens_per_s"], 3)
            if one["peak_gpu_mib"] and best["peak_gpu_mib"]:
                ratios[f"{name} / reference peak memory"] = round(one["peak_gpu_mib"] / best["peak_gpu_mib"], 3)
        for text, synth in (("c1-text", "c1"), ("cx-text", "cx"), ("c1c-text", "c1c"), ("cxc-text", "cxc"),
                            ("c1g-text", "c1g"), ("cxg-text", "cxg"), ("c1gs-text", "c1gs")):
            if text in by and synth in by:
                t = by[text].get("sustained_tokens_per_s", by[text]["tokens_per_s"])
                ratios[f"{text} / {synth} tokens/s"] = round(t / by[synth]["tokens_per_s"], 3)
        if "cx-text" in by and "c1-text" in by:
            ratios["cx-text / c1-text step time"] = round(by["cx-text"]["step_ms"]["median"]
                                                          / by["c1-text"]["step_ms"]["median"], 3)
        phase["ratios"], phase["best_reference"] = ratios, best_reference
        phase["profile_diff"] = profile_diffs(by)


# the second teacher with another tokenizer against one teacher, each pair in the same run
PROFILE_PAIRS = (("c1", "cx"), ("c1c", "cxc"), ("c1-all-chunk", "cx-all-chunk"), ("c1-text", "cx-text"),
                 ("c1c-text", "cxc-text"), ("c1g", "cxg"), ("c1g-text", "cxg-text"))


def profile_diffs(by: dict) -> dict:
    """``cx* - c1*``: what the cross-tokenizer teacher adds per step, range by range (ms per step)."""
    diffs = {}
    for one, cross in PROFILE_PAIRS:
        a, b = (by.get(one) or {}).get("profile"), (by.get(cross) or {}).get("profile")
        if not a or not b:
            continue
        rows = {}
        for name in sorted(set(a["ranges"]) | set(b["ranges"])):
            x, y = (a["ranges"].get(name) or {}).get("ms", 0.0), (b["ranges"].get(name) or {}).get("ms", 0.0)
            rows[name] = {one: x, cross: y, "diff": round(y - x, 4)}
        diffs[f"{cross} - {one}"] = {
            "basis": b["basis"], "total_ms": {one: a["total_ms_per_step"], cross: b["total_ms_per_step"],
                                              "diff": round(b["total_ms_per_step"] - a["total_ms_per_step"], 4)},
            "ranges": rows}
    return diffs


def build_inputs(names: list[str], args, work: Path, max_batch: int) -> dict:
    from compresso.strategy import ModelBundle

    sizes = args.sizes
    data_kinds = {CONFIGS[n]["data"] for n in names}
    teacher_names = {t for n in names for t in CONFIGS[n].get("teachers", ("A",))}
    inputs: dict = {}
    vocab_a, vocab_b = args.vocab
    if "text" in data_kinds:
        from transformers import AutoTokenizer

        tdir = args.shared / "teachers"
        toks = [AutoTokenizer.from_pretrained(tdir / t) for t in FIXTURE_TOKENIZERS]
        vocab_a, vocab_b = len(toks[0]), len(toks[1])  # the models must fit the real tokenizers
        files = sorted((args.shared / "corpus").glob("*.txt*"))
        if not files:
            raise SystemExit(f"--shared {args.shared}: no corpus/*.txt* files for the real-text configurations")
    models = {"A": make_teacher(sizes, vocab_a, 1)}
    if "A2" in teacher_names:
        models["A2"] = make_teacher(sizes, vocab_a, 2)
    if "B" in teacher_names:
        models["B"] = make_teacher(sizes, vocab_b, 3)
    vocab = {"A": vocab_a, "A2": vocab_a, "B": vocab_b}
    if "synthetic" in data_kinds:
        tok_a, tok_b = synthetic_tokenizer(vocab_a), synthetic_tokenizer(vocab_b, other=True)
        toks_of = {"A": tok_a, "A2": tok_a, "B": tok_b}
        # enough rows that no configuration repeats a row during the run (about 2 minutes per batch size)
        rows = synthetic_rows(vocab_a, sizes.seq_len, max(4096, args.synthetic_rows or 0, 8 * max_batch))
        path = work / "synthetic.txt"
        write_synthetic_corpus(rows, path)
        inputs["synthetic"] = {"bundles": {k: ModelBundle(m, toks_of[k]) for k, m in models.items()},
                               "models": models, "rows": rows, "corpus": [path], "vocab": vocab}
    if "text" in data_kinds:
        toks_of = {"A": toks[0], "A2": toks[0], "B": toks[1]}
        inputs["text"] = {"bundles": {k: ModelBundle(m, toks_of[k]) for k, m in models.items()}, "models": models,
                          "corpus": files, "vocab": vocab,
                          "tokenizers": {k: str(args.shared / "teachers" / FIXTURE_TOKENIZERS[i])
                                         for i, k in enumerate(("A", "B"))}}
    return inputs


def environment(device: torch.device) -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "device": str(device), "cpus": os.cpu_count(),
           "host": platform.node(), "torch_threads": torch.get_num_threads(),
           "matmul_tf32": torch.backends.cuda.matmul.allow_tf32}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    try:
        env["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    return env


def print_tables(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    for phase in out["phases"]:
        table = Table(title=f"distillation step · batch {phase['batch_size']} × {out['sizes']['seq_len']} · "
                            f"{out['environment'].get('gpu', out['environment']['device'])}")
        for col in ("config", "step ms median", "min–max", "IQR", "tokens/s", "MFU", "peak MiB", "syncs/step",
                    "steady", "first step s", "KL·T²", "MLM", "cos"):
            table.add_column(col, justify="left" if col == "config" else "right")
        for r in phase["runs"]:
            s = r["step_ms"]
            losses = r["mean_losses"] or {}
            table.add_row(r["config"], f"{s['median']:.2f}", f"{s['min']:.2f}–{s['max']:.2f}",
                          f"{s['q1']:.2f}–{s['q3']:.2f}", f"{r['tokens_per_s']:,.0f}",
                          "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %",
                          "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:,.0f}",
                          "-" if not r["host_syncs_one_step"] else str(r["host_syncs_one_step"]["count"]),
                          "yes" if r["warmup"]["steady"] else "NO", f"{r['first_step_s']:.1f}",
                          *(f"{losses[k]:.3f}" if k in losses else "-" for k in ("kl_t2", "mlm", "cos")))
        console.print(table)
        for k, v in phase["ratios"].items():
            console.print(f"  {k}: [bold]{v:.3f}[/bold]")
        for r in phase["runs"]:
            if r.get("pipeline"):
                pl = r["pipeline"]
                console.print(f"  {r['config']}: input pipeline alone {pl['tokens_per_s']:,.0f} tokens/s with "
                              f"{pl['workers']} workers (first batch after {pl['first_batch_s']:.1f} s)")
            if "sustained_tokens_per_s" in r and r["sustained_tokens_per_s"] < r["tokens_per_s"]:
                console.print(f"  {r['config']}: sustained {r['sustained_tokens_per_s']:,.0f} tokens/s (pipeline-bound)")
            if r.get("first_step_losses"):
                fl = r["first_step_losses"]
                console.print(f"  {r['config']}: first step (initial weights) KL·T² {fl['kl_t2']:.4f}, "
                              f"MLM {fl['mlm']:.4f}, cos {fl['cos']:.4f}")
            if r["host_syncs_one_step"] and r["host_syncs_one_step"]["sites"]:
                console.print(f"  {r['config']}: host syncs at {r['host_syncs_one_step']['sites']}")
            host = r.get("host") or {}
            if host.get("slowest_turn"):
                sl = host["slowest_turn"]
                wait = "not timed" if sl["input_wait_ms"] is None else f"{sl['input_wait_ms']:.1f} ms"
                console.print(f"  {r['config']}: per step, measured turns: input wait {host['input_wait_ms_median']} ms, "
                              f"GC {host['gc_ms_median']} ms, training thread's CPU {host['thread_cpu_ms_median']} ms, "
                              f"closing sync {host['closing_sync_ms_median']} ms per turn (medians); slowest turn {sl['step_ms']:.1f} ms/step, of which input wait {wait}, GC "
                              f"{sl['gc_ms']:.1f} ms, thread CPU {sl['thread_cpu_ms']:.1f} ms")
        for r in phase["runs"]:
            if r.get("profile"):
                print_profile(console, r["config"], phase["batch_size"], r["profile"])
        for pair, d in (phase.get("profile_diff") or {}).items():
            cross, one = pair.split(" - ")
            table = Table(title=f"{pair} · batch {phase['batch_size']} · {d['basis']} ms per step")
            for col in ("range", one, cross, "difference"):
                table.add_column(col, justify="left" if col == "range" else "right")
            table.add_row("all (self time summed)", *(f"{d['total_ms'][k]:.3f}" for k in (one, cross, "diff")))
            for name, v in d["ranges"].items():
                table.add_row(name, f"{v[one]:.3f}", f"{v[cross]:.3f}", f"{v['diff']:+.3f}")
            console.print(table)


def print_profile(console, config: str, batch_size: int, prof: dict) -> None:
    from rich.table import Table

    basis = prof["basis"]
    table = Table(title=f"{config} · batch {batch_size} · {prof['steps']} steps profiled · {basis} "
                        f"{prof['total_ms_per_step']:.3f} ms/step in all (wall {prof['wall_ms_per_step']:.3f})")
    for col in ("range", "device ms", "CPU ms", "calls"):
        table.add_column(col, justify="left" if col == "range" else "right")
    for name, v in prof["ranges"].items():
        table.add_row(name, "-" if v["device_ms"] is None else f"{v['device_ms']:.3f}", f"{v['cpu_ms']:.3f}",
                      f"{v['calls_per_step']:g}")
    top = prof["top_level_device_ms_per_step"]
    table.add_row("top-level ranges, summed", "-" if top is None else f"{top:.3f}", "", "")
    table.add_row("host: outside the top-level ranges", "", f"{prof['host_outside_ranges_ms_per_step']:.3f}", "")
    console.print(table)
    ops = Table(title=f"{config} · top {'kernels' if basis == 'device' else 'operators'} by self {basis} "
                      f"time per step")
    for col in ("operator / kernel", "ms", "calls"):
        ops.add_column(col, justify="left" if col == "operator / kernel" else "right")
    for op in prof["top_ops"]:
        ops.add_row(op["name"], f"{op['ms']:.3f}", f"{op['calls_per_step']:g}")
    console.print(ops)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--configs", default="c1,c2,cx,ref,c1-text,cx-text",
                    help=f"comma list of {', '.join(CONFIGS)} (default: %(default)s)")
    ap.add_argument("--batch-sizes", default="64,256,512", help="rows per step, comma list (default: %(default)s)")
    ap.add_argument("--budget-s", type=float, default=60.0,
                    help="seconds of warm-up and measurement per batch size, counted after its configurations "
                         "are set up (set-up is not in it: 30-40 s per compresso configuration on an H200) "
                         "(default: %(default)s)")
    ap.add_argument("--warmup-share", type=float, default=0.35,
                    help="most of a batch size's budget that warm-up may take, beyond --warmup-min-steps "
                         "(default: %(default)s)")
    ap.add_argument("--warmup-min-steps", type=int, default=30,
                    help="warm-up steps every configuration does before it may be called steady, even past "
                         "--warmup-share (at most --warmup-max-steps) (default: %(default)s)")
    ap.add_argument("--steady-turns", type=int, default=3, help="turns that must agree to call a run steady")
    ap.add_argument("--steady-spread", type=float, default=0.05,
                    help="(max - min) / median of those turns' step times at most this (default: %(default)s)")
    ap.add_argument("--warmup-max-steps", type=int, default=150, help="cap on warm-up steps per configuration")
    ap.add_argument("--turn-s", type=float, default=0.5, help="target length of a turn (default: %(default)s s)")
    ap.add_argument("--max-turn-steps", type=int, default=20)
    ap.add_argument("--min-rounds", type=int, default=3, help="measurement rounds at least (default: %(default)s)")
    ap.add_argument("--max-rounds", type=int, default=1000)
    ap.add_argument("--vocab", default="16000,14000",
                    help="synthetic vocabularies of (student and teacher A, teacher B); real-text configurations "
                         "use the fixture tokenizers' sizes (default: %(default)s, the same)")
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--tiny", action="store_true", help="tiny models (a CPU smoke run; timings mean nothing)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--workers", type=int, default=None, help="compresso's tokenizer workers (default: its own)")
    ap.add_argument("--reference-dir", type=Path, help="the reference's `distillation` folder (ref configurations)")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared",
                    help="fixtures folder with teachers/ and corpus/ (real-text configurations; default: %(default)s)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="dense bf16 peak for MFU (default: 790 on an H200, else no MFU)")
    ap.add_argument("--pipeline-s", type=float, default=4.0,
                    help="seconds the input pipeline of each real-text configuration runs alone (default: %(default)s)")
    ap.add_argument("--pipeline-batch", type=int, default=None,
                    help="the batch size at which to measure it (default: the largest)")
    ap.add_argument("--chunk-rows", type=int, default=4096,
                    help="loss_chunk_rows of the -chunk configurations (default: %(default)s)")
    ap.add_argument("--synthetic-rows", type=int, default=None, help="synthetic corpus rows (default: enough)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU runs)")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="after each batch size's measurement, one more turn of this many steps per "
                         "configuration under torch.profiler, summarised per compresso.* range and top "
                         "kernels into its result's `profile` (default: 0, off)")
    ap.add_argument("--out", type=Path, help="folder for distill_speed.json")
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        ap.error(f"--configs: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(CONFIGS)}")
    args.names = names
    try:
        args.batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
        args.vocab = tuple(int(v) for v in args.vocab.split(","))
    except ValueError:
        ap.error("--batch-sizes and --vocab take comma lists of integers")
    if len(args.vocab) != 2 or min(args.vocab) <= len(SPECIAL) or not args.batches or min(args.batches) < 1:
        ap.error("--vocab needs two sizes above 5; --batch-sizes positive integers")
    if any(CONFIGS[n]["system"] == "reference" for n in names) and args.reference_dir is None:
        ap.error("the ref configurations need --reference-dir (the `distillation` folder of "
                 "huggingface/transformers-research-projects)")
    if any(CONFIGS[n]["data"] == "text" for n in names) and not (args.shared / "corpus").is_dir():
        ap.error(f"the -text configurations need --shared with corpus/ and teachers/ ({args.shared} has no corpus/)")
    if args.budget_s <= 0 or args.warmup_min_steps < 0:
        ap.error("--budget-s must be positive and --warmup-min-steps at least 0")
    if args.profile_steps < 0:
        ap.error("--profile-steps must be 0 (off) or a positive number of steps")
    if args.pipeline_batch is None:
        args.pipeline_batch = max(args.batches)
    args.sizes = TINY if args.tiny else BASE
    if args.seq_len:
        args.sizes = replace(args.sizes, seq_len=args.seq_len)
    return ap, args


def main(argv: list[str] | None = None) -> dict:
    ap, args = parse_args(argv)
    if GC_PAUSES not in gc.callbacks:
        gc.callbacks.append(GC_PAUSES)
    spec = args.device
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if spec == "auto" else spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {spec}: torch {torch.__version__} sees no CUDA device")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if any(CONFIGS[n].get("precision") == "fp16-amp" for n in args.names) and device.type != "cuda":
        ap.error("the ref configuration (fp16, apex O1) needs a CUDA device; use ref-fp32 on CPU")
    if args.peak_tflops is None and device.type == "cuda" and "H200" in torch.cuda.get_device_name(device):
        args.peak_tflops = 790.0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if any(CONFIGS[n].get("compile") for n in args.names):
        from torch import _dynamo

        # Every configuration compiles its own model instances in this one process: more
        # recompilations than one training run makes, and none may fall back to eager code.
        for knob in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                     "accumulated_cache_size_limit"):
            if hasattr(_dynamo.config, knob):
                setattr(_dynamo.config, knob, max(getattr(_dynamo.config, knob), 256))
    started = time.perf_counter()
    from rich.console import Console

    console = Console(stderr=True)
    log = console.log
    gpu_before = nvidia_smi() if device.type == "cuda" else None
    phases = []
    try:
        with tempfile.TemporaryDirectory(prefix="compresso-distill-speed-") as tmp:
            work = Path(tmp)
            inputs = build_inputs(args.names, args, work, max(args.batches))
            log(f"models and data ready in {time.perf_counter() - started:.1f} s")
            from compresso.strategies.distill.trainer import Trainer

            from compresso.strategies.distill import trainer as trainer_module

            original_hook, original_train, original_stream = Trainer.on_step_end, Trainer.train, trainer_module.BatchStream
            Trainer.on_step_end = _trainer_hook  # the gate, for the benchmark's threads only
            Trainer.train = _train_with_mark(original_train)
            trainer_module.BatchStream = _stream_with_mark(original_stream)
            try:
                for i, b in enumerate(args.batches):
                    log(f"batch {b}: set-up, then {args.budget_s:.0f} s of warm-up and measurement")
                    phases.append(run_batch_size(b, args.names, inputs, args, device, args.budget_s,
                                                 work / f"b{b}", log))
                    if i + 1 < len(args.batches):  # a run cut short keeps the phases it finished
                        write_json(summary(args, device, inputs, phases, gpu_before, started, complete=False), args)
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            finally:
                Trainer.on_step_end, Trainer.train = original_hook, original_train
                trainer_module.BatchStream = original_stream
    finally:
        torch.set_num_threads(threads_before)
    out = summary(args, device, inputs, phases, gpu_before, started, complete=True)
    print_tables(out)
    path = write_json(out, args)
    if path:
        print(f"wrote {path}")
    return out


def summary(args, device: torch.device, inputs: dict, phases: list[dict], gpu_before, started: float,
            complete: bool) -> dict:
    finish_phases(phases)
    vocab = next(iter(inputs.values()))["vocab"]
    out = {"benchmark": "distill_speed", "complete": complete, "sizes": asdict(args.sizes),
           "vocab": {"A": vocab["A"], "B": vocab["B"]}, "loss": LOSS, "optimiser": OPTIM, "tiny": args.tiny,
           "configs": {n: CONFIGS[n] for n in args.names},
           "method": {k: getattr(args, k) for k in ("budget_s", "warmup_share", "warmup_min_steps", "steady_turns",
                                                    "steady_spread", "warmup_max_steps", "turn_s", "min_rounds",
                                                    "pipeline_s", "profile_steps")},
           "budget": "per batch size, warm-up and measurement, counted after set-up",
           "peak_tflops": args.peak_tflops, "workers": args.workers,
           "reference_dir": str(args.reference_dir) if args.reference_dir else None,
           "environment": environment(device), "gpu_before": gpu_before,
           "gpu_after": nvidia_smi() if device.type == "cuda" else None,
           "wall_s": round(time.perf_counter() - started, 1), "phases": phases}
    if "text" in inputs:
        out["text"] = {"corpus": [str(p) for p in inputs["text"]["corpus"]], "tokenizers": inputs["text"]["tokenizers"],
                       "vocab": {"A": inputs["text"]["vocab"]["A"], "B": inputs["text"]["vocab"]["B"]}}
    return out


def write_json(out: dict, args) -> Path | None:
    if not args.out:
        return None
    from compresso.strategy import write_json as write_whole  # never a half-written file

    path = args.out / "distill_speed.json"
    write_whole(path, out)
    return path


if __name__ == "__main__":
    main()
