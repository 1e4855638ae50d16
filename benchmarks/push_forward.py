"""The cross-tokenizer push-forward alone: gathers (compresso's ``student_log_q``) against scatters.

Pushing the student's distribution onto a foreign teacher's vocabulary is the part of the
cross-tokenizer step that grew most in the H200 profile of issue 14 (5.1 ms of device time per step
forward at batch 256, plus its backward). ``student_log_q`` now lays student ids out by how many
share a teacher column and needs only gathers; until then it took a scatter-based grouped
log-sum-exp over every mapped id (kept below as ``scatter_log_q``, the baseline). Both give the
same values and gradients (``tests/test_distill.py``). This times forward + backward of each on
rows of random logits, with the fixture tokenizers' vocabulary map (cased 16k student, uncased 14k
teacher), interleaved and repeated; prints a table and writes JSON with the device, its clocks
where nvidia-smi has them, and the load average.

    python benchmarks/push_forward.py --shared ../shared --rows 4915 --device cuda --out push_forward.json
"""

from __future__ import annotations

import argparse
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

from compresso.strategies.distill.losses import TeacherLink, student_log_q  # noqa: E402
from compresso.strategies.distill.vocab import build_vocab_map  # noqa: E402


def scatter_log_q(logits: torch.Tensor, link: TeacherLink, temperature: float) -> torch.Tensor:
    """The push-forward as compresso computed it before issue 14's profile ("other" bucket):
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
    return student_log_q(logits, link, temperature, "other")


VARIANTS = {"scatter (before)": scatter_log_q, "gather (now)": gather_log_q}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    gen = torch.Generator(device="cpu").manual_seed(0)
    logits = (torch.randn(args.rows, len(student), generator=gen) * 4).to(device)
    probe = torch.randn(args.rows, len(vmap.teacher_ids) + 1, generator=gen).to(device)

    def once(fn) -> None:
        z = logits.clone().requires_grad_()
        (fn(z, link, 2.0) * probe).sum().backward()

    # the two agree (the tests check this in float64; here in the benchmark's own precision)
    z1, z2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    a, b = scatter_log_q(z1, link, 2.0), gather_log_q(z2, link, 2.0)
    (a * probe).sum().backward()
    (b * probe).sum().backward()
    agreement = {"max_abs_value_diff": float((a - b).detach().abs().max()),
                 "max_abs_grad_diff": float((z1.grad - z2.grad).abs().max())}
    for fn in VARIANTS.values():  # warm-up: allocator, kernels' first launch
        for _ in range(3):
            once(fn)
    sync(device)
    load_before = os.getloadavg()
    times = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, fn in VARIANTS.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.iters):
                once(fn)
            sync(device)
            times[name].append(1000 * (time.perf_counter() - t0) / args.iters)
    summary = {name: {"median_ms": round(statistics.median(t), 3), "min_ms": round(min(t), 3),
                      "max_ms": round(max(t), 3), "samples_ms": [round(x, 3) for x in t]} for name, t in times.items()}
    ratio = round(summary["gather (now)"]["median_ms"] / summary["scatter (before)"]["median_ms"], 3)
    table = Table(title=f"push-forward, forward + backward · {args.rows} rows × {len(student):,} → "
                        f"{len(vmap.teacher_ids):,} + other · {device}")
    for col in ("variant", "median ms", "min – max ms"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, s in summary.items():
        table.add_row(name, f"{s['median_ms']:.2f}", f"{s['min_ms']:.2f} – {s['max_ms']:.2f}")
    console = Console()
    console.print(table)
    console.print(f"gather / scatter: [bold]{ratio}[/bold]; agreement {agreement}")
    result = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "nvidia_smi": nvidia_smi() if device.type == "cuda" else None,
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "load_before": load_before, "load_after": os.getloadavg(),
              "rows": args.rows, "student_vocab": len(student), "columns": int(len(vmap.teacher_ids)),
              "groups": {str(g): int(ids.numel() // g) for g, ids in link.group_ids},
              "single_columns": int(link.single_ids.numel()), "repeats": args.repeats, "iters": args.iters,
              "variants": summary, "gather_over_scatter": ratio, "agreement": agreement}
    if args.out:
        from compresso.strategy import write_json  # never a half-written file

        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
