"""Host memory of the distillation data pipeline does not grow with the corpus.

Builds two plain-text corpora in a temporary folder by concatenating the Romanian corpus of
``../shared/corpus`` (decompressed, then repeated whole to reach the size: documents repeat, which
costs the pipeline the same work as fresh text): a small one (~20 MB) and a big one (~2 GB). Then
runs compresso's distillation input pipeline on them -- streaming documents from the file
(``compresso.corpus``), word splitting, tokenisation, packing into ``seq_len`` rows and masking
(``compresso.strategies.distill.data.BatchStream``), exactly as the ``distill`` strategy does --
and records each run's peak resident memory. compresso has no on-disk token cache (it streams and
tokenises on the fly), so there is none to measure.

Every case runs in a fresh Python process, so its peak (``VmHWM`` from ``/proc/self/status``)
is its own. With tokenizer worker processes (``--workers N``) the workers' peaks are read from
``/proc/<pid>/status`` before they stop and reported separately.

Cases:
  baseline      imports + tokenizer, no batch drawn (the fixed cost every run pays)
  small         ``--batches`` batches from the ~20 MB file
  big           ``--batches`` batches from the ~2 GB file
  big-long      reads ``--long-mb`` MB of the big file (RSS sampled along the way)
  control       the small file's documents held in a Python list (what a non-streaming reader
                pays; shows the measurement does see corpus-sized memory)

Usage (from the repository root):
  python benchmarks/corpus_memory.py --out corpus_memory.json
  python benchmarks/corpus_memory.py --small-mb 2 --big-mb 20 --batches 5 --long-mb 2   # quick
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MB = 1_000_000


# --- memory readings -------------------------------------------------------------------------

def _status_kib(pid: int | str, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def peak_rss_mib(pid: int | str = "self") -> float:
    """Peak resident set size (VmHWM) of a process, MiB; falls back to getrusage for ourselves."""
    kib = _status_kib(pid, "VmHWM")
    if kib is None and pid == "self":
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return round((kib or 0) / 1024, 1)


def rss_mib() -> float:
    return round((_status_kib("self", "VmRSS") or 0) / 1024, 1)


def child_pids() -> list[int]:
    """Live child processes of this process (any thread), from /proc/self/task/*/children."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").glob("*"):
        try:
            pids.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            pass
    return sorted(pids)


# --- corpus files ----------------------------------------------------------------------------

def corpus_parts(corpus_dir: Path) -> list[Path]:
    parts = sorted(corpus_dir.glob("ro-corpus-*.txt.xz"))
    if not parts:
        raise SystemExit(f"no ro-corpus-*.txt.xz in {corpus_dir}: pass --corpus-dir (the ../shared/corpus "
                         f"folder beside the checkout)")
    return parts


def build_base(parts: list[Path], path: Path, limit_bytes: int | None) -> int:
    """Decompress corpus parts into one text file, stopping at whole lines past ``limit_bytes``."""
    written = 0
    with path.open("wb") as out:
        for part in parts:
            with lzma.open(part, "rb") as src:
                for line in src:
                    out.write(line)
                    written += len(line)
                    if limit_bytes is not None and written >= limit_bytes:
                        return written
    return written


def repeat_to(base: Path, path: Path, target_bytes: int) -> int:
    """Concatenate ``base`` with itself until ``target_bytes`` (whole copies; the last one cut at a line)."""
    size = base.stat().st_size
    written = 0
    with path.open("wb") as out:
        while written + size <= target_bytes:
            with base.open("rb") as src:
                shutil.copyfileobj(src, out, 16 * 2**20)
            written += size
        with base.open("rb") as src:
            for line in src:
                if written >= target_bytes:
                    break
                out.write(line)
                written += len(line)
    return written


def count_lines(path: Path) -> int:
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(16 * 2**20):
            n += chunk.count(b"\n")
    return n


# --- one case, in its own process ------------------------------------------------------------

def run_case(spec: dict) -> dict:
    """Runs inside a fresh interpreter; returns the measurements as a dict."""
    import numpy as np  # noqa: F401  (imported before the first reading, like the pipeline does)
    import torch
    from transformers import AutoTokenizer

    from compresso.corpus import Corpus
    from compresso.strategies.distill.data import BatchStream, MaskingConfig, StreamConfig, ViewSpec

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    result = {"case": spec["case"], "file": spec.get("file"), "file_mb": spec.get("file_mb")}
    if spec["case"] == "baseline":
        result.update(peak_rss_mib=peak_rss_mib(), batches=0)
        return result
    if spec["case"] == "control":
        with open(spec["file"], encoding="utf-8") as f:
            documents = [line.strip() for line in f if line.strip()]
        result.update(peak_rss_mib=peak_rss_mib(), batches=0, documents_held=len(documents))
        return result

    cfg = StreamConfig(corpus=Corpus(files=(Path(spec["file"]),)),
                       views=[ViewSpec.from_tokenizer(tokenizer, "student", spec["seq_len"])],
                       masking=MaskingConfig(), batch_size=spec["batch_size"], seed=0, heldout=0,
                       num_workers=spec["workers"])
    stop_docs = spec.get("stop_documents")
    batches = tokens = doc = 0
    trace = []
    worker_peaks: dict[int, float] = {}
    t_first = None
    stream = BatchStream(cfg)
    try:
        for batch in stream:
            if t_first is None:
                t_first = time.perf_counter()
            batches += 1
            tokens += batch.tokens
            doc = batch.position.get("doc", 0)
            if batches % spec["trace_every"] == 0:
                trace.append({"batches": batches, "documents": doc, "rss_mib": rss_mib()})
                for pid in child_pids():
                    worker_peaks[pid] = max(worker_peaks.get(pid, 0.0), peak_rss_mib(pid))
            if stop_docs is not None:
                if doc >= stop_docs or batch.position.get("epoch", 0) > 0:
                    break
            elif batches >= spec["batches"]:
                break
        for pid in child_pids():
            worker_peaks[pid] = max(worker_peaks.get(pid, 0.0), peak_rss_mib(pid))
    finally:
        stream.close()
    seconds = time.perf_counter() - t0
    result.update(
        peak_rss_mib=peak_rss_mib(), final_rss_mib=rss_mib(), batches=batches, tokens=tokens,
        documents_read=doc, seconds=round(seconds, 1),
        tokens_per_s=round(tokens / (time.perf_counter() - t_first)) if t_first else None,
        workers=spec["workers"], worker_peak_rss_mib=sorted(worker_peaks.values(), reverse=True),
        rss_trace=trace,
    )
    return result


def spawn_case(spec: dict) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, __file__, "--case-json", json.dumps(spec)], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"case {spec['case']} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(results: list[dict], bytes_per_document: float, path: Path) -> None:
    """Resident memory along the reads (trace points), with each case's peak as a level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        if r.get("rss_trace") and r["case"] != "small":
            mb = [t["documents"] * bytes_per_document / MB for t in r["rss_trace"]]
            ax.plot(mb, [t["rss_mib"] for t in r["rss_trace"]], marker=".", label=f"{r['case']}: resident memory")
    for r, style in zip(results, ("-", "--", ":", "-.", (0, (1, 3)))):
        ax.axhline(r["peak_rss_mib"], linestyle=style, color="grey", linewidth=0.8,
                   label=f"{r['case']} peak {r['peak_rss_mib']:.0f} MiB")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("text of the big file read (MB)")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title("distillation input pipeline: host memory")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- driver ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--corpus-dir", type=Path, default=SHARED / "corpus",
                    help="folder with ro-corpus-*.txt.xz (default: ../shared/corpus)")
    ap.add_argument("--tokenizer", default=str(SHARED / "teachers" / "ro-bert-small-cased"),
                    help="tokenizer folder (default: the cased fixture teacher's)")
    ap.add_argument("--work-dir", type=Path, default=None, help="where to write the corpus files "
                                                                 "(default: a temporary folder, removed after)")
    ap.add_argument("--keep-files", action="store_true", help="keep the generated corpus files")
    ap.add_argument("--small-mb", type=float, default=20)
    ap.add_argument("--big-mb", type=float, default=2000)
    ap.add_argument("--batches", type=int, default=100, help="batches drawn in the small/big cases")
    ap.add_argument("--long-mb", type=float, default=100,
                    help="MB of the big file the big-long case reads through (0 skips it)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--workers", type=int, default=0, help="tokenizer worker processes (distill's CPU default: 0)")
    ap.add_argument("--cases", default="baseline,small,big,big-long,control",
                    help="comma list of the cases to run (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--plot", type=Path, default=None, help="write a PNG of resident memory against text read")
    ap.add_argument("--case-json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.case_json:
        print(json.dumps(run_case(json.loads(args.case_json))))
        return {}

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    if not Path(args.tokenizer).is_dir():
        raise SystemExit(f"tokenizer folder {args.tokenizer} not found: pass --tokenizer")
    parts = corpus_parts(args.corpus_dir)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="compresso-corpus-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        small, big, base = work / "small.txt", work / "big.txt", work / "base.txt"
        small_bytes = build_base(parts, small, int(args.small_mb * MB))
        base_bytes = build_base(parts, base, int(args.big_mb * MB))  # all parts unless big is smaller
        big_bytes = repeat_to(base, big, int(args.big_mb * MB))
        base.unlink()
        big_docs = count_lines(big)
        console.log(f"corpus files in {work}: small {small_bytes / MB:.1f} MB, big {big_bytes / MB:.1f} MB "
                    f"({big_docs:,} lines; {base_bytes / MB:.0f} MB of ../shared/corpus text repeated) "
                    f"in {time.perf_counter() - t:.0f}s")

        common = dict(tokenizer=args.tokenizer, batch_size=args.batch_size, seq_len=args.seq_len,
                      workers=args.workers, batches=args.batches, trace_every=max(1, args.batches // 10))
        small_mb, big_mb = round(small_bytes / MB, 1), round(big_bytes / MB, 1)
        specs = [dict(common, case="baseline"),
                 dict(common, case="small", file=str(small), file_mb=small_mb),
                 dict(common, case="big", file=str(big), file_mb=big_mb)]
        if args.long_mb > 0:
            stop = max(1, int(big_docs * min(1.0, args.long_mb * MB / big_bytes)))
            specs.append(dict(common, case="big-long", file=str(big), file_mb=big_mb, stop_documents=stop,
                              trace_every=max(1, args.batches // 5)))
        specs.append(dict(common, case="control", file=str(small), file_mb=small_mb))

        wanted = {c.strip() for c in args.cases.split(",") if c.strip()}
        unknown = wanted - {s["case"] for s in specs} - ({"big-long"} if args.long_mb <= 0 else set())
        if unknown:
            raise SystemExit(f"--cases: unknown {', '.join(sorted(unknown))}")
        results = []
        for spec in [s for s in specs if s["case"] in wanted]:
            console.log(f"case {spec['case']} ...")
            r = spawn_case(spec)
            if r.get("documents_read") is not None and spec.get("file"):
                r["share_read"] = round(r["documents_read"] / (big_docs if spec["file"] == str(big)
                                                               else count_lines(small)), 4)
            results.append(r)
    finally:
        if not args.keep_files and args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    table = Table(title="distillation input pipeline: peak host memory per corpus size")
    for col in ("case", "corpus file", "batches", "text read", "peak RSS", "workers' peak", "tokens/s"):
        table.add_column(col, justify="left" if col in ("case", "corpus file") else "right")
    for r in results:
        read = f"{r['share_read'] * (r['file_mb'] or 0):.1f} MB ({100 * r['share_read']:.1f}%)" \
            if r.get("share_read") is not None else "-"
        table.add_row(r["case"], f"{r['file_mb']:.0f} MB" if r.get("file_mb") else "-", str(r["batches"]), read,
                      f"{r['peak_rss_mib']:.0f} MiB",
                      f"{max(r['worker_peak_rss_mib']):.0f} MiB" if r.get("worker_peak_rss_mib") else "-",
                      f"{r['tokens_per_s']:,}" if r.get("tokens_per_s") else "-")
    console.print(table)
    by = {r["case"]: r["peak_rss_mib"] for r in results}
    summary = {}
    for name, (a, b) in {"big_minus_small_peak_mib": ("big", "small"),
                         "long_minus_small_peak_mib": ("big-long", "small"),
                         "control_minus_baseline_mib": ("control", "baseline"),
                         "small_minus_baseline_mib": ("small", "baseline")}.items():
        if a in by and b in by:
            summary[name] = round(by[a] - by[b], 1)
    console.print(summary)

    if args.plot:
        plot(results, big_bytes / max(big_docs, 1), args.plot)
        console.log(f"wrote {args.plot}")

    import torch
    import transformers

    out = {"benchmark": "corpus_memory", "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                      for k, v in vars(args).items() if k != "case_json"},
           "corpus_note": "files built by concatenating ../shared/corpus/ro-corpus-*.txt.xz text; the big one "
                          "repeats it whole to reach its size",
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "host": platform.node(),
                       "torch": torch.__version__, "transformers": transformers.__version__},
           "results": results, "summary": summary}
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        console.log(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
