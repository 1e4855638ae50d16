"""How long the distillation input pipeline takes to hand over its first batch, by worker start method.

The ``distill`` strategy tokenises, aligns and masks in worker processes (``BatchStream``). Each
worker used to be *spawned*, so each imported torch anew; on the H200 machine twelve of them doing
so at once held the first batch back by 27-32 s per run (issue 14). Workers now fork from a
*forkserver* that imports the pipeline module once per process. This benchmark opens the real
stream on real text with the two fixture tokenizers (cased student view + uncased teacher view,
the cross-tokenizer case) and times the first batch and the next ``--batches``, alternating the
two start methods (``spawn`` = the old behaviour, ``forkserver`` = the current one), each in a
fresh process so neither inherits the other's server or imports. Prints a table; ``--out`` writes
JSON.

    python benchmarks/stream_startup.py --shared ../shared --workers 4 --repeats 3 --out startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("spawn", "forkserver")


def one_process(method: str, args) -> dict:
    """Runs in a fresh interpreter: two streams one after the other (the second one shows what a
    later stage or benchmark configuration pays once the forkserver is up)."""
    import multiprocessing as mp

    from transformers import AutoTokenizer

    from compresso.corpus import Corpus
    from compresso.strategies.distill import data

    if method == "spawn":
        data._worker_context = lambda: mp.get_context("spawn")  # the behaviour before issue 14
    teachers = args.shared / "teachers"
    views = [data.ViewSpec.from_tokenizer(AutoTokenizer.from_pretrained(teachers / "ro-bert-small-cased"), "a", 128),
             data.ViewSpec.from_tokenizer(AutoTokenizer.from_pretrained(teachers / "ro-robert-small-uncased"), "b", 128)]
    corpus = Corpus(files=(args.shared / "corpus" / "ro-corpus-00.txt.xz",))
    streams = []
    for i in range(2):
        cfg = data.StreamConfig(corpus=corpus, views=views, masking=data.MaskingConfig(), batch_size=args.batch_size,
                                seed=i, heldout=100, num_workers=args.workers, need_words=True)
        start = time.perf_counter()
        with data.BatchStream(cfg) as stream:
            it = iter(stream)
            next(it)
            first = time.perf_counter() - start
            for _ in range(args.batches):
                next(it)
            total = time.perf_counter() - start
        streams.append({"first_batch_s": round(first, 3), "then_batches_s": round(total - first, 3)})
    return {"method": method, "streams": streams}


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="folder with teachers/ and corpus/")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=20, help="batches drawn after the first")
    ap.add_argument("--repeats", type=int, default=3, help="processes per start method, alternated")
    ap.add_argument("--out", type=Path, help="JSON file")
    ap.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # internal: one measuring process
    args = ap.parse_args(argv)
    for sub in ("teachers/ro-bert-small-cased", "teachers/ro-robert-small-uncased", "corpus/ro-corpus-00.txt.xz"):
        if not (args.shared / sub).exists():
            ap.error(f"{args.shared / sub} does not exist (--shared must hold the fixture teachers and corpus)")
    if args.one:
        print(json.dumps(one_process(args.one, args)))
        return None

    from rich.console import Console
    from rich.table import Table

    console = Console()
    base = [sys.executable, str(Path(__file__).resolve()), "--shared", str(args.shared), "--workers",
            str(args.workers), "--batch-size", str(args.batch_size), "--batches", str(args.batches)]
    runs = {m: [] for m in METHODS}
    load_before = os.getloadavg()
    for r in range(args.repeats):
        for method in METHODS:  # alternated: spawn, forkserver, spawn, ...
            out = subprocess.run([*base, "--one", method], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            runs[method].append(result["streams"])
            console.print(f"repeat {r + 1} {method}: " + ", ".join(
                f"stream {i + 1} first batch {s['first_batch_s']:.2f} s" for i, s in enumerate(result["streams"])))
    summary = {}
    for method in METHODS:
        for i in range(2):
            firsts = [rep[i]["first_batch_s"] for rep in runs[method]]
            summary[f"{method}, stream {i + 1}"] = {"median": statistics.median(firsts), "min": min(firsts),
                                                    "max": max(firsts)}
    table = Table(title=f"first batch, {args.workers} workers, batch {args.batch_size} x 128, two views "
                        f"({args.repeats} processes per method)")
    for col in ("start method, stream", "median s", "min – max s"):
        table.add_column(col, justify="left" if col.startswith("start") else "right")
    for name, s in summary.items():
        table.add_row(name, f"{s['median']:.2f}", f"{s['min']:.2f} – {s['max']:.2f}")
    console.print(table)
    ratio = {f"forkserver / spawn, stream {i + 1}":
             round(summary[f"forkserver, stream {i + 1}"]["median"] / summary[f"spawn, stream {i + 1}"]["median"], 3)
             for i in range(2)}
    for k, v in ratio.items():
        console.print(f"{k}: {v}")
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "one"},
              "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                          "python": platform.python_version(), "load_before": load_before,
                          "load_after": os.getloadavg()},
              "runs": runs, "first_batch": summary, "ratios": ratio}
    if args.out:
        from compresso.strategy import write_json  # never a half-written file

        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
