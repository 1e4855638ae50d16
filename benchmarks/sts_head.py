"""STS head: the cross-encoder (the pair as one sequence, one regression output) against the siamese
bi-encoder (each sentence alone, mean-pooled, cosine; Sentence-BERT's CosineSimilarityLoss), both
through ``evaluate_models`` on RO-STS exactly as the suite runs them (docs/evaluation.md, "STS").

Each variant is one STS job (model x seed) with the suite's settings for that head; ``cross`` uses
the settings the suite had for it (lr 2e-4, up to 20 epochs, patience 3), ``siamese`` the
built-in STS defaults. ``--max-train-examples`` caps the training pairs (validation and test stay
whole unless ``--max-eval-examples`` caps them too) for a CPU run; the JSON says so. Each finished run is added to ``--out`` at once (under a
lock), so one invocation per head can run in parallel into the same file.

    python benchmarks/sts_head.py --shared ../shared --models ../shared/teachers/ro-bert-small-cased \\
        --max-train-examples 500 --max-eval-examples 500 --out docs/results/evaluation/sts_head.json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

# the cross-encoder as the suite ran it before the siamese head became the default
CROSS = {"head": "cross", "lr": 2e-4, "epochs": 20, "patience": 3, "batch_size": 32, "max_length": 128}
VARIANTS = {"cross": CROSS, "siamese": {}}


def run_variant(model_path: str, name: str, overrides: dict, args, device) -> dict:
    import torch

    from compresso.evaluation import EvalModel, evaluate_models

    cfg = {"data_dir": str(Path(args.shared) / "data"), "tasks": ["sts"], "seeds": 1, "efficiency": False,
           "jobs": 1, "per_task": {"sts": overrides} if overrides else {}}
    if args.max_train_examples:
        cfg["max_train_examples"] = args.max_train_examples
    if args.max_eval_examples:
        cfg["max_eval_examples"] = args.max_eval_examples
    model_name = Path(model_path.rstrip("/")).name
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="compresso-sts-head-") as tmp:
        results = evaluate_models([EvalModel(model_name, model_path, "teacher")], cfg, {"plots": False}, Path(tmp),
                                  torch.device(device), args.seed, Console(file=io.StringIO()))
    wall = time.time() - started
    if results["errors"]:
        raise SystemExit(f"{name} on {model_name} failed: {results['errors'][0]['error']}")
    run = results["scores"][model_name]["sts"]["runs"][0]
    return {"model": model_name, "variant": name, "seed": args.seed, "settings": run["settings"],
            "test": run["metrics"], "validation_pearson": run["validation"], "best_epoch": run["best_epoch"],
            "epochs_run": run["epochs_run"], "history": run["history"], "train_seconds": run["train_seconds"],
            "wall_seconds": round(wall, 1), "sizes": results["tasks"]["sts"]["sizes"],
            "notes": results["tasks"]["sts"]["notes"]}


def _add_run(args, run: dict) -> dict:
    """Add one run to the JSON file (replacing an earlier run of the same model, variant and seed),
    under a file lock: several invocations (e.g. one per head, in parallel) can fill one file."""
    import fcntl

    import torch

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_name(args.out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        report = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
        caps = {"max_train_examples": args.max_train_examples, "max_eval_examples": args.max_eval_examples}
        if any(report.get(k, v) != v for k, v in caps.items()):
            raise SystemExit(f"{args.out} holds runs with other caps than {caps}: use another --out")
        report.update({"benchmark": "sts_head", "device": args.device, "torch": torch.__version__,
                       "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                       "cpu": platform.processor() or platform.machine(),
                       **caps,
                       "timing_note": "train/wall seconds on a CPU shared with other processes: rough only"})
        same = (run["model"], run["variant"], run["seed"])
        report["runs"] = [r for r in report["runs"] if (r["model"], r["variant"], r["seed"]) != same] + [run]
        report.setdefault("commands", [])
        command = " ".join(["benchmarks/sts_head.py"] + sys.argv[1:])
        if command not in report["commands"]:
            report["commands"].append(command)
        tmp = args.out.with_name(args.out.name + ".partial")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(args.out)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default="../shared", help="folder with data/")
    parser.add_argument("--models", nargs="+", required=True, help="encoders (save_pretrained folders)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-train-examples", type=int, help="cap on training pairs (CPU runs)")
    parser.add_argument("--max-eval-examples", type=int, help="cap on validation and test pairs each (CPU runs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True, help="JSON file")
    args = parser.parse_args(argv)

    console = Console()
    for model in args.models:
        for name in args.variants:
            console.log(f"{name} · {model}")
            run = run_variant(model, name, VARIANTS[name], args, args.device)
            console.log(f"  Pearson {run['test']['pearson']:.2f} (best epoch {run['best_epoch']} of "
                        f"{run['epochs_run']}, {run['train_seconds']:.0f}s)")
            report = _add_run(args, run)
    table = Table(title="STS head (RO-STS test)")
    for col in ("model", "head", "Pearson", "Spearman", "best/run epochs", "train s"):
        table.add_column(col)
    for r in report["runs"]:
        table.add_row(r["model"], r["variant"], f"{r['test']['pearson']:.2f}", f"{r['test']['spearman']:.2f}",
                      f"{r['best_epoch']}/{r['epochs_run']}", f"{r['train_seconds']:.0f}")
    console.print(table)
    console.print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
