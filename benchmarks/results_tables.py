"""Paper-style Markdown tables from an evaluation's ``results.json`` (docs/results.md is built from these).

Prints three tables: headline scores (mean ± std over seeds, plus the plain mean of the task
columns), the paired-bootstrap differences as a pair × task matrix (bold = distinguishable), and
loyalty (label / probability; STS: regression). ``--names`` renames models for display
(``cased=bert-cased (teacher)``), and its order is the row order. ``--table`` prints one of
the three (docs/results.md marks each table with the command that regenerates it, and
tests/test_docs_honest.py checks that it does, byte for byte).

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

from compresso.evaluation.report import format_stat, loyalty_cell, markdown_table  # noqa: E402
from compresso.evaluation.tasks import TASKS  # noqa: E402


def results_headline(results: dict, task: str) -> str:
    """The headline metric the comparisons used for this task (so every table agrees)."""
    for c in results["comparisons"]:
        if c["task"] == task:
            return c["metric"]
    return TASKS[task].headline if task in TASKS else None


def score_table(results: dict, names: dict[str, str]) -> str:
    tasks = results["tasks"]
    rows = []
    for model in names:
        # A task whose every run failed has no entry: its cell is "–" and the model gets no mean
        # (a mean over fewer tasks would not compare with the others').
        stats = [results["scores"][model].get(t, {}).get("metrics", {}).get(results_headline(results, t))
                 for t in tasks]
        mean = f"{sum(m['mean'] for m in stats) / len(stats):.2f}" if all(stats) else "–"
        rows.append([names[model], *(format_stat(m) if m else "–" for m in stats), mean])
    return markdown_table(["model", *(t.upper() for t in tasks), f"mean of {len(tasks)}"], rows)


def _by_pair(entries: list[dict], first: str, second: str, names: dict[str, str]) -> dict[tuple, dict[str, dict]]:
    """Entries of the named models grouped by (first, second) model, then by task."""
    pairs: dict[tuple, dict[str, dict]] = {}
    for e in entries:
        if e[first] in names and e[second] in names:
            pairs.setdefault((e[first], e[second]), {})[e["task"]] = e
    return pairs


def _difference_cell(c: dict | None) -> str:
    if c is None:
        return "–"
    text = f"{c['difference']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]".replace("-", "−")
    return f"**{text}**" if c["distinguishable"] else text


def difference_table(results: dict, names: dict[str, str]) -> str:
    tasks = results["tasks"]
    rows = [[f"{names[a]} − {names[b]}", *(_difference_cell(by_task.get(t)) for t in tasks)]
            for (a, b), by_task in _by_pair(results["comparisons"], "a", "b", names).items()]
    return markdown_table(["A − B", *(t.upper() for t in tasks)], rows)


def loyalty_table(results: dict, names: dict[str, str]) -> str:
    tasks = results["tasks"]
    rows = [[f"{names[s]} → {names[r]}", *(loyalty_cell(by_task.get(t), 3) for t in tasks)]
            for (s, r), by_task in _by_pair(results["loyalty"], "student", "reference", names).items()]
    return markdown_table(["student → reference", *(t.upper() for t in tasks)], rows, ["l"] + ["c"] * len(tasks))


TABLES = {"scores": score_table, "differences": difference_table, "loyalty": loyalty_table}


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="an evaluation's results.json")
    ap.add_argument("--names", nargs="*", default=[], help="MODEL=DISPLAY NAME, in row order")
    ap.add_argument("--table", choices=sorted(TABLES), action="append",
                    help="print only this table (repeatable; default: all three, in the order scores, "
                         "differences, loyalty)")
    args = ap.parse_args(argv)
    results = json.loads(args.results.read_text())
    names = dict(n.split("=", 1) for n in args.names) or {m: m for m in results["scores"]}
    missing = [m for m in names if m not in results["scores"]]
    if missing:
        ap.error(f"{args.results}: no model(s) {missing}; it has {list(results['scores'])}")
    text = "\n\n".join(TABLES[t](results, names) for t in (args.table or TABLES))
    print(text)
    return text


if __name__ == "__main__":
    main()
