"""Paper-style Markdown tables from an evaluation's ``results.json`` (docs/results.md is built from these).

Prints three tables: headline scores (mean ± std over seeds, plus the plain mean of the task
columns), the paired-bootstrap differences as a pair × task matrix (bold = distinguishable), and
loyalty (label / probability; STS: regression). ``--names`` renames models for display
(``cased=bert-cased (teacher)``), and its order is the row order.

    python benchmarks/results_tables.py docs/results/fixtures_3seeds_h200/results.json \\
        --names "cased=bert-cased (teacher)" "uncased=robert-uncased (teacher)" distil-bert=Distil-BERT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from compresso.evaluation.tasks import TASKS  # noqa: E402


def headline(task: str) -> str:
    return TASKS[task].headline if task in TASKS else None


def score_table(results: dict, names: dict[str, str]) -> str:
    tasks = results["tasks"]
    lines = ["| model | " + " | ".join(t.upper() for t in tasks) + " | mean of " + str(len(tasks)) + " |",
             "| :--- | " + " | ".join("---:" for _ in tasks) + " | ---: |"]
    for model in names:
        cells, means = [], []
        for t in tasks:
            m = results["scores"][model][t]["metrics"][results_headline(results, t)]
            cells.append(f"{m['mean']:.2f} ± {m['std']:.2f}")
            means.append(m["mean"])
        lines.append(f"| {names[model]} | " + " | ".join(cells) + f" | {sum(means) / len(means):.2f} |")
    return "\n".join(lines)


def results_headline(results: dict, task: str) -> str:
    """The headline metric the comparisons used for this task (so every table agrees)."""
    for c in results["comparisons"]:
        if c["task"] == task:
            return c["metric"]
    return headline(task)


def difference_table(results: dict, names: dict[str, str]) -> str:
    tasks = results["tasks"]
    pairs: dict[tuple[str, str], dict[str, dict]] = {}
    for c in results["comparisons"]:
        if c["a"] in names and c["b"] in names:
            pairs.setdefault((c["a"], c["b"]), {})[c["task"]] = c
    lines = ["| A − B | " + " | ".join(t.upper() for t in tasks) + " |",
             "| :--- | " + " | ".join("---:" for _ in tasks) + " |"]
    for (a, b), by_task in pairs.items():
        cells = []
        for t in tasks:
            c = by_task.get(t)
            if c is None:
                cells.append("–")
                continue
            text = f"{c['difference']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]".replace("-", "−")
            cells.append(f"**{text}**" if c["distinguishable"] else text)
        lines.append(f"| {names[a]} − {names[b]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loyalty_table(results: dict, names: dict[str, str]) -> str:
    tasks = results["tasks"]
    rows: dict[tuple[str, str], dict[str, dict]] = {}
    for entry in results["loyalty"]:
        if entry["student"] in names and entry["reference"] in names:
            rows.setdefault((entry["student"], entry["reference"]), {})[entry["task"]] = entry
    lines = ["| student → reference | " + " | ".join(t.upper() for t in tasks) + " |",
             "| :--- | " + " | ".join(":---:" for _ in tasks) + " |"]

    def ms(x: dict) -> str:
        return f"{x['mean']:.3f} ± {x['std']:.3f}"

    for (s, r), by_task in rows.items():
        cells = []
        for t in tasks:
            e = by_task.get(t)
            if e is None:
                cells.append("–")
            elif "regression" in e:
                cells.append(ms(e["regression"]))
            else:
                cells.append(f"{ms(e['label'])} / {ms(e['probability'])}")
        lines.append(f"| {names[s]} → {names[r]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="an evaluation's results.json")
    ap.add_argument("--names", nargs="*", default=[], help="MODEL=DISPLAY NAME, in row order")
    args = ap.parse_args(argv)
    results = json.loads(args.results.read_text())
    names = dict(n.split("=", 1) for n in args.names) or {m: m for m in results["scores"]}
    missing = [m for m in names if m not in results["scores"]]
    if missing:
        ap.error(f"{args.results}: no model(s) {missing}; it has {list(results['scores'])}")
    text = "\n\n".join([score_table(results, names), difference_table(results, names), loyalty_table(results, names)])
    print(text)
    return text


if __name__ == "__main__":
    main()
