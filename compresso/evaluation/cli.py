"""``compresso evaluate``: the evaluation suite on models given on the command line.

Exit codes: 0 success, 1 some model/task runs failed (the report lists them), 2 bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import yaml

from compresso.console import console, err_console, print_error


def _bad_input(message: str) -> None:
    print_error(message)
    sys.exit(2)


def _overrides(items: tuple[str, ...]) -> tuple[dict, dict]:
    """``--set key.path=value`` (YAML values) into evaluate / report dicts; ``report.`` keys go to the latter."""
    evaluate: dict = {}
    report: dict = {}
    for item in items:
        if "=" not in item:
            _bad_input(f"--set {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            _bad_input(f"--set {item!r}: empty key")
        target = evaluate
        if parts[0] == "report":
            target, parts = report, parts[1:]
        elif parts[0] == "evaluate":
            parts = parts[1:]
        if not parts:
            _bad_input(f"--set {item!r}: name a key under {key}")
        node = target
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                _bad_input(f"--set {item!r}: {p} is already set to a value")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            _bad_input(f"--set {item!r}: value is not valid YAML: {exc}")
    return evaluate, report


def _validation_message(section: str, err) -> str:
    lines = [f"invalid {section} settings:"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        lines.append(f"  {section}.{loc}: {msg}" + (f" (got {e['input']!r})" if e["type"] not in
                                                     ("extra_forbidden", "missing", "value_error") else ""))
    return "\n".join(lines)


@click.command("evaluate", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL...]")
@click.option("--tasks", default=None, metavar="LIST",
              help="Comma-separated tasks among upos, xpos, ner, sapn, sar, sts, di and the custom tasks' names. "
                   "Default: every built-in task; with --task-file, only the custom tasks (list built-in tasks "
                   "here to run them too).")
@click.option("--task-file", "custom_task_files", multiple=True, metavar="YAML",
              help="Custom tasks on your own files (CSV, JSON, CoNLL-U or CoNLL), declared in a YAML file as in a "
                   "recipe's evaluate.custom_tasks (docs/evaluation.md); relative paths in it start from its "
                   "folder. Repeatable.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Folder with ro_rrt/, ronec/, laroseda/, ro_sts/, moroco/ (default ../shared/data).")
@click.option("--out", "out_dir", default="runs/evaluation", show_default=True, type=click.Path(file_okay=False),
              help="Where report.md, results.json and the plots go.")
@click.option("--teacher", "teachers", multiple=True, metavar="NAME",
              help="Marks a given model as a teacher (repeatable or comma-separated): students' loyalty is "
                   "measured against teachers, and efficiency ratios against the first teacher.")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Fine-tuning runs per model and task (default 3): mean ± std and paired bootstrap intervals.")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Fine-tuning jobs (model × task × seed) run at once, in worker processes; 1 runs them one by "
                   "one in this process (default: sized from free GPU memory and CPU cores; on CPU one per core "
                   "pair).")
@click.option("--seed", type=int, default=42, show_default=True, help="First seed (runs use seed, seed+1, ...).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Any evaluate setting (YAML value), e.g. --set finetune.epochs=2 --set max_train_examples=500 "
                   "--set per_task.sts.lr=2e-4 --set efficiency=false --set report.title=Mine. Repeatable. "
                   "A custom task's own finetune: wins over finetune.*, and per_task.NAME.* over both.")
def evaluate(models: tuple[str, ...], tasks: str | None, custom_task_files: tuple[str, ...],
             data_dir: str | None, out_dir: str,
             teachers: tuple[str, ...], seeds: int | None, jobs: int | None, seed: int, device: str,
             overrides: tuple[str, ...]) -> None:
    """Fine-tune and score MODELs on the Romanian benchmark; report loyalty and efficiency.

    Each MODEL is a folder (a save_pretrained folder, or a compresso stage folder), a hub id,
    or NAME=PATH to choose its name in the report. A stage folder made by a strategy that must
    follow fine-tuning (INT8 quantization) is scored by fine-tuning its input model, quantizing
    that, and scoring the result.

    \b
    Examples:
      compresso evaluate teacher=../shared/teachers/ro-bert-small-cased runs/x/00-distill \\
          --teacher teacher --tasks upos,sapn --out runs/x/eval
      compresso evaluate ../shared/teachers/ro-bert-small-cased --tasks upos \\
          --set finetune.epochs=1 --set max_train_examples=200 --device cpu
    """
    from pydantic import ValidationError

    from compresso import api
    from compresso.evaluation.runner import EvaluationError

    evaluate_dict, report_dict = _overrides(overrides)
    if custom_task_files:
        from compresso.evaluation.custom_tasks import load_task_files

        try:
            evaluate_dict.setdefault("custom_tasks", []).extend(load_task_files(custom_task_files))
        except ValueError as exc:
            _bad_input(str(exc))
    try:
        results = api.evaluate(list(models), teachers=teachers, tasks=tasks, data_dir=data_dir, out_dir=out_dir,
                               seeds=seeds, jobs=jobs, seed=seed, device=device, settings=evaluate_dict,
                               report=report_dict, console=console)
    except ValidationError as err:
        section = "report" if err.title == "ReportConfig" else "evaluate"
        _bad_input(_validation_message(section, err))
    except EvaluationError as exc:
        _bad_input(str(exc))
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted; nothing was written[/yellow]")
        sys.exit(130)
    click.echo(f"report: {Path(out_dir) / 'report.md'}")
    if results["errors"]:
        err_console.print(f"[red]{len(results['errors'])} run(s) failed; see the report[/red]")
        sys.exit(1)
