"""Markdown tables of a task-model study (recipes/task_ro_*.yaml) from its committed JSON.

Per task, one row per model scored on it: the fine-tuned teachers, their ensemble (scored by the
two-teacher task-distillation stage, from its stage.json), the general student fine-tuned the usual
way (mean ± std over the evaluation's seeds), the task-distilled students and the INT8 student, with
the paired-bootstrap difference to the fine-tuned-only student (bold = its 95% interval excludes 0),
parameters and fp32 size. ``--table loyalty`` prints each student's loyalty to each teacher scored
on the task (label / probability).

    python benchmarks/task_study_tables.py docs/results/task_ro_cpu --task ner
    python benchmarks/task_study_tables.py docs/results/task_ro_cpu --task ner --table loyalty
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.results_tables import results_headline  # noqa: E402
from compresso.evaluation.report import markdown_table  # noqa: E402


def _stage_metrics(folder: Path) -> dict[str, dict]:
    """stage name (without its number) -> the metrics its stage.json recorded."""
    out = {}
    for path in sorted((folder / "stages").glob("*.stage.json")):
        stage = json.loads(path.read_text())
        out[path.name.removesuffix(".stage.json").split("-", 1)[1]] = stage.get("metrics", {})
    return out


def _route(name: str, results: dict) -> str:
    model = next((m for m in results["models"] if m["name"] == name), {})
    if model.get("role") == "teacher":
        return "fine-tuned teacher, as is"
    return {"task_distill": "task-distilled, as is", "quantize": "INT8 of its input, as is",
            "distill": "general student fine-tuned here (the usual route)"}.get(model.get("strategy"), "")


def _cell(stat: dict) -> str:
    if stat.get("std") is None:
        return f"{stat['mean']:.2f}"
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def score_table(folder: Path, task: str, baseline: str) -> str:
    results = json.loads((folder / "results.json").read_text())
    metric = results_headline(results, task)
    if metric is None:
        raise SystemExit(f"results.json has no comparison on {task}")
    stages = _stage_metrics(folder)
    efficiency = results.get("efficiency", {}).get("models", {})
    diffs = {}
    for c in results["comparisons"]:
        if c["task"] == task and baseline in (c["a"], c["b"]):
            other, sign = (c["a"], 1) if c["b"] == baseline else (c["b"], -1)
            low, high = sorted((sign * c["low"], sign * c["high"]))
            text = f"{sign * c['difference']:+.2f} [{low:+.2f}, {high:+.2f}]"
            diffs[other] = f"**{text}**" if c["distinguishable"] else text
    rows = []
    for name, per_task in results["scores"].items():
        if task not in per_task:
            continue
        eff = efficiency.get(name, {})
        rows.append([name, _route(name, results), str(len(per_task[task]["metrics"][metric]["values"])),
                     _cell(per_task[task]["metrics"][metric]), "–" if name == baseline else diffs.get(name, ""),
                     f"{eff['parameters'] / 1e6:.2f} M" if eff.get("parameters") else "",
                     f"{eff['size_fp32_bytes'] / 2**20:.1f} MiB" if eff.get("size_fp32_bytes") else "",
                     f"{eff['disk_bytes'] / 2**20:.1f} MiB" if eff.get("disk_bytes") else ""])
        ensemble = stages.get(name.split("-", 1)[1], {}).get("ensemble")
        if ensemble:  # the teachers' ensemble, scored by this stage on the same test split
            rows.append([f"ensemble of {name}'s teachers", f"{ensemble['mode']} mean of the teachers", "1",
                         f"{ensemble['test'][metric]:.2f}", "", "", "", ""])
    headers = ["model", "route", "scored runs", f"test {metric}", f"Δ vs {baseline} [95% CI]", "parameters",
               "fp32 size", "on disk"]
    return markdown_table(headers, rows, align=["l", "l"] + ["r"] * (len(headers) - 2))


def loyalty_table(folder: Path, task: str) -> str:
    results = json.loads((folder / "results.json").read_text())
    entries = [e for e in results["loyalty"] if e["task"] == task]
    references = sorted({e["reference"] for e in entries})
    rows = []
    for student in dict.fromkeys(e["student"] for e in entries):
        cells = []
        for ref in references:
            e = next((x for x in entries if x["student"] == student and x["reference"] == ref), None)
            cells.append("" if e is None else
                         f"{e['label']['mean']:.4f} / {e['probability']['mean']:.4f}"
                         if e.get("probability") else f"{e['label']['mean']:.4f}")
        rows.append([student, *cells])
    return markdown_table(["student", *[f"to {r} (label / probability)" for r in references]], rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a study folder: results.json and stages/*.stage.json")
    parser.add_argument("--task", required=True)
    parser.add_argument("--baseline", default="04-general", help="the fine-tuned-only student")
    parser.add_argument("--table", choices=["scores", "loyalty"], default="scores")
    args = parser.parse_args(argv)
    table = score_table(args.folder, args.task, args.baseline) if args.table == "scores" \
        else loyalty_table(args.folder, args.task)
    print(table + "\n")  # a blank line ends the table before the generated block's end marker


if __name__ == "__main__":
    main()
