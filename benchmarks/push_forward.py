"""The cross-tokenizer soft-target KL alone: compresso's push-forward (one permutation, then
slices; its gradient in closed form), eager and compiled, against the layouts it replaced.

Pushing the student's distribution onto a foreign teacher's vocabulary is, after the second
teacher's own encoder pass, the largest addition of the cross-tokenizer step to the 1-teacher one.
Three layouts of the same sum, each giving the same values and gradients (``tests/test_distill.py``,
and the agreement figures below):

* ``scatter``: a scatter-based grouped log-sum-exp over every mapped id;
* ``gathers``: student ids laid out by how many share a teacher column, one index gather per group
  size and one to put the columns back in the teacher's order; backward, each gather scatter-adds;
* ``permuted``: one permutation of the student's logits puts every group in a contiguous slice and
  the target space takes the columns in that order (``student_log_q``); backward, the
  permutation's inverse is a gather, and autograd goes back through every step;
* ``closed form``: the same forward, the gradient written out (``losses._PushForwardKL``, what
  the step computes now): one rows x vocabulary tensor backward instead of one per step.

With ``compile`` (on by default on CUDA) the step computes the KL under torch.compile. This times
forward + backward of the per-row KL of each (push-forward, then KL against a teacher's log-probs)
on rows of random logits, with the fixture tokenizers' vocabulary map (cased 16k student, uncased
14k teacher), interleaved and repeated; prints a table and writes JSON with the device, its clocks
where nvidia-smi has them, and the load average.

    python benchmarks/push_forward.py --shared ../shared --rows 4915 --device cuda --out push_forward.json
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from compresso.strategies.distill.losses import (  # noqa: E402
    LossConfig,
    TeacherLink,
    kl_per_position,
    soft_target_kl,
    student_log_q,
)
from compresso.strategies.distill.vocab import build_vocab_map  # noqa: E402


def scatter_log_q(logits: torch.Tensor, link: TeacherLink, temperature: float) -> torch.Tensor:
    """The push-forward by scatter ("other" bucket):
    a grouped log-sum-exp by scatter over all mapped ids, "other" by masking the whole row."""
    log_q = (logits / temperature).log_softmax(-1)
    mapped = log_q.index_select(1, link.student_ids)
    k, n_cols = mapped.shape[0], link.teacher_ids.shape[0]
    cols = torch.as_tensor(link.vocab.columns, device=mapped.device).unsqueeze(0).expand(k, -1)
    col_max = torch.full((k, n_cols), float("-inf"), device=mapped.device, dtype=mapped.dtype)
    col_max = col_max.scatter_reduce(1, cols, mapped.detach(), reduce="amax", include_self=True)
    shifted = (mapped - col_max.gather(1, cols)).exp()
    mass = torch.zeros(k, n_cols, device=mapped.device, dtype=mapped.dtype).scatter_add(1, cols, shifted)
    log_mass = mass.log() + col_max
    other = log_q.masked_fill(~link.unmapped("student", log_q.shape[1], log_q.device), float("-inf"))
    return torch.cat([log_mass, other.logsumexp(-1, keepdim=True)], 1)


def gather_log_q(logits: torch.Tensor, link: TeacherLink, temperature: float) -> torch.Tensor:
    """The push-forward by gathers (teacher_ids order): one gather per
    group size, then one to put the columns back in the teacher's order."""
    log_q = (logits / temperature).log_softmax(-1)
    k = log_q.shape[0]
    parts, start = [log_q.index_select(1, link.mapped_order[:link.n_single])], link.n_single
    for g, n_cols in link.groups:
        ids = link.mapped_order[start:start + g * n_cols]
        parts.append(log_q.index_select(1, ids).view(k, -1, g).logsumexp(-1))
        start += g * n_cols
    log_mass = torch.cat(parts, 1).index_select(1, link.column_order)
    other = log_q.index_select(1, link.unmapped_ids("student", log_q.shape[1], log_q.device))
    return torch.cat([log_mass, other.logsumexp(-1, keepdim=True)], 1)


def permuted_log_q(logits: torch.Tensor, link: TeacherLink, temperature: float) -> torch.Tensor:
    return student_log_q(logits, link, temperature, "other")


def in_teacher_order(log_q: torch.Tensor, link: TeacherLink) -> torch.Tensor:
    """``permuted_log_q``'s columns (the link's layout order) back in teacher_ids order, "other" last."""
    order = torch.as_tensor(link.target_columns, device=log_q.device)
    out = torch.empty_like(log_q)
    out[:, order] = log_q[:, :-1]
    out[:, -1] = log_q[:, -1]
    return out


def scatter_kl(logits, log_p, link, temperature):
    return kl_per_position(log_p, scatter_log_q(logits, link, temperature))


def gather_kl(logits, log_p, link, temperature):
    return kl_per_position(log_p, gather_log_q(logits, link, temperature))


_gather_kl_compiled = torch.compile(gather_kl, dynamic=False)


def gather_kl_compiled(logits, log_p, link, temperature):
    return _gather_kl_compiled(logits, log_p, link, temperature)


def autograd_kl(logits, log_p, link, temperature):
    """The permuted push-forward with autograd's backward through each of its steps."""
    return kl_per_position(log_p, student_log_q(logits, link, temperature, "other"))


_autograd_kl_compiled = torch.compile(autograd_kl, dynamic=False)


def autograd_kl_compiled(logits, log_p, link, temperature):
    return _autograd_kl_compiled(logits, log_p, link, temperature)


def closed_form_kl(logits, log_p, link, temperature):
    """compresso's soft-target KL now: the permuted push-forward, its gradient written out."""
    return soft_target_kl(logits, log_p, link, LossConfig(temperature=temperature, compile=False))


def closed_form_kl_compiled(logits, log_p, link, temperature):
    return soft_target_kl(logits, log_p, link, LossConfig(temperature=temperature, compile=True))


VARIANTS = {"scatter": scatter_kl, "gathers": gather_kl, "gathers, compiled": gather_kl_compiled,
            "permuted": autograd_kl, "permuted, compiled": autograd_kl_compiled,
            "closed form": closed_form_kl, "closed form, compiled": closed_form_kl_compiled}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(variants: dict, device: torch.device, repeats: int, iters: int) -> dict:
    """Milliseconds of one call of each variant (a callable without arguments): ``repeats`` rounds,
    the variants interleaved within each, ``iters`` calls timed between two device syncs; median,
    min, max and every round's figure per variant."""
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            sync(device)
            times[name].append(1000 * (time.perf_counter() - t0) / iters)
    return {name: {"median_ms": round(statistics.median(t), 3), "min_ms": round(min(t), 3),
                   "max_ms": round(max(t), 3), "samples_ms": [round(x, 3) for x in t]} for name, t in times.items()}


def nvidia_smi() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,clocks.sm,clocks.max.sm,utilization.gpu",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="folder with teachers/")
    ap.add_argument("--rows", type=int, default=4915, help="soft-target rows (4,915: 15 %% of 256 x 128)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds, variants interleaved")
    ap.add_argument("--iters", type=int, default=10, help="forward + backward passes per timing")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="time the compiled KL too (default: on CUDA)")
    ap.add_argument("--out", type=Path, help="JSON file")
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoTokenizer

    teachers = args.shared / "teachers"
    for name in ("ro-bert-small-cased", "ro-robert-small-uncased"):
        if not (teachers / name / "config.json").exists():
            ap.error(f"{teachers / name} is not a model folder (--shared must hold the fixture teachers)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    student = AutoTokenizer.from_pretrained(teachers / "ro-bert-small-cased")
    teacher = AutoTokenizer.from_pretrained(teachers / "ro-robert-small-uncased")
    vmap = build_vocab_map(student, teacher, "robert-uncased")
    link = TeacherLink("robert-uncased", lm=None, weight=1.0, view=1, vocab=vmap).to(device)
    # gather_log_q's last gather: where each column of the layout lands in teacher_ids order
    link.column_order = torch.argsort(torch.as_tensor(link.target_columns, device=device))
    link.unmapped_ids("student", len(student), device)  # made once, outside the compiled function
    gen = torch.Generator(device="cpu").manual_seed(0)
    logits = (torch.randn(args.rows, len(student), generator=gen) * 4).to(device)
    probe = torch.randn(args.rows, len(vmap.teacher_ids) + 1, generator=gen).to(device)
    log_p = (torch.randn(args.rows, len(vmap.teacher_ids) + 1, generator=gen) * 4).log_softmax(-1).to(device)
    row_probe = probe[:, 0].contiguous()
    compiled = device.type == "cuda" if args.compile is None else args.compile
    variants = {k: v for k, v in VARIANTS.items() if compiled or not k.endswith("compiled")}

    def once(fn) -> None:
        z = logits.clone().requires_grad_()
        (fn(z, log_p, link, 2.0) * row_probe).sum().backward()

    # the layouts agree (the tests check this in float64; here in the benchmark's own precision)
    agreement = {}
    z0 = logits.clone().requires_grad_()
    base = scatter_log_q(z0, link, 2.0)
    (base * probe).sum().backward()
    for name, fn in (("gathers", gather_log_q), ("permuted", permuted_log_q)):
        z = logits.clone().requires_grad_()
        out = fn(z, link, 2.0)
        out = in_teacher_order(out, link) if name == "permuted" else out
        (out * probe).sum().backward()
        agreement[f"{name}_max_abs_value_diff"] = float((out - base).detach().abs().max())
        agreement[f"{name}_max_abs_grad_diff"] = float((z.grad - z0.grad).abs().max())
    # the closed-form gradient against autograd's (eager), and compiled against eager
    pairs = [("closed_form", closed_form_kl)] + ([("compiled", closed_form_kl_compiled)] if compiled else [])
    z0 = logits.clone().requires_grad_()
    want = autograd_kl(z0, log_p, link, 2.0)
    (want * row_probe).sum().backward()
    for name, fn in pairs:
        z = logits.clone().requires_grad_()
        got = fn(z, log_p, link, 2.0)
        (got * row_probe).sum().backward()
        agreement[f"{name}_max_abs_kl_diff"] = float((got - want).detach().abs().max())
        agreement[f"{name}_max_abs_grad_diff"] = float((z.grad - z0.grad).abs().max())
    t_warm = time.perf_counter()
    for fn in variants.values():  # warm-up: allocator, kernels' first launch, compilation
        for _ in range(3):
            once(fn)
    sync(device)
    warmup_s = time.perf_counter() - t_warm
    load_before = os.getloadavg()
    summary = time_interleaved({name: functools.partial(once, fn) for name, fn in variants.items()}, device,
                               args.repeats, args.iters)
    ratios = {f"{a} / {b}": round(summary[a]["median_ms"] / summary[b]["median_ms"], 3)
              for a, b in (("gathers", "scatter"), ("permuted", "gathers"), ("permuted, compiled", "gathers, compiled"),
                           ("closed form", "permuted"), ("closed form, compiled", "permuted, compiled"),
                           ("closed form, compiled", "scatter")) if a in summary and b in summary}
    table = Table(title=f"soft-target KL with push-forward, forward + backward · {args.rows} rows × "
                        f"{len(student):,} → {len(vmap.teacher_ids):,} + other · {device}")
    for col in ("variant", "median ms", "min – max ms"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, s in summary.items():
        table.add_row(name, f"{s['median_ms']:.2f}", f"{s['min_ms']:.2f} – {s['max_ms']:.2f}")
    console = Console()
    console.print(table)
    console.print(f"ratios {ratios}; agreement {agreement}")
    result = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "nvidia_smi": nvidia_smi() if device.type == "cuda" else None,
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "load_before": load_before, "load_after": os.getloadavg(),
              "rows": args.rows, "student_vocab": len(student), "columns": int(len(vmap.teacher_ids)),
              "groups": {str(g): n for g, n in link.groups}, "single_columns": link.n_single, "repeats": args.repeats, "iters": args.iters,
              "warmup_s": round(warmup_s, 2), "variants": summary, "ratios": ratios, "agreement": agreement}
    if args.out:
        from compresso.strategy import write_json  # never a half-written file

        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
