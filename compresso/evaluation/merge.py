"""Merge evaluations run separately (one process per task, on several GPUs or machines) into one
report, and attach an efficiency measurement made on its own (``benchmarks/efficiency.py``).

Evaluations of the same models with the same seeds can be split by task and run in parallel:
each task's fine-tuning and loyalty only need that task's predictions, so the merged report is
the one a single run would have written.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from compresso.evaluation.config import ReportConfig
from compresso.evaluation.report import write_outputs


class MergeError(ValueError):
    pass


def merge_results(parts: list[dict], efficiency: dict | None = None, title: str | None = None) -> dict:
    """One results dict from several ``results.json`` dicts over disjoint tasks of the same models."""
    if not parts:
        raise MergeError("nothing to merge")
    names = [m["name"] for m in parts[0]["models"]]
    merged = json.loads(json.dumps(parts[0]))
    merged["tasks"], merged["loyalty"], merged["errors"], merged["comparisons"] = {}, [], [], []
    merged["not_scored"] = []
    merged["scheduler"] = merged["tokenisation"] = None  # per part; each part's results.json keeps its own
    merged["scores"] = {name: {} for name in names}
    merged["seconds"] = 0.0
    for i, part in enumerate(parts):
        if [m["name"] for m in part["models"]] != names:
            raise MergeError(f"part {i + 1} evaluates {[m['name'] for m in part['models']]}, part 1 {names}")
        if part["seeds"] != merged["seeds"]:
            raise MergeError(f"part {i + 1} used seeds {part['seeds']}, part 1 {merged['seeds']}")
        clash = set(part["tasks"]) & set(merged["tasks"])
        if clash:
            raise MergeError(f"task(s) {', '.join(sorted(clash))} appear in more than one part")
        merged["tasks"].update(part["tasks"])
        for name in names:
            merged["scores"][name].update(part["scores"].get(name, {}))
        merged["loyalty"] += part["loyalty"]
        merged["comparisons"] += part.get("comparisons") or []  # per task, so disjoint parts just add up
        merged["errors"] += part["errors"]
        merged["not_scored"] += part.get("not_scored") or []
        merged["seconds"] = max(merged["seconds"], part["seconds"])  # parts ran side by side
    merged["config"]["tasks"] = list(merged["tasks"])
    merged["merged_from"] = [p.get("created") for p in parts]
    if efficiency is not None:
        unknown = set(efficiency.get("models", {})) - set(names)
        if unknown:
            raise MergeError(f"efficiency measures models that were not evaluated: {', '.join(sorted(unknown))}")
        teachers = {m["name"] for m in merged["models"] if m["role"] == "teacher"}
        merged["efficiency"] = dict(efficiency, reference_is_teacher=efficiency.get("reference") in teachers)
    if title:
        merged["title"] = title
    return merged


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--efficiency", "efficiency_path", type=click.Path(exists=True, dir_okay=False),
              help="JSON written by benchmarks/efficiency.py --out, for the same models.")
@click.option("--title", help="Heading of report.md.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for report.md, results.json, plots.")
def report(results: tuple[str, ...], efficiency_path: str | None, title: str | None, out: str) -> None:
    """Merge results.json files of evaluations split by task into one report.

    \b
    Example (one process per task, then one report):
      for t in upos xpos ner sapn sar sts di; do compresso evaluate A=... B=... --tasks $t --out ev-$t & done; wait
      compresso report ev-*/results.json --efficiency eff.json --out evaluation
    """
    from compresso.cli import _bad_input
    from compresso.evaluation.report import check_evaluation_folder
    from compresso.evaluation.runner import EvaluationError

    try:
        check_evaluation_folder(Path(out))  # as for `evaluate --out`: never someone else's folder
    except EvaluationError as exc:
        _bad_input(str(exc))
    parts = []
    for path in results:
        try:
            parts.append(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as exc:
            _bad_input(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})")
    eff = json.loads(Path(efficiency_path).read_text()) if efficiency_path else None
    try:
        merged = merge_results(parts, eff, title)
    except MergeError as exc:
        _bad_input(str(exc))
    write_outputs(merged, ReportConfig(title=title), Path(out))
    click.echo(f"merged {len(parts)} evaluation(s) → {Path(out) / 'report.md'}")
