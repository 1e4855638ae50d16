"""Summarise the GPU samples of an evaluation run against its speed targets, without re-running it.

``benchmarks/evaluation_speed.py`` samples ``nvidia-smi`` every 500 ms while the evaluation runs
(OUT/nvidia-smi.csv: timestamp, utilization.gpu %, memory.used MiB, clocks.sm MHz) and writes its
own speed.json at the end. When that script is stopped before speed.json (a time limit during its
final "same job alone" re-run), the evaluation's results.json and the samples still hold the
measurement; this script turns them into the same figures: wall time, mean / median utilisation,
the fraction of samples at or above the threshold, clocks, and whether the targets (<= 600 s wall,
>= 60 % mean utilisation) were met.

    python benchmarks/gpu_utilisation_summary.py \\
        --samples docs/results/fixtures_3seeds_h200/nvidia-smi.csv \\
        --evaluation docs/results/fixtures_3seeds_h200/results.json \\
        --note "the same-job-alone check was cut by the time limit" --out speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime
from pathlib import Path

TARGET_WALL_SECONDS = 600  # the whole workload in <= 10 minutes on one H200
TARGET_UTILISATION = 60.0  # SM utilisation >= 60 % averaged over the run
SAMPLE_FORMAT = "%Y/%m/%d %H:%M:%S.%f"  # nvidia-smi --format=csv timestamps


class InputError(ValueError):
    """A samples or results file that is not what this script reads."""


def read_samples(path: Path) -> list[dict]:
    """One dict per line of ``nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,clocks.sm
    --format=csv,noheader,nounits``; any other line is an error naming the file and line."""
    samples = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            raise InputError(f"{path}, line {number}: expected 4 comma-separated fields (timestamp, "
                             f"utilization.gpu, memory.used, clocks.sm), got {len(parts)}: {line!r}")
        try:
            samples.append({"time": datetime.strptime(parts[0], SAMPLE_FORMAT), "utilisation": float(parts[1]),
                            "memory_mib": float(parts[2]), "clocks_sm_mhz": float(parts[3])})
        except ValueError as exc:
            raise InputError(f"{path}, line {number}: {exc} in {line!r}") from None
    if not samples:
        raise InputError(f"{path}: no samples")
    return samples


def summarise(samples: list[dict], threshold: float = TARGET_UTILISATION) -> dict:
    util = [s["utilisation"] for s in samples]
    clocks = [s["clocks_sm_mhz"] for s in samples]
    return {"samples": len(samples), "first": samples[0]["time"].isoformat(timespec="milliseconds"),
            "last": samples[-1]["time"].isoformat(timespec="milliseconds"),
            "span_seconds": round((samples[-1]["time"] - samples[0]["time"]).total_seconds(), 1),
            "utilisation_mean": round(statistics.fmean(util), 2), "utilisation_median": statistics.median(util),
            "threshold": threshold,
            "fraction_at_or_above_threshold": round(sum(u >= threshold for u in util) / len(util), 4),
            "fraction_zero": round(sum(u == 0 for u in util) / len(util), 4),
            "memory_used_mib_max": max(s["memory_mib"] for s in samples),
            "clocks_sm_mhz_median": statistics.median(clocks), "clocks_sm_mhz_max": max(clocks)}


def evaluation_facts(path: Path) -> dict:
    """Wall time, workload and scheduler of an evaluation's results.json."""
    try:
        results = json.loads(path.read_text())
        env, sched = results["environment"], results["scheduler"]
        facts = {"results": str(path), "created": results["created"], "wall_seconds": results["seconds"],
                 "gpu": env.get("gpu"), "device": env["device"], "torch": env["torch"],
                 "transformers": env["transformers"], "cpu_count": env.get("cpu_count"),
                 "models": [m["name"] for m in results["models"]], "tasks": list(results["tasks"]),
                 "seeds": results["seeds"], "jobs": sched["jobs"], "workers": sched["workers"],
                 "threads_per_job": sched["threads_per_job"], "scheduler_mode": sched["mode"],
                 "scheduler_wall_seconds": sched.get("wall_seconds"), "errors": len(results["errors"])}
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise InputError(f"{path}: not an evaluation results.json (missing {exc})") from None
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", required=True, help="nvidia-smi.csv written by evaluation_speed.py")
    parser.add_argument("--evaluation", required=True, help="the evaluation's results.json")
    parser.add_argument("--threshold", type=float, default=TARGET_UTILISATION, help="utilisation %% (default 60)")
    parser.add_argument("--note", action="append", default=[], help="free text kept in the JSON (repeatable)")
    parser.add_argument("--out", required=True, help="JSON to write")
    args = parser.parse_args(argv)
    try:
        facts = evaluation_facts(Path(args.evaluation))
        utilisation = summarise(read_samples(Path(args.samples)), args.threshold)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {"evaluation": facts, "utilisation": utilisation | {"samples_file": args.samples,
                                                                  "interval_ms": 500},
              "targets": {"wall_seconds": TARGET_WALL_SECONDS, "utilisation_mean": TARGET_UTILISATION,
                          "wall_met": facts["wall_seconds"] <= TARGET_WALL_SECONDS,
                          "utilisation_met": utilisation["utilisation_mean"] >= TARGET_UTILISATION},
              "notes": args.note}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    u, t = report["utilisation"], report["targets"]
    print(f"{facts['gpu']}: {facts['jobs']} jobs, {facts['workers']} workers, wall {facts['wall_seconds']:.0f} s "
          f"(target <= {TARGET_WALL_SECONDS}: {'met' if t['wall_met'] else 'not met'}); utilisation mean "
          f"{u['utilisation_mean']:.1f} %, median {u['utilisation_median']:.0f} %, "
          f"{100 * u['fraction_at_or_above_threshold']:.1f} % of {u['samples']} samples >= {args.threshold:.0f} % "
          f"(target mean >= {TARGET_UTILISATION:.0f}: {'met' if t['utilisation_met'] else 'not met'})")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
