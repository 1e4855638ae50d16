"""``compresso evaluate``: the evaluation suite on models given on the command line.

Exit codes: 0 success, 1 some model/task runs failed (the report lists them), 2 bad input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import yaml
from rich.console import Console
from rich.markup import escape

from compresso.strategy import BUNDLE_META

console = Console()
err_console = Console(stderr=True)


def _bad_input(message: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)
    sys.exit(2)


def _split_spec(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after its folder, or the last part of a hub id)."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        if not name or not path:
            _bad_input(f"model {spec!r}: expected NAME=PATH or PATH")
        return name, path
    return (Path(spec.rstrip("/")).name or spec), spec


def _provenance(path: str) -> tuple[str | None, dict | None, str | None]:
    """(strategy, params, input path) of a compresso stage folder, from its compresso.json and stage.json."""
    folder = Path(path).expanduser()
    meta_file = folder / BUNDLE_META
    if not meta_file.is_file():
        return None, None, None
    lineage = json.loads(meta_file.read_text()).get("lineage") or []
    last = lineage[-1] if lineage else {}
    strategy, params = last.get("strategy"), last.get("params")
    input_path = None
    stage_file = folder / "stage.json"
    if stage_file.is_file():
        source = json.loads(stage_file.read_text()).get("input") or {}
        if source.get("stage"):
            input_path = str(folder.parent / source["stage"])  # a sibling stage of the same run
        elif source.get("source"):
            input_path = str(source["source"])
    return strategy, params, input_path


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
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {section}.{loc}: {msg}" + (f" (got {e['input']!r})" if e["type"] not in
                                                     ("extra_forbidden", "missing", "value_error") else ""))
    return "\n".join(lines)


@click.command("evaluate", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL...]")
@click.option("--tasks", default=None, metavar="LIST",
              help="Comma-separated tasks among upos, xpos, ner, sapn, sar, sts, di (default: all).")
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
                   "--set per_task.sts.lr=2e-4 --set efficiency=false --set report.title=Mine. Repeatable.")
def evaluate(models: tuple[str, ...], tasks: str | None, data_dir: str | None, out_dir: str,
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
    import torch
    from pydantic import ValidationError

    from compresso.evaluation.config import EvaluateConfig, ReportConfig
    from compresso.evaluation.runner import EvalModel, EvaluationError, evaluate_models, preflight
    from compresso.models import ModelLoadError, check_available

    evaluate_dict, report_dict = _overrides(overrides)
    if tasks is not None:
        evaluate_dict["tasks"] = tasks
    if data_dir is not None:
        evaluate_dict["data_dir"] = data_dir
    if seeds is not None:
        evaluate_dict["seeds"] = seeds
    if jobs is not None:
        evaluate_dict["jobs"] = jobs

    named = [_split_spec(spec) for spec in models]
    names = [n for n, _ in named]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        _bad_input(f"two models are named {', '.join(dup)}; name them apart with NAME=PATH")
    teacher_names = [t.strip() for spec in teachers for t in spec.split(",") if t.strip()]
    unknown = [t for t in teacher_names if t not in names]
    if unknown:
        _bad_input(f"--teacher {', '.join(unknown)}: no such model (models: {', '.join(names)})")
    evaluate_dict.setdefault("models", names)

    try:
        config = EvaluateConfig.model_validate(evaluate_dict)
    except ValidationError as err:
        _bad_input(_validation_message("evaluate", err))
    try:
        report = ReportConfig.model_validate(report_dict)
    except ValidationError as err:
        _bad_input(_validation_message("report", err))

    if device == "auto":
        torch_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
            _bad_input(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
        if device.startswith("cuda") and not torch.cuda.is_available():
            _bad_input(f"--device {device}: torch sees no CUDA device (torch {torch.__version__})")
        torch_device = torch.device(device)

    eval_models = []
    for name, path in named:
        try:
            check_available(path)
        except ModelLoadError as exc:
            _bad_input(f"model {name}: {exc}")
        strategy, params, input_path = _provenance(path)
        eval_models.append(EvalModel(name=name, path=path, role="teacher" if name in teacher_names else "student",
                                     strategy=strategy, input_path=input_path, params=params))
    if not teacher_names and config.loyalty and len(eval_models) > 1:
        err_console.print("[yellow]no --teacher given: loyalty is not measured, and efficiency ratios are to "
                          "the first model[/yellow]")
    try:
        preflight(eval_models, config)
    except EvaluationError as exc:
        _bad_input(str(exc))
    try:
        results = evaluate_models(eval_models, config, report, Path(out_dir), torch_device, seed, console)
    except EvaluationError as exc:
        _bad_input(str(exc))
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted; nothing was written[/yellow]")
        sys.exit(130)
    console.print(f"report: {Path(out_dir) / 'report.md'}")
    if results["errors"]:
        err_console.print(f"[red]{len(results['errors'])} run(s) failed; see the report[/red]")
        sys.exit(1)
