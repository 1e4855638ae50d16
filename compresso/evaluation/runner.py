"""``evaluate_models``: fine-tune every model on every task, score, compare, report.

For each task and seed, every plain model (teacher or student) is fine-tuned and scored on the
test set; a model whose producing strategy must follow fine-tuning (INT8 quantization) is scored
by fine-tuning its input model, applying the strategy to that fine-tuned model and scoring the
result. Loyalty compares the test-set predictions of each student with each teacher's (and with
its own input model's, when that model is evaluated too) under the same seed.
"""

from __future__ import annotations

import copy
import os
import platform
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from compresso import registry
from compresso.evaluation import scoring
from compresso.evaluation.config import EvaluateConfig, ReportConfig
from compresso.evaluation.data import DataError
from compresso.evaluation.features import Encoded, encode, tokenizer_fingerprint
from compresso.evaluation.finetune import Predictions, TrainOutcome, finetune, make_forward, module_device, predict
from compresso.evaluation.tasks import DatasetCache, FinetuneSettings, TaskData

_ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl")


class EvaluationError(Exception):
    """The evaluation cannot start as asked (unknown model names, missing data, bad settings)."""


@dataclass
class EvalModel:
    """A model to evaluate. ``path`` is a hub id or a folder; for a model that a strategy made,
    ``strategy``/``params`` name that strategy and its parameters and ``input_path`` the model it
    was applied to (needed when the strategy must be re-applied after task fine-tuning)."""

    name: str
    path: str
    role: Literal["teacher", "student"] = "student"
    strategy: str | None = None
    input_path: str | None = None
    params: dict | None = None


@contextmanager
def quiet_transformers():
    """No warnings or progress bars from transformers while loading (ours show the progress)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _key(ref: str | None) -> str | None:
    if ref is None:
        return None
    p = Path(str(ref)).expanduser()
    return str(p.resolve()) if p.exists() else str(ref)


def select_models(models: list[EvalModel], wanted: list[str] | None) -> list[EvalModel]:
    """The models the ``evaluate.models`` setting asks for; by default every teacher and the
    last non-teacher model (a recipe's final stage)."""
    names = [m.name for m in models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EvaluationError(f"model names must be unique; repeated: {', '.join(dup)}")
    if wanted is None:
        teachers = [m for m in models if m.role == "teacher"]
        others = [m for m in models if m.role != "teacher"]
        return teachers + others[-1:]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise EvaluationError(f"evaluate.models names {', '.join(map(repr, unknown))}, which "
                              f"{'is' if len(unknown) == 1 else 'are'} not among the models: "
                              f"{', '.join(names) or 'none'}")
    return [m for m in models if m.name in wanted]


def _as_config(schema, value):
    if value is None:
        return schema()
    return value if isinstance(value, schema) else schema.model_validate(value)


def _reapply_class(model: EvalModel):
    if not model.strategy:
        return None
    try:
        cls = registry.get(model.strategy)
    except (registry.UnknownStrategy, registry.StrategyImportError) as exc:
        raise EvaluationError(f"model {model.name!r} was made by strategy {model.strategy!r}: {exc}") from None
    if not cls.reapply_after_finetune:
        return None
    if not model.input_path:
        raise EvaluationError(f"model {model.name!r} was made by {model.strategy!r}, which must be re-applied after "
                              f"task fine-tuning, but its input model is unknown (EvalModel.input_path)")
    return cls


def preflight(models: list[EvalModel], evaluate: EvaluateConfig | dict | None) -> list[EvalModel]:
    """Cheap checks before any work: settings, model names, strategies and every task's data.
    Returns the models that will be evaluated."""
    cfg = _as_config(EvaluateConfig, evaluate)
    selected = select_models(models, cfg.models)
    if not selected:
        raise EvaluationError("no model to evaluate")
    from compresso.models import ModelLoadError, check_available

    for m in selected:
        refs = [m.path] + ([m.input_path] if _reapply_class(m) is not None else [])
        for ref in refs:
            try:
                check_available(ref)
            except ModelLoadError as exc:
                raise EvaluationError(f"model {m.name!r}: {exc}") from None
    check_data(cfg)
    return selected


def check_data(evaluate: EvaluateConfig | dict | None) -> None:
    """Read every task's data once (a few seconds), so that a missing or malformed file stops a
    run before any model is trained. Raises EvaluationError naming the file (and line)."""
    cfg = _as_config(EvaluateConfig, evaluate)
    cache = DatasetCache(cfg)
    try:
        for task in cfg.tasks:
            cache.task(task)
    except DataError as exc:
        raise EvaluationError(str(exc)) from None


class _Evaluation:
    def __init__(self, models, cfg: EvaluateConfig, out_dir: Path, device: torch.device, seed: int,
                 console: Console):
        self.models, self.cfg, self.out_dir = models, cfg, out_dir
        self.device, self.seed, self.console = device, seed, console
        self.seeds = [seed + i for i in range(cfg.seeds)]
        self.reapply = {m.name: _reapply_class(m) for m in models}
        self.encodings: dict[tuple, dict[str, Encoded]] = {}
        self.runs: dict[str, dict[str, list[dict]]] = {m.name: {} for m in models}
        self.loyalty_runs: list[dict] = []
        self.errors: list[dict] = []
        self.task_settings: dict[str, dict] = {}
        self.progress: Progress | None = None

    # --- one model on one task --------------------------------------------------------------

    def _settings(self, data: TaskData) -> FinetuneSettings:
        return data.spec.defaults.with_overrides(self.cfg.finetune, self.cfg.per_task.get(data.spec.name))

    def _load(self, ref: str, data: TaskData):
        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

        from compresso.models import load_bundle

        spec = data.spec
        if spec.kind == "tagging":
            cls, kwargs = AutoModelForTokenClassification, self._label_kwargs(data)
        elif spec.kind == "classification":
            cls, kwargs = AutoModelForSequenceClassification, self._label_kwargs(data)
        else:
            cls, kwargs = AutoModelForSequenceClassification, {"num_labels": 1, "problem_type": "regression"}
        with quiet_transformers():  # "some weights are newly initialized": expected for a task head
            return load_bundle(ref, model_class=cls, **kwargs)

    @staticmethod
    def _label_kwargs(data: TaskData) -> dict:
        return {"num_labels": len(data.labels), "id2label": dict(enumerate(data.labels)),
                "label2id": {label: i for i, label in enumerate(data.labels)}}

    def _max_length(self, model, tokenizer, wanted: int) -> int:
        limits = []
        tok_limit = getattr(tokenizer, "model_max_length", None)
        if isinstance(tok_limit, int) and tok_limit < 100_000:
            limits.append(tok_limit)
        config = getattr(model, "config", None)
        positions = getattr(config, "max_position_embeddings", None)
        if positions:
            limits.append(positions - (2 if getattr(config, "model_type", "") in _ROBERTA_LIKE else 0))
        return min([wanted] + limits)

    def _encoded(self, data: TaskData, tokenizer, max_length: int) -> dict[str, Encoded]:
        key = (data.spec.name, tokenizer_fingerprint(tokenizer), max_length)
        if key not in self.encodings:
            index = {label: i for i, label in enumerate(data.labels)} if data.labels else None
            self.encodings[key] = {name: encode(data.spec, getattr(data, name), tokenizer, max_length, index)
                                   for name in ("train", "validation", "test")}
        return self.encodings[key]

    @staticmethod
    def _pad_id(tokenizer) -> int:
        pad = getattr(tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else 0

    def _finetune(self, ref: str, data: TaskData, seed: int, label: str):
        """Fine-tune ``ref`` on the task; returns (model, tokenizer, encodings, outcome, settings)."""
        settings = self._settings(data)
        torch.manual_seed(seed)  # the task head's initialisation
        bundle = self._load(ref, data)
        if bundle.tokenizer is None:
            raise EvaluationError(f"{ref} holds no tokenizer; save one beside the model (tokenizer.save_pretrained)")
        max_length = self._max_length(bundle.model, bundle.tokenizer, settings.max_length)
        enc = self._encoded(data, bundle.tokenizer, max_length)
        pad_id = self._pad_id(bundle.tokenizer)
        outcome = finetune(
            bundle.model, data.spec, settings, enc["train"], enc["validation"],
            lambda pred: scoring.score(data.spec, data.validation, data.labels, pred)[data.spec.headline],
            self.device, seed, pad_id, data.label_prior, self.progress,
            f"{data.spec.title} · {label} · seed {seed}")
        record = {"settings": asdict(settings) | {"max_length": max_length}}
        if max_length < settings.max_length:
            record["note"] = f"max_length capped at {max_length} by the model"
        return bundle, enc, outcome, record

    def _test(self, model, data: TaskData, enc: dict[str, Encoded], pad_id: int, settings: FinetuneSettings,
              device: torch.device | None = None, use_autocast: bool = True) -> Predictions:
        return predict(model, enc["test"], data.spec, device or self.device, settings.eval_batch_size, pad_id,
                       data.label_prior, make_forward(model), use_autocast)

    def _run_plain(self, m: EvalModel, data: TaskData, seed: int) -> tuple[Predictions, dict, tuple]:
        bundle, enc, outcome, record = self._finetune(m.path, data, seed, m.name)
        settings = self._settings(data)
        t0 = time.time()
        pred = self._test(bundle.model, data, enc, self._pad_id(bundle.tokenizer), settings)
        record.update(self._record(data, pred, outcome, seed, time.time() - t0, enc))
        return pred, record, (bundle, enc, outcome)

    def _record(self, data: TaskData, pred: Predictions, outcome: TrainOutcome, seed: int, test_seconds: float,
                enc: dict[str, Encoded]) -> dict:
        metrics = scoring.score(data.spec, data.test, data.labels, pred)
        rec = {"seed": seed, "metrics": metrics, "best_epoch": outcome.best_epoch,
               "validation": outcome.best_validation, "history": outcome.history,
               "train_seconds": round(outcome.seconds, 2), "test_seconds": round(test_seconds, 2)}
        if enc["test"].missing_words:
            rec["test_words_without_token"] = enc["test"].missing_words
        return rec

    def _run_reapplied(self, m: EvalModel, data: TaskData, seed: int, finetuned: dict) -> tuple[Predictions, dict]:
        """Fine-tune the input model (or reuse it), apply the strategy to it, score the result on CPU."""
        key = _key(m.input_path)
        if key not in finetuned:
            _, record, state = self._run_plain(EvalModel(f"{m.name}:input", m.input_path), data, seed)
            finetuned[key] = (state, record)
        (bundle, enc, outcome), input_record = finetuned[key]
        cls = self.reapply[m.name]
        strategy = cls(cls.Params.model_validate(m.params or {}))
        cpu = torch.device("cpu")
        task_model = copy.deepcopy(bundle.model).to(cpu).float().eval()
        from compresso.strategy import ModelBundle, RunContext

        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix="compresso-eval-") as tmp:
            ctx = RunContext(stage_dir=Path(tmp) / "stage", work_dir=Path(tmp) / "work", device=cpu, seed=seed,
                             teachers={}, base_dir=Path.cwd(), console=self.console)
            ctx.stage_dir.mkdir()
            ctx.work_dir.mkdir()
            strategy.preflight(ctx)
            # the input's lineage goes along: a strategy may take defaults from it (quantize
            # calibrates on the corpus of the distillation that made the model)
            out = strategy.apply(ModelBundle(task_model, bundle.tokenizer, list(bundle.lineage)), ctx)
        apply_seconds = time.time() - t0
        model = out.model
        device = module_device(model) if isinstance(model, torch.nn.Module) else cpu
        settings = self._settings(data)
        t0 = time.time()
        pred = self._test(model, data, enc, self._pad_id(bundle.tokenizer), settings, device, use_autocast=False)
        record = {"settings": input_record["settings"],
                  **self._record(data, pred, outcome, seed, time.time() - t0, enc),
                  "reapplied": m.strategy, "apply_seconds": round(apply_seconds, 2),
                  "input_metrics": input_record["metrics"]}
        return pred, record

    # --- the whole evaluation ---------------------------------------------------------------

    def run(self, task_data: dict[str, TaskData]) -> None:
        plain = [m for m in self.models if self.reapply[m.name] is None]
        reapplied = [m for m in self.models if self.reapply[m.name] is not None]
        inputs_needed = {_key(m.input_path) for m in reapplied}
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=self.console, transient=False) as progress:
            self.progress = progress
            overall = progress.add_task("evaluation", total=len(task_data) * len(self.seeds) * len(self.models))
            for task, data in task_data.items():
                self.task_settings[task] = asdict(self._settings(data))
                for seed in self.seeds:
                    preds: dict[str, Predictions] = {}
                    finetuned: dict = {}
                    for m in plain:
                        progress.update(overall, description=f"evaluation · {data.spec.title} · {m.name}")
                        try:
                            pred, record, state = self._run_plain(m, data, seed)
                        except Exception as exc:
                            self._error(m, task, seed, exc)
                        else:
                            preds[m.name] = pred
                            self.runs[m.name].setdefault(task, []).append(record)
                            if _key(m.path) in inputs_needed:
                                finetuned[_key(m.path)] = (state, record)
                            self._log(m.name, data, record)
                        progress.advance(overall)
                    for m in reapplied:
                        progress.update(overall, description=f"evaluation · {data.spec.title} · {m.name}")
                        try:
                            pred, record = self._run_reapplied(m, data, seed, finetuned)
                        except Exception as exc:
                            self._error(m, task, seed, exc)
                        else:
                            preds[m.name] = pred
                            self.runs[m.name].setdefault(task, []).append(record)
                            self._log(m.name, data, record)
                        progress.advance(overall)
                    if self.cfg.loyalty:
                        self._loyalty(data, seed, preds)
                    del finetuned, preds
            progress.update(overall, description="evaluation")
        self.progress = None

    def _log(self, name: str, data: TaskData, record: dict) -> None:
        head = data.spec.headline
        self.console.log(f"{data.spec.title} · {name} · seed {record['seed']}: {head} "
                         f"{record['metrics'][head]:.2f} (best epoch {record['best_epoch']}, "
                         f"{record['train_seconds']:.0f}s)")

    def _error(self, m: EvalModel, task: str, seed: int, exc: Exception) -> None:
        if isinstance(exc, (KeyboardInterrupt, torch.cuda.OutOfMemoryError)):
            raise exc
        message = f"{type(exc).__name__}: {exc}"
        self.errors.append({"model": m.name, "task": task, "seed": seed, "error": message,
                            "traceback": traceback.format_exc(limit=8)})
        self.console.print(f"[red]{m.name} on {task} (seed {seed}) failed:[/red] {message}", highlight=False,
                           markup=True)

    def pairs(self) -> list[tuple[EvalModel, EvalModel, str]]:
        teachers = [m for m in self.models if m.role == "teacher"]
        out = []
        for s in self.models:
            if s.role == "teacher":
                continue
            out += [(s, t, "teacher") for t in teachers]
            parent = next((m for m in self.models if s.input_path and m is not s
                           and _key(m.path) == _key(s.input_path)), None)
            if parent is not None and parent.role != "teacher":
                out.append((s, parent, "input"))
        return out

    def _loyalty(self, data: TaskData, seed: int, preds: dict[str, Predictions]) -> None:
        for student, reference, relation in self.pairs():
            if student.name in preds and reference.name in preds:
                values = scoring.loyalty(data.spec, preds[reference.name], preds[student.name])
                self.loyalty_runs.append({"student": student.name, "reference": reference.name,
                                          "relation": relation, "task": data.spec.name, "seed": seed, **values})


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else None,
            "values": [float(v) for v in arr]}


def _aggregate_scores(ev: _Evaluation, task_data: dict[str, TaskData]) -> dict:
    out = {}
    for m in ev.models:
        out[m.name] = {}
        for task in task_data:
            runs = ev.runs[m.name].get(task, [])
            if not runs:
                continue
            names = runs[0]["metrics"].keys()
            entry = {"metrics": {k: _stats([r["metrics"][k] for r in runs]) for k in names},
                     "best_epochs": [r["best_epoch"] for r in runs],
                     "train_seconds": [r["train_seconds"] for r in runs], "runs": runs}
            if "input_metrics" in runs[0]:
                entry["input_metrics"] = {k: _stats([r["input_metrics"][k] for r in runs]) for k in names}
            if len(runs) < len(ev.seeds):
                entry["incomplete"] = f"{len(runs)} of {len(ev.seeds)} seeds succeeded"
            out[m.name][task] = entry
    return out


def _aggregate_loyalty(ev: _Evaluation) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in ev.loyalty_runs:
        groups.setdefault((r["student"], r["reference"], r["relation"], r["task"]), []).append(r)
    out = []
    for (student, reference, relation, task), runs in groups.items():
        entry = {"student": student, "reference": reference, "relation": relation, "task": task,
                 "seeds": [r["seed"] for r in runs]}
        for kind in ("label", "probability", "regression"):
            if kind in runs[0]:
                entry[kind] = _stats([r[kind] for r in runs])
        out.append(entry)
    return out


def _efficiency(ev: _Evaluation, console: Console) -> dict:
    cfg = ev.cfg.efficiency
    measured = {}
    for m in ev.models:
        console.log(f"efficiency · {m.name}")
        fallback = None
        if ev.reapply[m.name] is not None and m.input_path:
            from compresso.models import load_bundle

            try:
                from compresso.evaluation.efficiency import encoder_of, parameter_count

                fallback = parameter_count(encoder_of(load_bundle(m.input_path).model))
            except Exception:
                fallback = None
        from compresso.evaluation.efficiency import measure

        measured[m.name] = measure(m.path, cfg, console, fallback)
    teachers = [m.name for m in ev.models if m.role == "teacher"]
    reference = teachers[0] if teachers else ev.models[0].name
    from compresso.evaluation.efficiency import compare

    compare(measured, reference, cfg.cpu_seq_length)  # ratios at equal dtype, suspect ratios flagged
    return {"reference": reference, "reference_is_teacher": bool(teachers), "config": cfg.model_dump(mode="json"),
            "models": measured}


def _environment(device: torch.device) -> dict:
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "device": str(device), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def evaluate_models(models: list[EvalModel], evaluate: EvaluateConfig | dict | None,
                    report: ReportConfig | dict | None, out_dir: Path, device: torch.device, seed: int,
                    console: Console | None = None) -> dict:
    """Evaluate ``models`` as ``evaluate`` says; write report.md, results.json and plots into
    ``out_dir`` (each file written under a temporary name and renamed into place) and return the
    results (the content of results.json)."""
    from compresso.evaluation.report import write_outputs

    console = console or Console()
    started = time.time()
    cfg = _as_config(EvaluateConfig, evaluate)
    rcfg = _as_config(ReportConfig, report)
    device = torch.device(device)
    selected = select_models(models, cfg.models)
    if not selected:
        raise EvaluationError("no model to evaluate")
    cache = DatasetCache(cfg)
    try:
        task_data = {task: cache.task(task) for task in cfg.tasks}
    except DataError as exc:
        raise EvaluationError(str(exc)) from None
    ev = _Evaluation(selected, cfg, Path(out_dir), device, seed, console)
    console.log(f"evaluating {', '.join(m.name for m in selected)} on {', '.join(cfg.tasks)} "
                f"({len(ev.seeds)} seed{'s' if len(ev.seeds) > 1 else ''}, {device})")
    ev.run(task_data)
    efficiency = _efficiency(ev, console) if cfg.efficiency.enabled else None
    results = {
        "title": rcfg.title or "compresso evaluation",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": None,
        "seed": seed, "seeds": ev.seeds,
        "environment": _environment(device),
        "config": cfg.model_dump(mode="json"),
        "models": [asdict(m) | {"reapplied": ev.reapply[m.name] is not None} for m in selected],
        "tasks": {task: {"title": d.spec.title, "kind": d.spec.kind, "dataset": d.spec.dataset,
                         "headline": d.spec.headline, "metrics": list(d.spec.metrics),
                         "classes": len(d.labels) if d.labels else None, "sizes": d.sizes(),
                         "value_range": d.spec.value_range,
                         "sources": d.sources, "notes": d.notes, "settings": ev.task_settings.get(task)}
                  for task, d in task_data.items()},
        "scores": _aggregate_scores(ev, task_data),
        "loyalty": _aggregate_loyalty(ev),
        "efficiency": efficiency,
        "errors": ev.errors,
    }
    results["seconds"] = round(time.time() - started, 1)
    write_outputs(results, rcfg, Path(out_dir))
    console.log(f"evaluation written to {out_dir} in {results['seconds']:.0f}s"
                + (f" [red]({len(ev.errors)} failure(s))[/red]" if ev.errors else ""))
    return results
