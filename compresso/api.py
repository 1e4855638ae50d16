"""compresso from Python: apply a recipe, evaluate models, load what compresso saved, publish it.

The command line (``compresso apply``, ``compresso evaluate``, ``compresso publish``) is a thin
layer over these functions::

    import compresso

    run = compresso.apply("recipes/quickstart.yaml", output_dir="runs/qs",
                          overrides=["stages.0.params.max_steps=10"], evaluate=False)
    print(run.final_stage, [s.status for s in run.stages])
    bundle = compresso.load(run.final_stage)          # .model, .tokenizer, .lineage
    results = compresso.evaluate({"teacher": "../shared/teachers/ro-bert-small-cased",
                                  "student": run.final_stage},
                                 teachers=["teacher"], tasks=["sapn"], out_dir="runs/qs/eval",
                                 settings={"max_train_examples": 200, "finetune": {"epochs": 1}})

Errors are exceptions: ``RecipeError`` (bad recipe, with lines), ``RunError``,
``ModelLoadError``, ``StrategyError``, ``EvaluationError``, ``pydantic.ValidationError`` (bad
evaluation settings).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily below: `import compresso` must not pay for torch
    from rich.console import Console

    from compresso.engine import Runner, RunResult
    from compresso.recipe import LoadedRecipe
    from compresso.strategy import ModelBundle


def load_recipe_any(recipe: str | Path | Mapping | LoadedRecipe, overrides: Iterable[str] = ()) -> LoadedRecipe:
    """A recipe file, a recipe as a dict, or an already loaded recipe; ``overrides`` are
    ``key.path=value`` strings as for ``--set``."""
    from compresso.recipe import LoadedRecipe, load_recipe, recipe_from_dict

    overrides = _string_list(overrides, "overrides", "'key.path=value' strings, as for --set")
    if not isinstance(recipe, (str, Path, Mapping, LoadedRecipe)):
        raise TypeError(f"recipe: expected a YAML file path, a mapping of recipe keys or a LoadedRecipe, "
                        f"not {type(recipe).__name__}")
    if isinstance(recipe, LoadedRecipe):
        if overrides:
            raise TypeError("overrides apply to a recipe file or dict, not to an already loaded recipe")
        return recipe
    if isinstance(recipe, Mapping):
        return recipe_from_dict(dict(recipe), list(overrides))
    return load_recipe(recipe, list(overrides))


def _string_list(value, name: str, what: str) -> list[str]:
    """``value`` as a list of strings, or a TypeError that says what was expected (a lone string
    would otherwise be read character by character)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name}: expected a list of {what}, not {type(value).__name__}"
                        + (f" (write [{value!r}])" if isinstance(value, str) else ""))
    items = list(value)
    bad = [item for item in items if not isinstance(item, str)]
    if bad:
        raise TypeError(f"{name}: expected a list of {what}; {bad[0]!r} is a {type(bad[0]).__name__}")
    return items


def prepare(recipe: str | Path | Mapping | LoadedRecipe, *, output_dir: str | Path | None = None,
            overrides: Iterable[str] = (), device: str | None = None, force: bool = False, resume: bool = False,
            from_stage: str | None = None, evaluate: bool = True, console: Console | None = None) -> Runner:
    """A ``Runner`` for the recipe, built but not checked or started (``apply`` does both)."""
    from compresso.console import quiet_hub_progress, silence_known_import_noise
    from compresso.engine import Runner

    silence_known_import_noise()
    quiet_hub_progress()
    loaded = load_recipe_any(recipe, overrides)
    if not evaluate and loaded.recipe.evaluate is not None:
        # The run skips evaluation; run.json still records the recipe as written.
        from compresso.recipe import LoadedRecipe

        loaded = LoadedRecipe(loaded.recipe.model_copy(update={"evaluate": None}), loaded.path, loaded.raw,
                              loaded.lines)
    if console is None:
        from compresso.console import console
    return Runner(loaded, output_dir=output_dir, device=device, force=force, resume=resume, from_stage=from_stage,
                  console=console)


def finish(runner: Runner, model_cards: bool = True) -> RunResult:
    """Run a prepared, preflighted ``Runner``; then write each stage folder's model card."""
    result = runner.run()
    if model_cards and runner.is_main:
        from compresso.card import write_run_cards

        write_run_cards(runner.loaded, result)
    return result


def apply(recipe: str | Path | Mapping | LoadedRecipe, *, output_dir: str | Path | None = None,
          overrides: Iterable[str] = (), device: str | None = None, force: bool = False, resume: bool = False,
          from_stage: str | None = None, evaluate: bool = True, model_cards: bool = True,
          console: Console | None = None) -> RunResult:
    """Run a recipe (a YAML file, a dict, or a loaded recipe), as ``compresso apply`` does.

    ``evaluate=False`` skips the recipe's ``evaluate:`` section (``--no-eval``). Every check runs
    before any work starts. Returns the ``RunResult``: ``output_dir``, ``stages`` (one
    ``StageOutcome`` each: ``path``, ``status``, ``seconds``, ``metrics``...), ``final_stage``,
    ``evaluation`` (the results dict, or None) and ``seconds``.
    """
    runner = prepare(recipe, output_dir=output_dir, overrides=overrides, device=device, force=force, resume=resume,
                     from_stage=from_stage, evaluate=evaluate, console=console)
    runner.preflight()
    return finish(runner, model_cards)


def load(ref: str | Path, *, model_class: type | None = None, revision: str | None = None,
         trust_remote_code: bool = False, **model_kwargs: Any) -> ModelBundle:
    """Load anything compresso saved (a stage folder of any format), any ``save_pretrained``
    folder or a hub id, as a ``ModelBundle`` (``.model``, ``.tokenizer``, ``.lineage``).

    ``model_class`` (e.g. ``transformers.AutoModelForSequenceClassification``) and
    ``model_kwargs`` (``num_labels=3``) load the backbone under another head."""
    from compresso.console import silence_known_import_noise
    from compresso.models import load_bundle

    silence_known_import_noise()
    return load_bundle(ref, revision=revision, trust_remote_code=trust_remote_code, model_class=model_class,
                       **model_kwargs)


def _string_or_paths(value, name: str) -> list:
    if not isinstance(value, Iterable):
        raise TypeError(f"{name}: expected a list of folders or hub ids, not {type(value).__name__}")
    items = list(value)
    bad = [item for item in items if not isinstance(item, (str, Path))]
    if bad:
        raise TypeError(f"{name}: expected folders or hub ids (str or pathlib.Path); {bad[0]!r} is a "
                        f"{type(bad[0]).__name__}")
    return items


def split_model_spec(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after its folder, or the last part of a hub id)."""
    from compresso.evaluation.runner import EvaluationError

    if "=" in spec:
        name, path = spec.split("=", 1)
        if not name or not path:
            raise EvaluationError(f"model {spec!r}: expected NAME=PATH or PATH")
        return name, path
    return (Path(spec.rstrip("/")).name or spec), spec


def stage_provenance(path: str) -> tuple[str | None, dict | None, str | None]:
    """(strategy, params, input path) of a compresso stage folder, from its compresso.json and stage.json."""
    from compresso.strategy import BUNDLE_META

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


def resolve_device(spec: str):
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a torch device; EvaluationError otherwise."""
    import torch

    from compresso.evaluation.runner import EvaluationError

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec != "cpu" and not (spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit())):
        raise EvaluationError(f"device {spec!r}: expected auto, cpu, cuda or cuda:N")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise EvaluationError(f"device {spec}: torch sees no CUDA device (torch {torch.__version__})")
    return torch.device(spec)


def evaluate(models: Mapping[str, str] | Iterable[str], *, teachers: Iterable[str] = (),
             tasks: str | Iterable[str] | None = None, data_dir: str | None = None,
             out_dir: str | Path = "runs/evaluation", seeds: int | None = None, jobs: int | None = None, seed: int = 42,
             device: str = "auto", settings: Mapping | None = None, report: Mapping | None = None,
             console: Console | None = None) -> dict:
    """Fine-tune and score models on the benchmark tasks (and any custom task in
    ``settings["custom_tasks"]``), with loyalty to the teachers and efficiency, as
    ``compresso evaluate`` does; writes report.md, results.json and plots into ``out_dir`` and
    returns the results.

    ``models``: ``{"name": "path or hub id"}``, or a list of ``PATH`` / ``NAME=PATH``. A compresso
    stage folder is recognised (an INT8 stage is scored by quantizing its fine-tuned input).
    ``teachers``: names of the models that are teachers (loyalty is measured to them, efficiency
    ratios to the first). ``settings``: any ``evaluate:`` key of a recipe; ``report``: any
    ``report:`` key. ``tasks``, ``data_dir``, ``seeds``, ``jobs`` are shortcuts for the same settings.
    """
    from compresso.console import quiet_hub_progress, silence_known_import_noise
    from compresso.evaluation.config import EvaluateConfig, ReportConfig
    from compresso.evaluation.report import check_evaluation_folder
    from compresso.evaluation.runner import (
        EvalModel,
        EvaluationError,
        evaluate_models,
        preflight,
    )
    from compresso.models import ModelLoadError, check_available

    silence_known_import_noise()
    quiet_hub_progress()
    if console is None:
        from compresso.console import console
    if isinstance(models, Mapping):
        named = list(models.items())
        for name, path in named:
            if not isinstance(name, str) or not isinstance(path, (str, Path)):
                raise TypeError(f"models: expected {{name: folder or hub id}} with string names and str or "
                                f"pathlib.Path values, got {name!r}: {type(path).__name__}")
        named = [(name, str(path)) for name, path in named]
    elif isinstance(models, (str, Path)):
        raise TypeError(f"models: expected a mapping {{name: folder or hub id}} or a list of folders, not a single "
                        f"{type(models).__name__} (write [{str(models)!r}])")
    else:
        named = [split_model_spec(str(s)) for s in _string_or_paths(models, "models")]
    teachers = [teachers] if isinstance(teachers, str) else _string_list(teachers, "teachers", "model names")
    for name, value, kinds, what in (("out_dir", out_dir, (str, Path), "a folder path"),
                                     ("data_dir", data_dir, (str, Path, type(None)), "a folder path"),
                                     ("device", device, str, "'auto', 'cpu', 'cuda' or 'cuda:N'"),
                                     ("seed", seed, int, "an integer")):
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise TypeError(f"{name}: expected {what}, not {type(value).__name__}")
    for name, value in (("settings", settings), ("report", report)):
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(f"{name}: expected a mapping of settings, not {type(value).__name__}")
    names = [n for n, _ in named]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EvaluationError(f"two models are named {', '.join(dup)}; name them apart with NAME=PATH")
    teacher_names = [t.strip() for spec in teachers for t in spec.split(",") if t.strip()]
    unknown = [t for t in teacher_names if t not in names]
    if unknown:
        raise EvaluationError(f"teacher {', '.join(unknown)}: no such model (models: {', '.join(names)})")
    evaluate_dict = dict(settings or {})
    if tasks is not None:
        evaluate_dict["tasks"] = tasks if isinstance(tasks, str) else list(tasks)
    if data_dir is not None:
        evaluate_dict["data_dir"] = str(data_dir)
    if seeds is not None:
        evaluate_dict["seeds"] = seeds
    if jobs is not None:
        evaluate_dict["jobs"] = jobs
    evaluate_dict.setdefault("models", names)
    config = EvaluateConfig.model_validate(evaluate_dict)  # pydantic.ValidationError on bad settings
    report_config = ReportConfig.model_validate(dict(report or {}))
    torch_device = resolve_device(device)
    out_dir = Path(out_dir).expanduser()
    check_evaluation_folder(out_dir)  # before anything is loaded: never someone else's folder

    eval_models = []
    for name, path in named:
        try:
            check_available(path)
        except ModelLoadError as exc:
            raise EvaluationError(f"model {name}: {exc}") from None
        strategy, params, input_path = stage_provenance(path)
        eval_models.append(EvalModel(name=name, path=path, role="teacher" if name in teacher_names else "student",
                                     strategy=strategy, input_path=input_path, params=params))
    if not teacher_names and config.loyalty and len(eval_models) > 1:
        console.print("[yellow]no teacher given: loyalty is not measured, and efficiency ratios are to "
                      "the first model[/yellow]")
    preflight(eval_models, config)
    return evaluate_models(eval_models, config, report_config, out_dir, torch_device, seed, console)


def publish(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
            revision: str | None = None, commit_message: str | None = None, create: bool = True,
            api: Any = None) -> str:
    """Upload a stage folder (weights, tokenizer, model card) to the Hugging Face Hub with
    ``huggingface_hub``; returns the URL of the commit. The folder must hold a model card
    (README.md, written by ``apply``) and a config.json; checkpoints and temporary files are
    left out. ``api`` is an ``HfApi`` (default: a new one, which reads the token you are logged
    in with)."""
    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: not a model folder")
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(f"{folder} holds no README.md model card; `compresso apply` writes one in "
                                f"every stage folder")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    if create:
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", revision=revision,
                             commit_message=commit_message or f"Upload {folder.name} (compresso)",
                             ignore_patterns=[".*", "*.tmp", "checkpoint*/**"])
    return str(getattr(info, "commit_url", info))
