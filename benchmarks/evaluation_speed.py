"""Wall time and GPU utilisation of the evaluation suite with its job scheduler.

GPU (the target: 2 teachers + 3 six-layer students x 7 tasks x 3 seeds in <= 10 minutes on
one H200, SM utilisation >= 60% averaged over the run): runs ``evaluate_models`` with the default
settings and the default number of workers, while ``nvidia-smi --query-gpu=utilization.gpu ...
-lms 500`` samples the GPU in a background process; then re-runs three short jobs (UPOS, SAPN and
STS of the model with the fewest layers, first seed) one at a time, and sets each score's
difference from the concurrent run beside that model's spread over the seeds (``alone_check``).
Writes the full evaluation (results.json, report.md, plots) under OUT/evaluation and the timing
under OUT/speed.json.

    python benchmarks/evaluation_speed.py --shared /root/stage/shared \\
        --models s1=runs/a/00-distill s2=runs/b/00-distill s3=runs/c/00-distill --out bench-eval

CPU smoke / the 2-core comparison (run on a quiet machine): one tiny random-weight BERT
(the cased teacher's tokenizer) x 7 tasks x 2 seeds on data subsets, first sequentially
(``--jobs 1``, in this process), then concurrently (``--jobs 2`` worker processes by default):

    python benchmarks/evaluation_speed.py --smoke --out bench-eval-cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

SMOKE_SETTINGS = {"max_train_examples": 200, "max_eval_examples": 100,
                  "finetune": {"epochs": 2, "max_length": 64, "batch_size": 16}}


def _named(spec: str) -> tuple[str, str]:
    if "=" in spec:
        name, path = spec.split("=", 1)
        return name, path
    return Path(spec.rstrip("/")).name, spec


def gpu_info() -> dict:
    """Name, driver, clocks and memory of GPU 0 from nvidia-smi (empty when there is none)."""
    fields = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,memory.total,power.limit"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(zip(fields.split(","), [v.strip() for v in out.split(",")]))


class GpuSampler:
    """``nvidia-smi`` in a background process, one line every 500 ms, for the run's mean SM utilisation."""

    def __init__(self, path: Path):
        self.path = path
        self.proc = None

    def __enter__(self):
        self.file = open(self.path, "w")
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used,clocks.sm",
                                          "--format=csv,noheader,nounits", "-lms", "500", "-i", "0"],
                                         stdout=self.file, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.file.close()

    def summary(self) -> dict:
        util, mem, clocks = [], [], []
        for line in self.path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 4:
                continue
            try:
                util.append(float(parts[1]))
                mem.append(float(parts[2]))
                clocks.append(float(parts[3]))
            except ValueError:
                continue
        if not util:
            return {"samples": 0}
        return {"samples": len(util), "interval_ms": 500, "utilization_gpu_mean": sum(util) / len(util),
                "utilization_gpu_max": max(util), "memory_used_mib_max": max(mem),
                "clocks_sm_mhz_mean": sum(clocks) / len(clocks)}


def _evaluate(models, cfg: dict, out: Path, device, seed: int, console: Console) -> tuple[dict, float]:
    from compresso.evaluation import evaluate_models

    started = time.time()
    results = evaluate_models(models, cfg, {"title": "evaluation speed benchmark"}, out, device, seed, console)
    return results, time.time() - started


def _headlines(results: dict) -> dict:
    return {name: {task: [r["metrics"][results["tasks"][task]["headline"]] for r in entry["runs"]]
                   for task, entry in per_task.items()} for name, per_task in results["scores"].items()}


def make_tiny_model(tokenizer_dir: Path, folder: Path) -> str:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128)
    BertForMaskedLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def run_smoke(args, console: Console) -> dict:
    import torch

    from compresso.evaluation import EvalModel

    shared = Path(args.shared)
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="compresso-bench-tiny-") as tmp:
        path = make_tiny_model(shared / "teachers" / "ro-bert-small-cased", Path(tmp) / "tiny")
        models = [EvalModel("tiny", path, "teacher")]
        n_train = args.max_train_examples or SMOKE_SETTINGS["max_train_examples"]
        cfg = dict(SMOKE_SETTINGS, data_dir=str(shared / "data"), seeds=args.seeds or 2, efficiency=False,
                   tasks=args.tasks or "all", max_train_examples=n_train, max_eval_examples=max(10, n_train // 2))
        runs = {}
        for mode, jobs in (("sequential", 1), ("concurrent", args.jobs or 2)):
            console.rule(f"{mode}: --jobs {jobs}")
            results, wall = _evaluate(models, dict(cfg, jobs=jobs), out / mode, torch.device("cpu"), args.seed,
                                      console)
            runs[mode] = {"wall_seconds": round(wall, 1), "scheduler": results["scheduler"],
                          "tokenisation": results["tokenisation"], "errors": len(results["errors"]),
                          "headline": _headlines(results)}
    seq, conc = runs["sequential"]["wall_seconds"], runs["concurrent"]["wall_seconds"]
    return {"mode": "smoke-cpu", "settings": cfg | {"data_dir": str(shared / "data")}, "runs": runs,
            "concurrent_over_sequential": round(conc / seq, 3),
            "same_scores": runs["sequential"]["headline"] == runs["concurrent"]["headline"]}


def run_gpu(args, console: Console) -> dict:
    import torch

    from compresso.evaluation import EvalModel

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --smoke for the CPU run")
    shared = Path(args.shared)
    teachers = [_named(t) for t in (args.teachers or [f"cased={shared / 'teachers' / 'ro-bert-small-cased'}",
                                                      f"uncased={shared / 'teachers' / 'ro-robert-small-uncased'}"])]
    students = [_named(m) for m in args.models]
    models = [EvalModel(n, p, "teacher") for n, p in teachers] + [EvalModel(n, p, "student") for n, p in students]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"data_dir": str(shared / "data"), "tasks": args.tasks or "all", "seeds": args.seeds or 3,
           "efficiency": args.efficiency, "models": [m.name for m in models]}
    if args.jobs:
        cfg["jobs"] = args.jobs
    if args.max_train_examples:  # quick runs only: the target is for the full data
        cfg.update(max_train_examples=args.max_train_examples, max_eval_examples=max(10, args.max_train_examples // 2))
    info_before = gpu_info()
    sampler = GpuSampler(out / "nvidia-smi.csv")
    with sampler:
        results, wall = _evaluate(models, cfg, out / "evaluation", device, args.seed, console)
    utilisation = sampler.summary()
    report = {"mode": "gpu", "device": str(device), "gpu": info_before, "gpu_after": gpu_info(), "torch": torch.__version__,
              "cpu_cores": len(os.sched_getaffinity(0)), "models": {m.name: m.path for m in models},
              "settings": cfg, "wall_seconds": round(wall, 1), "target_wall_seconds": 600,
              "utilisation": utilisation, "target_utilisation": 60,
              "scheduler": results["scheduler"], "tokenisation": results["tokenisation"],
              "errors": results["errors"], "evaluation": str(out / "evaluation" / "results.json")}
    # written now as well: a time limit hitting the extra check below must not lose the measurement
    (out / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_alone_check and not results["errors"]:
        report["alone_check"] = alone_check(models, cfg, results, out, device, args.seed, console)
    return report


def run_alone_only(args, console: Console) -> dict:
    """The alone check on its own, for the evaluation an earlier invocation left in OUT (for a device
    whose limit per command is shorter than the main run plus the check)."""
    import torch

    from compresso.evaluation import EvalModel

    out = Path(args.out)
    try:
        report = json.loads((out / "speed.json").read_text())
        results = json.loads((out / "evaluation" / "results.json").read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--alone-only needs {out}/speed.json and {out}/evaluation/results.json from a finished "
                         f"main run: {exc}") from None
    models = [EvalModel(m["name"], m["path"], m["role"]) for m in results["models"]]
    report["alone_check"] = alone_check(models, report["settings"], results, out, torch.device(args.device),
                                        results["seed"], console)
    return report


ALONE_TASKS = ("upos", "sapn", "sts")


def alone_check(models, cfg: dict, results: dict, out: Path, device, seed: int, console: Console) -> dict:
    """The same jobs again, one at a time in this process: does a job's score depend on running
    beside others? Three short jobs (UPOS, SAPN, STS, the model with the fewest layers, one seed),
    each one's difference set beside the spread of that model's score over the seeds."""
    from compresso.evaluation.runner import encoder_layers

    model = min(models, key=encoder_layers)  # the cheapest to re-run; the first such in order
    tasks = [t for t in ALONE_TASKS if t in results["tasks"]]
    # the main run's thread count per job: on CPU it alone can change float summation order
    alone_cfg = dict(cfg, tasks=tasks, seeds=1, jobs=1, efficiency=False, models=[model.name],
                     threads_per_job=results["scheduler"]["threads_per_job"])
    console.rule(f"alone check: {model.name} x {', '.join(tasks)}, seed {seed}, one job at a time")
    alone, wall = _evaluate([model], alone_cfg, out / "alone", device, seed, console)
    jobs = {}
    for task in tasks:
        head = results["tasks"][task]["headline"]
        runs = results["scores"][model.name][task]["runs"]
        together = next(r for r in runs if r["seed"] == seed)
        by_itself = alone["scores"][model.name][task]["runs"][0]
        seed_values = [r["metrics"][head] for r in runs]
        jobs[task] = {"metric": head, "concurrent": together["metrics"][head], "alone": by_itself["metrics"][head],
                      "difference": by_itself["metrics"][head] - together["metrics"][head],
                      "identical": by_itself["metrics"] == together["metrics"],
                      "best_epoch": {"concurrent": together["best_epoch"], "alone": by_itself["best_epoch"]},
                      "seed_values": seed_values,
                      "seed_std": float(np.std(seed_values, ddof=1)) if len(seed_values) > 1 else None,
                      "train_seconds": {"concurrent": together["train_seconds"], "alone": by_itself["train_seconds"]}}
    return {"model": model.name, "seed": seed, "tasks": jobs, "wall_seconds": round(wall, 1)}


def print_table(report: dict, console: Console) -> None:
    table = Table(title=f"evaluation speed ({report['mode']})")
    table.add_column("run")
    table.add_column("jobs")
    table.add_column("workers", justify="right")
    table.add_column("wall s", justify="right")
    table.add_column("GPU util %", justify="right")
    if report["mode"] == "gpu":
        s, u = report["scheduler"], report["utilisation"]
        table.add_row("concurrent", str(s["jobs"]), str(s["workers"]), f"{report['wall_seconds']:.0f}",
                      f"{u.get('utilization_gpu_mean', float('nan')):.0f}")
    else:
        for mode, r in report["runs"].items():
            table.add_row(mode, str(r["scheduler"]["jobs"]), str(r["scheduler"]["workers"]),
                          f"{r['wall_seconds']:.1f}", "–")
    console.print(table)
    if report["mode"] == "gpu":
        console.print(f"GPU: {report['gpu'].get('name', '?')}, SM clock {report['gpu'].get('clocks.sm', '?')} / "
                      f"{report['gpu'].get('clocks.max.sm', '?')} MHz; targets: <= 600 s, >= 60% utilisation")
        if "alone_check" in report:
            a = report["alone_check"]
            check = Table(title=f"same job alone vs concurrent ({a['model']}, seed {a['seed']}, {a['wall_seconds']:.0f} s)")
            for col in ("task", "metric", "concurrent", "alone", "difference", "std over seeds"):
                check.add_column(col)
            for task, j in a["tasks"].items():
                std = "–" if j["seed_std"] is None else f"{j['seed_std']:.2f}"
                check.add_row(task, j["metric"], f"{j['concurrent']:.2f}", f"{j['alone']:.2f}",
                              f"{j['difference']:+.2f}", std)
            console.print(check)
    else:
        console.print(f"concurrent / sequential wall time: {report['concurrent_over_sequential']:.3f} "
                      f"(same scores: {report['same_scores']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=[], metavar="NAME=PATH", help="students (save_pretrained folders)")
    parser.add_argument("--teachers", nargs="*", metavar="NAME=PATH",
                        help="default: the two fixture teachers under --shared")
    parser.add_argument("--shared", default="../shared", help="folder with teachers/ and data/")
    parser.add_argument("--tasks", help="comma-separated tasks (default: all seven)")
    parser.add_argument("--seeds", type=int, help="default 3 (GPU), 2 (--smoke)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--jobs", type=int, help="workers (default: the scheduler's choice; --smoke: 2)")
    parser.add_argument("--efficiency", action="store_true", help="also measure size and speed (not timed by the target)")
    parser.add_argument("--no-alone-check", action="store_true",
                        help="skip re-running UPOS, SAPN and STS of the smallest model alone after the run (GPU)")
    parser.add_argument("--alone-only", action="store_true",
                        help="only the alone check, for the finished run in --out (updates its speed.json)")
    parser.add_argument("--smoke", action="store_true", help="CPU: one tiny model, sequential vs concurrent")
    parser.add_argument("--max-train-examples", type=int,
                        help="training examples per task, validation and test get half (--smoke: 200; default "
                             "otherwise: all, as the target needs)")
    parser.add_argument("--device", default="cuda", help="device of the non-smoke run (cpu only to try the script)")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)

    # a time limit's SIGTERM unwinds like Ctrl-C: worker processes and nvidia-smi are stopped, and
    # the finished jobs stay in OUT/evaluation/.partial-jobs for the next run to resume
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    console = Console()
    if not (Path(args.shared) / "data").is_dir():
        console.print(f"[red]{args.shared}/data not found: pass --shared[/red]")
        return 2
    if not args.smoke and not args.models and not args.alone_only:
        console.print("[red]--models NAME=PATH ... (the students) are needed for the GPU run; --smoke for CPU[/red]")
        return 2
    # Every model must be loadable before a job starts: a missing folder would otherwise fail each of
    # its jobs one by one and leave a report with empty rows (as `compresso evaluate` does, exit 2).
    from compresso.models import ModelLoadError, check_available

    for given in [*args.models, *(args.teachers or [])]:
        name, path = _named(given)
        try:
            check_available(path)
        except ModelLoadError as exc:
            console.print(f"[red]model {name}: {exc}[/red]")
            return 2
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.alone_only:
        shutil.rmtree(out / "sequential", ignore_errors=True)
        shutil.rmtree(out / "concurrent", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    if args.alone_only:
        report = run_alone_only(args, console)
    else:
        report = run_smoke(args, console) if args.smoke else run_gpu(args, console)
    command = " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))
    if args.alone_only:
        report["alone_check"]["command"] = command
    else:
        report["command"] = command
    (out / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report, console)
    console.print(f"written: {out / 'speed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
