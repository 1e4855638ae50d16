"""Size and speed of models side by side, without fine-tuning: the evaluation suite's efficiency
measurement on its own.

For each model (a folder, a compresso stage folder or a hub id): encoder parameters, weight bytes
at equal dtype (fp32) and as saved with their dtype, GPU throughput (bf16, batch 128 x 128, when
CUDA is available) and CPU latency (median ms with its interquartile range over >= 20 passes, at
batch 1 and 8, sequence 128, 2 threads), each also as a ratio to the first model (or
--reference); ratios that contradict the architecture are flagged as suspect. Run it on a quiet
machine. Definitions: docs/evaluation.md, "Efficiency".

    python benchmarks/efficiency.py cased=../shared/teachers/ro-bert-small-cased runs/x/00-distill
    python benchmarks/efficiency.py A=... B=... --cpu-batches 1 8 32 --threads 4 --out eff.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="PATH or NAME=PATH (folder or hub id)")
    parser.add_argument("--reference", help="name of the model the ratios are taken to (default: the first)")
    parser.add_argument("--gpu-batch", type=int, default=128)
    parser.add_argument("--gpu-seq", type=int, default=128)
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument("--cpu-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--cpu-seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-cpu", action="store_true")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="time each measurement at least this long")
    parser.add_argument("--repeats", type=int, default=20, help="timed CPU passes at least (median and spread)")
    parser.add_argument("--out", type=Path, help="write the measurements as JSON")
    args = parser.parse_args(argv)

    from compresso.evaluation.config import EfficiencyConfig
    from compresso.evaluation.efficiency import compare, measure

    console = Console()
    named = []
    for spec in args.models:
        name, path = spec.split("=", 1) if "=" in spec else (Path(spec.rstrip("/")).name or spec, spec)
        named.append((name, path))
    names = [n for n, _ in named]
    reference = args.reference or names[0]
    if reference not in names:
        console.print(f"[red]--reference {reference}: not among {', '.join(names)}[/red]")
        return 2
    cfg = EfficiencyConfig(gpu=not args.no_gpu, gpu_batch_size=args.gpu_batch, gpu_seq_length=args.gpu_seq,
                           cpu=not args.no_cpu, cpu_batch_sizes=args.cpu_batches, cpu_seq_length=args.cpu_seq,
                           cpu_threads=args.threads, min_seconds=args.min_seconds, repeats=args.repeats)
    results = {}
    for name, path in named:
        console.log(f"measuring {name} ({path})")
        results[name] = measure(path, cfg)
    compare(results, reference, args.cpu_seq)  # ratios at equal dtype; ratios that contradict the architecture flagged
    table = Table(title=f"efficiency (ratios to {reference}; CPU: median ms [IQR] of n passes)")
    for col in ["model", "params", "×", "size fp32", "×", "as saved", "GPU seq/s", "speed-up"] + \
               [c for b in args.cpu_batches for c in (f"CPU ms b{b}", "speed-up")]:
        table.add_column(col, justify="left" if col == "model" else "right")

    def fmt(r: dict, key: str) -> str:
        x = r["ratios"].get(key)
        return (f"{x:.2f}" + (" (suspect)" if key in r["suspect"] else "")) if x else "–"

    for name, r in results.items():
        mib = lambda n: f"{n / 2**20:.1f} MiB" if n else "–"  # noqa: E731
        row = [name, f"{r['parameters'] / 1e6:.2f} M" if r["parameters"] else "–", fmt(r, "parameters"),
               mib(r["size_fp32_bytes"]), fmt(r, "size_fp32"),
               f"{mib(r['disk_bytes'])} ({','.join(r['weights_dtypes']) or '?'})",
               f"{r['gpu_throughput']:.0f}" if r["gpu_throughput"] else r.get("gpu_note", "–"), fmt(r, "gpu_speedup")]
        for b in args.cpu_batches:
            t = r["cpu_latency"].get(str(b))
            row += [f"{t['median']:.1f} [{t['q1']:.1f}–{t['q3']:.1f}] n={t['repeats']}" if t
                    else r.get("cpu_note", "–"), fmt(r, f"cpu_speedup_b{b}")]
        table.add_row(*row)
    console.print(table)
    for name, r in results.items():
        for note in r["notes"] + [f"suspect {k}: {why}" for k, why in r["suspect"].items()] + list(r["noisy"].values()):
            console.print(f"[yellow]{name}: {note}[/yellow]")
    if args.out:
        args.out.write_text(json.dumps({"reference": reference, "config": cfg.model_dump(), "models": results},
                                       indent=2) + "\n")
        console.print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
