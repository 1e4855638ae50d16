"""``evaluate_models``: fine-tune every model on every task, score, compare, report.

Every (model, task, seed) is one job; the jobs run concurrently through ``scheduler.run_jobs``
(worker processes; the longest first) and share one tokenisation cache. For each task and seed, every plain model (teacher or student) is fine-tuned and scored on the
test set; a model whose producing strategy must follow fine-tuning (INT8 quantization) is scored
by fine-tuning its input model, applying the strategy to that fine-tuned model and scoring the
result. Loyalty compares the test-set predictions of each student with each teacher's (and with
its own input model's, when that model is evaluated too) under the same seed.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from compresso import registry
from compresso.evaluation import scoring, statistics
from compresso.evaluation.config import EvaluateConfig, ReportConfig
from compresso.evaluation.data import DataError
from compresso.evaluation.features import Encoded, EncodingCache
from compresso.evaluation.finetune import (
    Predictions,
    SiameseRegressor,
    TrainOutcome,
    make_forward,
    module_device,
    predict,
)
from compresso.evaluation.scheduler import (
    default_workers,
    estimated_cost,
    longest_first,
    run_jobs,
    threads_per_job,
    worker_start_method,
)
from compresso.evaluation.tasks import DatasetCache, FinetuneSettings, TaskData, effective_settings


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


@dataclass
class _Job:
    """One fine-tuning job: a model on a task with a seed (plain data, sent to worker processes)."""

    model: EvalModel
    task: str
    seed: int


def _settings(cfg: EvaluateConfig, data: TaskData) -> FinetuneSettings:
    settings, _ = effective_settings(data.spec, cfg)
    if settings.head == "siamese" and (data.spec.kind != "regression" or data.train[0].text_pair is None):
        raise EvaluationError(f"{data.spec.name}: head: siamese is for sentence-pair regression; this task is "
                              f"{'single-text ' if data.spec.kind == 'regression' else ''}{data.spec.kind} "
                              f"(leave head out, or head: cross)")
    return settings


class _JobRunner:
    """A worker's state (task data, settings, the tokenisation cache) and the body of one job."""

    def __init__(self, cfg: dict, task_data: dict[str, TaskData], device: str, cache_dir: str):
        self.cfg = EvaluateConfig.model_validate(cfg)
        self.task_data = task_data
        self.device = torch.device(device)
        self.cache = EncodingCache(cache_dir)
        self.console = Console(file=io.StringIO())  # strategies' own logs would garble the progress display

    @staticmethod
    def _pad_id(tokenizer) -> int:
        from compresso.evaluation.task_model import pad_id

        return pad_id(tokenizer)

    def _finetune(self, ref: str, data: TaskData, seed: int, report):
        from compresso.evaluation.task_model import train_task_model

        settings = _settings(self.cfg, data)

        def cached(splits, spec, tokenizer, max_length, index, apart):
            return self.cache.get(spec.name, splits, spec, tokenizer, max_length, index, pairs_apart=apart)

        trained = train_task_model(ref, data, settings, self.device, seed, lambda e, n, v: report((e, n, v)), cached)
        max_length = trained.max_length
        record = {"settings": asdict(settings) | {"max_length": max_length}}
        if max_length < settings.max_length:
            record["note"] = f"max_length capped at {max_length} by the model"
        return trained.bundle, trained.encoded, trained.outcome, record, trained.encoding

    def _test(self, model, data: TaskData, enc: dict[str, Encoded], pad_id: int, device: torch.device,
              use_autocast: bool = True) -> Predictions:
        return predict(model, enc["test"], data.spec, device, _settings(self.cfg, data).eval_batch_size, pad_id,
                       data.label_prior, make_forward(model), use_autocast)

    def _record(self, data: TaskData, pred: Predictions, outcome: TrainOutcome, seed: int, test_seconds: float,
                enc: dict[str, Encoded]) -> dict:
        metrics = scoring.score(data.spec, data.test, data.labels, pred)
        rec = {"seed": seed, "metrics": metrics, "best_epoch": outcome.best_epoch,
               "epochs_run": len(outcome.history), "stopped_early": outcome.stopped_early,
               "validation": outcome.best_validation, "history": outcome.history,
               "train_seconds": round(outcome.seconds, 2), "test_seconds": round(test_seconds, 2)}
        if enc["test"].missing_words:
            rec["test_words_without_token"] = enc["test"].missing_words
        return rec

    def _run_plain(self, ref: str, data: TaskData, seed: int, report):
        bundle, enc, outcome, record, how = self._finetune(ref, data, seed, report)
        t0 = time.time()
        pred = self._test(bundle.model, data, enc, self._pad_id(bundle.tokenizer), self.device)
        record.update(self._record(data, pred, outcome, seed, time.time() - t0, enc))
        return pred, record, (bundle, enc, outcome), how

    def _run_reapplied(self, m: EvalModel, cls, data: TaskData, seed: int, report):
        """Fine-tune the input model (the same job as scoring that model, same seed), apply the
        strategy to it, score the result on CPU."""
        _, input_record, (bundle, enc, outcome), how = self._run_plain(m.input_path, data, seed, report)
        strategy = cls(cls.Params.model_validate(m.params or {}))
        cpu = torch.device("cpu")
        task_model = copy.deepcopy(bundle.model).to(cpu).float().eval()
        siamese = isinstance(task_model, SiameseRegressor)
        if siamese:  # the strategy works on the encoder; the cosine head goes back around its result
            task_model = task_model.encoder
        from compresso.strategy import ModelBundle, RunContext

        report("applying " + m.strategy)
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
        model = SiameseRegressor(out.model) if siamese else out.model
        device = module_device(model) if isinstance(model, torch.nn.Module) else cpu
        t0 = time.time()
        pred = self._test(model, data, enc, self._pad_id(bundle.tokenizer), device, use_autocast=False)
        record = {"settings": input_record["settings"],
                  **self._record(data, pred, outcome, seed, time.time() - t0, enc),
                  "reapplied": m.strategy, "apply_seconds": round(apply_seconds, 2),
                  "input_metrics": input_record["metrics"]}
        return pred, record, how

    def _run_as_is(self, m: EvalModel, data: TaskData, seed: int, report):
        """Score a model that already is a task model for this task on the test split, as it is."""
        from compresso.evaluation.task_model import (
            check_head,
            head_order_prior,
            in_task_order,
            load_task_model,
            predict_examples,
            task_head,
        )

        columns = check_head(task_head(m.path), data.spec, data.labels, f"model {m.name!r}")
        report("scoring as it is")
        model, tokenizer, head = load_task_model(m.path, self.device)
        device = module_device(model) if isinstance(model, torch.nn.Module) else torch.device("cpu")
        index = {label: i for i, label in enumerate(data.labels)} if data.labels else None
        enc, how = self.cache.get(data.spec.name, {"train": data.train, "validation": data.validation,
                                                   "test": data.test}, data.spec, tokenizer, head.max_length,
                                  index, pairs_apart=head.head == "siamese")
        t0 = time.time()
        pred = predict_examples(model, tokenizer, head, [], device, _settings(self.cfg, data).eval_batch_size,
                                head_order_prior(data.label_prior, columns, head), encoded=enc["test"])
        pred = in_task_order(pred, columns)
        record = {"settings": {"max_length": head.max_length}, "seed": seed, "as_is": True,
                  "metrics": scoring.score(data.spec, data.test, data.labels, pred), "best_epoch": 0,
                  "epochs_run": 0, "stopped_early": False, "validation": None, "history": [], "train_seconds": 0.0,
                  "test_seconds": round(time.time() - t0, 2)}
        if enc["test"].missing_words:
            record["test_words_without_token"] = enc["test"].missing_words
        return pred, record, how

    def run(self, job: _Job, report) -> dict:
        data = self.task_data[job.task]
        cls = _reapply_class(job.model)
        if is_task_model(job.model, job.task):
            pred, record, how = self._run_as_is(job.model, data, job.seed, report)
        elif cls is None:
            pred, record, _, how = self._run_plain(job.model.path, data, job.seed, report)
        else:
            pred, record, how = self._run_reapplied(job.model, cls, data, job.seed, report)
        counts = statistics.example_counts(data.spec, data.test, data.labels, pred)
        if pred.probs is not None:  # half the bytes on their way back; loyalty does not need float64
            pred = Predictions(pred.kind, pred.probs.astype(np.float32), pred.values, pred.offsets)
        return {"record": record, "predictions": pred, "counts": counts, "encoding": how}


QUANTIZATION_BACKENDS = ("torchao", "neural_compressor")


def _init_worker(cfg: dict, task_data: dict[str, TaskData], device: str, cache_dir: str,
                 hide_quantization_backends: bool = False) -> _JobRunner:
    if hide_quantization_backends:
        # transformers' model loading imports every installed quantization backend it integrates
        # (modeling_utils -> quantizers -> torchao): seconds and a screen of warnings in each
        # worker for nothing when no job re-applies a strategy. A None entry in sys.modules is
        # Python's own mark for "not importable"; find_spec then reports the package absent.
        for name in QUANTIZATION_BACKENDS:
            sys.modules.setdefault(name, None)
    return _JobRunner(cfg, task_data, device, cache_dir)


def _run_job(state: _JobRunner, job: _Job, report) -> dict:
    return state.run(job, report)


def encoder_layers(model: EvalModel) -> int:
    """Encoder layers of a model folder (config.json), 1 when it cannot be read (a hub id, a format of
    its own): the job-cost estimate scales with depth."""
    ref = model.input_path if model.strategy and model.input_path else model.path
    try:
        config = json.loads((Path(ref).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return 1
    layers = config.get("num_hidden_layers", config.get("n_layers", 1))
    return layers if isinstance(layers, int) and layers > 0 else 1


def _tokens_per_sequence(data: TaskData, settings: FinetuneSettings) -> float:
    """Rough sub-tokens per encoded sequence (4 characters each), capped at max_length."""
    sample = data.train[:200]
    chars = [len(" ".join(ex.text) if isinstance(ex.text, list) else ex.text)
             + (0 if settings.head == "siamese" else len(ex.text_pair or "")) for ex in sample]
    return min(settings.max_length, float(np.mean(chars)) / 4 + 2) if chars else settings.max_length


def _job_cost(cfg: EvaluateConfig, job: _Job, task_data: dict[str, TaskData], layers: dict[str, int]) -> float:
    data = task_data[job.task]
    settings = _settings(cfg, data)
    steps = -(-len(data.train) // settings.batch_size) * settings.epochs
    sequences = 2 if settings.head == "siamese" else 1  # a siamese step encodes both sentences (one call)
    return estimated_cost(steps, _tokens_per_sequence(data, settings) * sequences, 1, layers[job.model.name])


def task_model_task(model: EvalModel) -> str | None:
    """The task ``model`` was fine-tuned for, when it is a task model (None otherwise)."""
    from compresso.evaluation.task_model import task_head

    head = task_head(model.path)
    return head.task if head is not None else None


def _own_task_or_none(model: EvalModel) -> str | None:
    """task_model_task, with a malformed task block left to the job to report as its error."""
    from compresso.evaluation.task_model import TaskModelError

    try:
        return task_model_task(model)
    except TaskModelError:
        return None


def is_task_model(model: EvalModel, task: str) -> bool:
    """Whether ``model`` is a task model fine-tuned for ``task``: then it is scored as it is (a
    malformed task block is the job's error, not a reason to fine-tune it again)."""
    return task_model_task(model) == task


def _pairs(models: list[EvalModel]) -> list[tuple[EvalModel, EvalModel, str]]:
    """(student, reference, relation) for loyalty: every teacher, and the student's own input model
    when it is evaluated too."""
    teachers = [m for m in models if m.role == "teacher"]
    out = []
    for s in models:
        if s.role == "teacher":
            continue
        out += [(s, t, "teacher") for t in teachers]
        parent = next((m for m in models if s.input_path and m is not s
                       and _key(m.path) == _key(s.input_path)), None)
        if parent is not None and parent.role != "teacher":
            out.append((s, parent, "input"))
    return out


class _JobStore:
    """Finished jobs of an evaluation on disk (record JSON + arrays in ``np.savez``), so that an
    interrupted evaluation started again into the same folder with the same settings runs only
    the jobs it had not finished. Removed once the outputs are written. A job is keyed by what
    its result depends on: the model's content (never its path: a rerun puts another model
    there), the settings, and the task's data."""

    def __init__(self, folder: Path, cfg: EvaluateConfig, task_data: dict[str, TaskData]):
        from compresso.models import content_identity

        self.folder = folder
        settings = cfg.model_dump(mode="json", exclude={"jobs", "models", "efficiency", "loyalty",
                                                         "bootstrap_resamples"})
        self.settings = json.dumps(settings, sort_keys=True)
        self.data = {task: _data_identity(data, cfg) for task, data in task_data.items()}
        self._identity = content_identity
        self._models: dict[str, dict | None] = {}

    def _model(self, ref: str | None) -> dict | None:
        if ref not in self._models:
            self._models[ref] = self._identity(ref)
        return self._models[ref]

    def _stem(self, job: _Job) -> Path:
        m = job.model
        identity = json.dumps([self.settings, self._model(m.path), m.strategy, m.params, self._model(m.input_path),
                               job.task, self.data[job.task], job.seed], sort_keys=True, default=str)
        return self.folder / f"{job.task}-{job.seed}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"

    def save(self, job: _Job, result: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = self._stem(job)
        pred = result["predictions"]
        arrays = {"counts": result["counts"]}
        for name in ("probs", "values", "offsets"):
            if getattr(pred, name) is not None:
                arrays[name] = getattr(pred, name)
        tmp = stem.with_name(stem.name + ".partial.npz")
        np.savez(tmp, **arrays)
        tmp.replace(stem.with_suffix(".npz"))
        meta = {"record": result["record"], "kind": pred.kind, "encoding": result["encoding"]}
        tmp = stem.with_name(stem.name + ".partial.json")
        tmp.write_text(json.dumps(meta))
        tmp.replace(stem.with_suffix(".json"))  # written last: its presence means the job is complete

    def load(self, job: _Job) -> dict | None:
        stem = self._stem(job)
        if not stem.with_suffix(".json").is_file() or not stem.with_suffix(".npz").is_file():
            return None
        meta = json.loads(stem.with_suffix(".json").read_text())
        with np.load(stem.with_suffix(".npz"), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        pred = Predictions(meta["kind"], arrays.get("probs"), arrays.get("values"), arrays.get("offsets"))
        return {"record": meta["record"], "predictions": pred, "counts": arrays["counts"], "encoding": meta["encoding"]}


def _data_identity(data: TaskData, cfg: EvaluateConfig) -> str:
    """A hash of a task's examples, labels and fine-tuning settings: results computed on other data
    are never resumed."""
    digest = hashlib.sha256(json.dumps([asdict(data.spec), data.labels, asdict(_settings(cfg, data))],
                                       sort_keys=True, default=str).encode())
    for split in (data.train, data.validation, data.test):
        digest.update(json.dumps([asdict(e) for e in split], default=str).encode())
    return digest.hexdigest()[:16]


class _Evaluation:
    """The parent's side: plans the jobs, runs them through the scheduler, collects the results."""

    def __init__(self, models: list[EvalModel], cfg: EvaluateConfig, device: torch.device, seed: int,
                 console: Console):
        self.models, self.cfg, self.device, self.console = models, cfg, device, console
        self.seeds = [seed + i for i in range(cfg.seeds)]
        self.reapply = {m.name: _reapply_class(m) for m in models}
        self.runs: dict[str, dict[str, list[dict]]] = {m.name: {} for m in models}
        self.counts: dict[tuple[str, str], dict[int, np.ndarray]] = {}
        self.loyalty_runs: list[dict] = []
        self.errors: list[dict] = []
        self.not_scored: list[dict] = []
        self.encodings = {"encoded": 0, "loaded": 0, "memory": 0}
        self.scheduler: dict = {}

    def run(self, task_data: dict[str, TaskData], store: _JobStore | None = None) -> None:
        # a task model is scored on its own task only: fine-tuning it on another task would replace the
        # head that makes it what it is, and cost a fine-tuning per seed that nobody asked for
        own_task = {m.name: _own_task_or_none(m) for m in self.models}
        self.not_scored = [{"model": m.name, "task": task, "reason": f"a task model for {own_task[m.name]}"}
                           for task in task_data for m in self.models if own_task[m.name] not in (None, task)]
        jobs = [_Job(m, task, seed) for task in task_data for seed in self.seeds for m in self.models
                if own_task[m.name] in (None, task)]
        # longest expected first (LPT), teachers before students at equal cost: the pool then ends
        # on short jobs instead of waiting for a long one started last
        layers = {m.name: encoder_layers(m) for m in self.models}
        costs = [_job_cost(self.cfg, j, task_data, layers) for j in jobs]
        order = longest_first(costs, [j.model.role != "teacher" for j in jobs])
        jobs = [jobs[i] for i in order]
        self.waiting = {(task, seed): sum(1 for j in jobs if j.task == task and j.seed == seed)
                        for task in task_data for seed in self.seeds}
        self.preds: dict[tuple[str, int], dict[str, Predictions]] = {}
        resumed = []
        if store is not None:
            for job in jobs:
                result = store.load(job)
                if result is not None:
                    resumed.append(job)
                    self._finish(job, task_data, result)
            if resumed:
                self.console.log(f"resuming: {len(resumed)} of {len(jobs)} jobs were finished by an earlier, "
                                 f"interrupted run ({escape(str(store.folder))})")
            jobs = [j for j in jobs if j not in resumed]
        workers = self.cfg.jobs or default_workers(self.device, max(1, len(jobs)))
        workers = max(1, min(workers, max(1, len(jobs))))
        threads = self.cfg.threads_per_job or threads_per_job(self.device, workers)
        self.scheduler = {"jobs": len(jobs) + len(resumed), "resumed": len(resumed), "workers": workers,
                          "threads_per_job": threads, "mode": "in-process" if workers == 1 else "worker processes",
                          "start_method": None if workers == 1 else worker_start_method(self.device)}
        self.console.log(f"{len(jobs)} fine-tuning jobs, {workers} at a time "
                         f"({'in this process' if workers == 1 else 'worker processes'}, {threads} "
                         f"thread{'s' if threads > 1 else ''} each)")
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        started = time.time()
        with tempfile.TemporaryDirectory(prefix="compresso-eval-cache-") as cache_dir, \
                Progress(*columns, console=self.console, transient=False) as progress:
            overall = progress.add_task("evaluation", total=len(jobs))
            rows: dict[int, int] = {}

            def label(job: _Job) -> str:
                return escape(f"{task_data[job.task].spec.title} · {job.model.name} · seed {job.seed}")  # user text

            plain = not self.console.is_terminal  # no live bars in a file: a line per epoch and per job

            def on_progress(index: int, payload) -> None:
                if index not in rows:
                    return
                if isinstance(payload, tuple):
                    epoch, epochs, score = payload
                    progress.update(rows[index], completed=epoch, total=epochs,
                                    description=f"{label(jobs[index])} · validation {score:.2f}")
                    if plain:
                        self.console.log(f"{label(jobs[index])}: epoch {epoch}/{epochs}, validation {score:.2f}",
                                         highlight=False)
                else:
                    progress.update(rows[index], description=f"{label(jobs[index])} · {escape(str(payload))}")

            hide = workers > 1 and all(r is None for r in self.reapply.values())
            self.scheduler["quantization_backends_hidden_in_workers"] = hide
            events = run_jobs(jobs, _init_worker, (self.cfg.model_dump(mode="json"), task_data, str(self.device),
                                                   cache_dir, hide), _run_job, workers, threads, on_progress,
                             worker_start_method(self.device))
            for event in events:
                job = jobs[event.index]
                if event.kind == "start":
                    rows[event.index] = progress.add_task(label(job), total=None)
                    if plain:
                        self.console.log(f"job {event.index + 1}/{len(jobs)} started: {label(job)}", highlight=False)
                    continue
                if event.index in rows:
                    progress.remove_task(rows.pop(event.index))
                progress.advance(overall)
                if event.kind == "done":
                    if store is not None:
                        store.save(job, event.payload)
                    self.encodings[event.payload["encoding"]] += 1
                    self._finish(job, task_data, event.payload)
                else:
                    self._error(job, event.payload)
                    self._finish(job, task_data, None)
        self.scheduler["wall_seconds"] = round(time.time() - started, 1)
        for by_task in self.runs.values():
            for runs in by_task.values():
                runs.sort(key=lambda r: r["seed"])
        self.loyalty_runs.sort(key=lambda r: (r["task"], r["student"], r["reference"], r["seed"]))

    def _finish(self, job: _Job, task_data: dict[str, TaskData], result: dict | None) -> None:
        """Take in one job's result (None: it failed); loyalty once a task and seed is complete."""
        if result is not None:
            record = result["record"]
            self.runs[job.model.name].setdefault(job.task, []).append(record)
            self.counts.setdefault((job.model.name, job.task), {})[job.seed] = result["counts"]
            self.preds.setdefault((job.task, job.seed), {})[job.model.name] = result["predictions"]
            self._log(job.model.name, task_data[job.task], record)
        self.waiting[(job.task, job.seed)] -= 1
        if self.waiting[(job.task, job.seed)] == 0:  # every model of this task and seed is in
            if self.cfg.loyalty:
                self._loyalty(task_data[job.task], job.seed, self.preds.get((job.task, job.seed), {}))
            self.preds.pop((job.task, job.seed), None)

    def _log(self, name: str, data: TaskData, record: dict) -> None:
        head = data.spec.headline
        if record.get("as_is"):
            self.console.log(f"{escape(data.spec.title)} · {escape(name)} · seed {record['seed']}: {head} "
                             f"{record['metrics'][head]:.2f} (a task model, scored as it is)")
            return
        self.console.log(f"{escape(data.spec.title)} · {escape(name)} · seed {record['seed']}: {head} "
                         f"{record['metrics'][head]:.2f} (best epoch {record['best_epoch']} of "
                         f"{record['epochs_run']}, {record['train_seconds']:.0f}s)")

    def _error(self, job: _Job, failure: dict) -> None:
        self.errors.append({"model": job.model.name, "task": job.task, "seed": job.seed, **failure})
        self.console.print(f"[red]{escape(job.model.name)} on {job.task} (seed {job.seed}) failed:[/red] "
                           f"{escape(failure['error'])}", highlight=False)

    def _loyalty(self, data: TaskData, seed: int, preds: dict[str, Predictions]) -> None:
        for student, reference, relation in _pairs(self.models):
            if student.name in preds and reference.name in preds:
                values = scoring.loyalty(data.spec, preds[reference.name], preds[student.name])
                self.loyalty_runs.append({"student": student.name, "reference": reference.name,
                                          "relation": relation, "task": data.spec.name, "seed": seed, **values})

    def comparisons(self, task_data: dict[str, TaskData], seed: int) -> list[dict]:
        """Paired bootstrap of the headline metric for every student–teacher pair and every pair of
        students, per task (test examples resampled, seeds pooled)."""
        students = [m for m in self.models if m.role != "teacher"]
        teachers = [m for m in self.models if m.role == "teacher"]
        pairs = [(s, t, "student-teacher") for s in students for t in teachers]
        pairs += [(a, b, "student-student") for i, a in enumerate(students) for b in students[i + 1:]]
        out = []
        for task, data in task_data.items():
            weights = statistics.bootstrap_weights(len(data.test), self.cfg.bootstrap_resamples, seed)
            scores = {}
            for m in self.models:
                runs = self.counts.get((m.name, task), {})
                if runs:
                    scores[m.name] = statistics.resampled_score(data.spec, [runs[s] for s in sorted(runs)], weights)
            for a, b, relation in pairs:
                if a.name in scores and b.name in scores:
                    out.append({"task": task, "metric": data.spec.headline, "a": a.name, "b": b.name,
                                "relation": relation,
                                "seeds": {a.name: sorted(self.counts[(a.name, task)]),
                                          b.name: sorted(self.counts[(b.name, task)])},
                                **statistics.difference_interval(scores[a.name], scores[b.name])})
        return out


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
        console.log(f"efficiency · {escape(m.name)}")
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
    from compresso.evaluation.report import check_evaluation_folder, write_outputs

    check_evaluation_folder(Path(out_dir))  # before any work: never someone else's folder
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
    ev = _Evaluation(selected, cfg, device, seed, console)
    console.log(f"evaluating {escape(', '.join(m.name for m in selected))} on {escape(', '.join(cfg.tasks))} "
                f"({len(ev.seeds)} seed{'s' if len(ev.seeds) > 1 else ''}, {device})")
    store = _JobStore(Path(out_dir) / ".partial-jobs", cfg, task_data)
    ev.run(task_data, store)
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
                         "sources": d.sources, "columns_read": d.spec.columns_read, "notes": d.notes,
                         "settings": asdict(_settings(cfg, d)), "settings_from": effective_settings(d.spec, cfg)[1]}
                  for task, d in task_data.items()},
        "scheduler": ev.scheduler,
        "tokenisation": {"encoded": ev.encodings["encoded"], "reused": ev.encodings["loaded"] + ev.encodings["memory"],
                         **ev.encodings},
        "scores": _aggregate_scores(ev, task_data),
        "loyalty": _aggregate_loyalty(ev),
        "comparisons": ev.comparisons(task_data, seed),
        "efficiency": efficiency,
        "errors": ev.errors,
        "not_scored": ev.not_scored,
    }
    results["seconds"] = round(time.time() - started, 1)
    write_outputs(results, rcfg, Path(out_dir))
    shutil.rmtree(store.folder, ignore_errors=True)  # the outputs hold everything now
    console.log(f"evaluation written to {escape(str(out_dir))} in {results['seconds']:.0f}s"
                + (f" [red]({len(ev.errors)} failure(s))[/red]" if ev.errors else ""))
    return results
