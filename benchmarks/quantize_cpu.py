"""CPU latency and size: fp32 12-layer teacher vs fp32 6-layer student vs INT8 6-layer student.

Side by side in one run, on this machine's CPU: latency at each batch size (sequence length 128 by
default, a fixed number of threads, median and minimum over repeats after warm-up, taken in blocks
interleaved across the models) and bytes on disk
of each saved model, with ratios to the teacher. The student keeps every other layer of the teacher
(layers 0, 2, 4, 7, 9, 11: the distill strategy's default choice) and is quantized with the
``quantize`` strategy (static INT8 by default, calibrated on the corpus).

Models carry a sequence-classification head (2 labels, seeded initialisation): the way an encoder
is served. Latency does not depend on the head's training.

    python benchmarks/quantize_cpu.py --out /tmp/quantize_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=str(SHARED / "teachers" / "ro-bert-small-cased"))
    ap.add_argument("--corpus", default=str(SHARED / "corpus" / "ro-corpus-00.txt.xz"),
                    help="text for calibration and for the benchmark inputs")
    ap.add_argument("--student-layers", type=int, default=6)
    ap.add_argument("--method", choices=["static", "dynamic"], default="static")
    ap.add_argument("--num-samples", type=int, default=256, help="calibration documents")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=40, help="timed calls per model and batch size")
    ap.add_argument("--rounds", type=int, default=5, help="blocks the repeats are split into (interleaved)")
    ap.add_argument("--out", help="write the results as JSON here")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compresso.corpus import iter_documents
    from compresso.models import save_bundle
    from compresso.strategies.distill.modeling import build_student, default_layers
    from compresso.strategies.quantize import QuantizeParams, QuantizeStrategy
    from compresso.strategy import ModelBundle, RunContext

    console = Console()
    for path in (args.teacher, args.corpus):
        if not Path(path).exists():
            console.print(f"[red]{path} does not exist (the ../shared fixtures sit beside the checkout)[/red]")
            return 2
    load_before = os.getloadavg()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher, dtype=torch.float32, num_labels=2,
                                                                 attn_implementation="sdpa").eval()
    layers = default_layers(teacher.config.num_hidden_layers, args.student_layers)
    student = build_student(teacher, layers).eval()

    with tempfile.TemporaryDirectory(prefix="compresso-qbench-") as tmp:
        tmp = Path(tmp)
        ctx = RunContext(stage_dir=tmp / "stage", work_dir=tmp / "work", device=torch.device("cpu"), seed=0,
                         teachers={}, base_dir=REPO, console=console)
        ctx.stage_dir.mkdir()
        ctx.work_dir.mkdir()
        params = QuantizeParams.model_validate({"method": args.method, "calibration": {
            "corpus": [args.corpus], "num_samples": args.num_samples, "max_length": args.seq_len}})
        strategy = QuantizeStrategy(params)
        t0 = time.perf_counter()
        int8 = strategy.apply(ModelBundle(student, tokenizer), ctx)
        quantize_seconds = time.perf_counter() - t0

        sizes = {}
        for name, bundle, save in (("fp32 teacher", ModelBundle(teacher, tokenizer), save_bundle),
                                   ("fp32 student", ModelBundle(student, tokenizer), save_bundle),
                                   ("int8 student", int8, QuantizeStrategy.save)):
            folder = tmp / name.replace(" ", "-")
            save(bundle, folder)
            sizes[name] = {"weights_bytes": sum(p.stat().st_size for p in folder.glob("*.safetensors")),
                           "folder_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file())}

    docs = [d for _, d in zip(range(64), iter_documents(args.corpus, part="all"))]
    models = {"fp32 teacher": teacher, "fp32 student": student, "int8 student": int8.model}
    latency: dict[str, dict[int, float]] = {name: {} for name in models}
    spread: dict[str, dict[int, list[float]]] = {name: {} for name in models}
    fastest: dict[str, dict[int, float]] = {name: {} for name in models}
    with torch.no_grad():
        for batch_size in args.batch_sizes:
            enc = tokenizer(docs[:batch_size], truncation=True, max_length=args.seq_len, padding="max_length",
                            return_tensors="pt")
            for model in models.values():
                for _ in range(args.warmup):  # the INT8 model compiles on its first call of a shape
                    model(**enc)
            times: dict[str, list[float]] = {name: [] for name in models}
            # Blocks of consecutive calls per model, the blocks interleaved across models: load changes
            # hit every model alike, and each block starts with one untimed call so that a model is
            # timed with its weights in cache, as when it serves requests back to back (the fp32
            # teacher's 55 MB pass would otherwise evict the INT8 student's 10 MB before every call).
            per_block = max(1, args.repeats // args.rounds)
            for _ in range(args.rounds):
                for name, model in models.items():
                    model(**enc)
                    for _ in range(per_block):
                        t = time.perf_counter()
                        model(**enc)
                        times[name].append((time.perf_counter() - t) * 1000)
            for name in models:
                latency[name][batch_size] = statistics.median(times[name])
                fastest[name][batch_size] = min(times[name])  # steadier than the median on a shared machine
                q1, _, q3 = statistics.quantiles(times[name], n=4)
                spread[name][batch_size] = [q1, q3]

    teacher_name = "fp32 teacher"
    table = Table(title=f"CPU latency (seq {args.seq_len}, {args.threads} threads, median and min of "
                        f"{args.repeats}) and size on disk")
    table.add_column("model")
    for b in args.batch_sizes:
        table.add_column(f"batch {b} ms (min)", justify="right")
        table.add_column(f"speed-up b{b} (min)", justify="right")
    table.add_column("weights MB", justify="right")
    table.add_column("size vs teacher", justify="right")
    rows = []
    for name in models:
        row = {"model": name, "latency_ms": latency[name], "latency_iqr_ms": spread[name],
               "latency_min_ms": fastest[name],
               "speedup_vs_teacher": {b: latency[teacher_name][b] / latency[name][b] for b in args.batch_sizes},
               "speedup_vs_teacher_min": {b: fastest[teacher_name][b] / fastest[name][b] for b in args.batch_sizes},
               **sizes[name], "size_ratio_vs_teacher": sizes[name]["weights_bytes"] / sizes[teacher_name]["weights_bytes"]}
        rows.append(row)
        cells = []
        for b in args.batch_sizes:
            cells += [f"{latency[name][b]:.1f} ({fastest[name][b]:.1f})",
                      f"{row['speedup_vs_teacher'][b]:.2f}× ({row['speedup_vs_teacher_min'][b]:.2f}×)"]
        table.add_row(name, *cells, f"{sizes[name]['weights_bytes'] / 1e6:.2f}", f"{row['size_ratio_vs_teacher']:.1%}")
    console.print(table)
    int8_row = rows[-1]
    targets = {"speedup_6x": {b: int8_row["speedup_vs_teacher"][b] >= 6 for b in args.batch_sizes},
               "speedup_6x_min": {b: int8_row["speedup_vs_teacher_min"][b] >= 6 for b in args.batch_sizes},
               "size_30pct": int8_row["size_ratio_vs_teacher"] <= 0.30}
    console.print(f"targets (INT8 student ≥ 6× faster than fp32 teacher, ≤ 30% of its bytes): {targets}")
    load_after = os.getloadavg()
    if max(load_before[0], load_after[0]) > args.threads + 0.5:
        console.print(f"[yellow]machine load average {load_before[0]:.1f} → {load_after[0]:.1f} on "
                      f"{os.cpu_count()} cores: other processes competed for the CPU[/yellow]")
    result = {
        "benchmark": "quantize_cpu", "teacher": args.teacher, "student_layers": layers, "method": args.method,
        "calibration_documents": args.num_samples, "seq_len": args.seq_len, "threads": args.threads,
        "warmup": args.warmup, "repeats": args.repeats, "rounds": args.rounds, "quantize_seconds": round(quantize_seconds, 1),
        "int8_vs_fp32_student_check": int8.model._check, "rows": rows, "targets": targets,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": load_after,
                    "python": sys.version.split()[0], "torch": torch.__version__},
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
