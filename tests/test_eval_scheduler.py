"""The evaluation's job scheduler, tokenisation cache and paired bootstrap, on CPU."""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from compresso.evaluation import EvalModel, evaluate_models
from compresso.evaluation.data import Example
from compresso.evaluation.finetune import Predictions
from compresso.evaluation.scheduler import run_jobs
from compresso.evaluation.scoring import score
from compresso.evaluation.statistics import (
    example_counts,
    metric_from_counts,
    paired_bootstrap,
)
from compresso.evaluation.tasks import TASKS
from tests.tiny import quiet, tiny_berts_with_tokenizer

# --- the scheduler on its own -------------------------------------------------------------------

def _init(tag):
    return {"tag": tag, "pid": os.getpid()}


def _job(state, job, report):
    name, seconds = job
    report(f"{name} running")
    if name == "boom":
        raise ValueError("this job fails on purpose")
    if name == "die":
        os._exit(3)
    started = time.time()
    time.sleep(seconds)
    return {"name": name, "tag": state["tag"], "pid": state["pid"], "start": started, "end": time.time()}


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_scheduler_runs_jobs_concurrently_and_survives_failures(start_method):
    jobs = [("a", 1.0), ("boom", 0.0), ("b", 1.0), ("die", 0.0), ("c", 0.2)]
    progress = []
    events = list(run_jobs(jobs, _init, ("x",), _job, workers=2, threads=1,
                           on_progress=lambda i, text: progress.append(text), start_method=start_method))
    ends = {e.index: e for e in events if e.kind in ("done", "failed")}
    assert sorted(ends) == [0, 1, 2, 3, 4]  # exactly one end per job
    assert [e.kind for e in events].count("done") == 3
    assert "ValueError: this job fails on purpose" in ends[1].payload["error"]
    assert "worker process died" in ends[3].payload["error"]
    done = {jobs[i][0]: e.payload for i, e in ends.items() if e.kind == "done"}
    assert all(r["tag"] == "x" and r["pid"] != os.getpid() for r in done.values())
    # a and b, one second each, overlapped in two different processes
    assert done["a"]["pid"] != done["b"]["pid"]
    assert done["a"]["start"] < done["b"]["end"] and done["b"]["start"] < done["a"]["end"]
    assert "a running" in progress


def test_scheduler_in_process_with_one_worker():
    events = list(run_jobs([("a", 0.0), ("boom", 0.0)], _init, ("y",), _job, workers=1, threads=1))
    kinds = [(e.kind, e.index) for e in events]
    assert kinds == [("start", 0), ("done", 0), ("start", 1), ("failed", 1)]
    assert events[1].payload["pid"] == os.getpid()


# --- statistics ---------------------------------------------------------------------------------

def _classification(gold, guess, labels):
    probs = np.eye(len(labels))[[labels.index(g) for g in guess]]
    return [Example("t", g) for g in gold], Predictions("classification", probs=probs)


@pytest.mark.parametrize("task", ["sapn", "sar"])
def test_counts_reproduce_the_metric(task):
    rng = np.random.default_rng(0)
    labels = ["1", "2", "4", "5"] if task == "sar" else ["negative", "positive"]
    gold = list(rng.choice(labels, 60))
    guess = list(rng.choice(labels, 60))
    examples, pred = _classification(gold, guess, labels)
    counts = example_counts(TASKS[task], examples, labels, pred)
    expected = score(TASKS[task], examples, labels, pred)[TASKS[task].headline]
    assert metric_from_counts(TASKS[task], counts.sum(0)) == pytest.approx(expected, abs=1e-9)


def test_counts_reproduce_tagging_ner_and_pearson():
    rng = np.random.default_rng(1)
    # UPOS-like tagging: macro-F1 over words
    tags = ["ADJ", "NOUN", "VERB"]
    examples = [Example(["w"] * n, list(rng.choice(tags, n))) for n in (3, 5, 2, 4)]
    offsets = np.concatenate([[0], np.cumsum([len(e.label) for e in examples])])
    probs = rng.random((offsets[-1], len(tags)))
    pred = Predictions("tagging", probs=probs, offsets=offsets)
    counts = example_counts(TASKS["upos"], examples, tags, pred)
    assert metric_from_counts(TASKS["upos"], counts.sum(0)) == pytest.approx(
        score(TASKS["upos"], examples, tags, pred)["macro_f1"], abs=1e-9)
    # NER: entity spans through seqeval
    ner_labels = ["O", "B-PER", "I-PER", "B-ORG"]
    gold = [["B-PER", "I-PER", "O"], ["B-ORG", "O"], ["O", "B-PER"]]
    guess = [["B-PER", "I-PER", "O"], ["B-PER", "O"], ["O", "B-PER"]]
    examples = [Example(["w"] * len(g), g) for g in gold]
    offsets = np.concatenate([[0], np.cumsum([len(g) for g in gold])])
    pred = Predictions("tagging", probs=np.eye(4)[[ner_labels.index(t) for s in guess for t in s]], offsets=offsets)
    counts = example_counts(TASKS["ner"], examples, ner_labels, pred)
    assert metric_from_counts(TASKS["ner"], counts.sum(0)) == pytest.approx(
        score(TASKS["ner"], examples, ner_labels, pred)["f1_macro"], abs=1e-9)
    # STS: Pearson from moments
    gold_values, guess_values = rng.random(30) * 5, rng.random(30) * 5
    examples = [Example("a", float(g), "b") for g in gold_values]
    pred = Predictions("regression", values=guess_values)
    counts = example_counts(TASKS["sts"], examples, None, pred)
    assert metric_from_counts(TASKS["sts"], counts.sum(0)) == pytest.approx(
        score(TASKS["sts"], examples, None, pred)["pearson"], abs=1e-9)


def test_bootstrap_identical_predictions_give_a_zero_width_interval():
    labels = ["negative", "positive"]
    examples, pred = _classification(["positive", "negative"] * 20, ["positive"] * 25 + ["negative"] * 15, labels)
    counts = example_counts(TASKS["sapn"], examples, labels, pred)
    out = paired_bootstrap(TASKS["sapn"], [counts, counts], [counts, counts], n_resamples=200)
    assert (out["difference"], out["low"], out["high"], out["distinguishable"]) == (0.0, 0.0, 0.0, False)


def test_bootstrap_hand_computed_cases():
    spec, labels = TASKS["sapn"], ["negative", "positive"]
    gold = ["positive"] * 10
    ex, always = _classification(gold, ["positive"] * 10, labels)
    _, never = _classification(gold, ["negative"] * 10, labels)
    a = example_counts(spec, ex, labels, always)
    b = example_counts(spec, ex, labels, never)
    # A is right on every example, B on none: every resample gives 100 - 0
    out = paired_bootstrap(spec, [a], [b], n_resamples=200)
    assert (out["difference"], out["low"], out["high"], out["distinguishable"]) == (100.0, 100.0, 100.0, True)
    # A right on one example more than B out of 10: difference +10 points; a resample holds that
    # example k times (k ~ Binomial(10, 0.1)), so the difference is 10k: the 95% interval is [0, 30]
    _, one_more = _classification(gold, ["positive"] + ["negative"] * 9, labels)
    c = example_counts(spec, ex, labels, one_more)
    out = paired_bootstrap(spec, [c], [b], n_resamples=4000, seed=3)
    assert out["difference"] == pytest.approx(10.0)
    assert (out["low"], out["high"], out["distinguishable"]) == (0.0, 30.0, False)
    # seeds pooled: the seed-mean of two runs, A's second seed identical to B
    out = paired_bootstrap(spec, [a, b], [b, b], n_resamples=200)
    assert (out["difference"], out["low"], out["high"]) == (50.0, 50.0, 50.0)


# --- the whole suite through the scheduler ------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(shared_dir, tmp_path_factory):
    return tiny_berts_with_tokenizer(shared_dir / "teachers" / "ro-bert-small-cased",
                                     tmp_path_factory.mktemp("tiny-sched"), {"tinyA": 1, "tinyB": 1})


def _cfg(shared_dir, **extra):
    cfg = {"data_dir": str(shared_dir / "data"), "max_train_examples": 24, "max_eval_examples": 24, "seeds": 2,
           "finetune": {"epochs": 2, "max_length": 32, "batch_size": 8}, "efficiency": False,
           "bootstrap_resamples": 200}
    cfg.update(extra)
    return cfg


@pytest.mark.shared
def test_concurrent_equals_alone_and_cache_hits(tiny, shared_dir, tmp_path):
    models = [EvalModel("tinyA", tiny["tinyA"], "teacher"), EvalModel("tinyB", tiny["tinyB"], "student")]
    tasks = ["sts", "upos"]
    # the same thread count per job in both runs: it alone can change float summation order
    together = evaluate_models(models, _cfg(shared_dir, tasks=tasks, jobs=2, threads_per_job=1), None,
                               tmp_path / "together",
                               torch.device("cpu"), 7, quiet())
    assert together["errors"] == [] and together["scheduler"]["workers"] == 2
    # two models sharing one tokenizer, two tasks: each task encoded once, then reused by the other
    # three jobs of the task (loaded from the cache folder or kept in a worker's memory)
    assert together["tokenisation"]["encoded"] == 2 and together["tokenisation"]["reused"] == 6
    alone = evaluate_models(models[1:], _cfg(shared_dir, tasks=["sts"], seeds=1, jobs=1, threads_per_job=1), None,
                            tmp_path / "alone",
                            torch.device("cpu"), 8, quiet())
    assert alone["scheduler"]["workers"] == 1
    run_alone = alone["scores"]["tinyB"]["sts"]["runs"][0]
    run_together = next(r for r in together["scores"]["tinyB"]["sts"]["runs"] if r["seed"] == 8)
    assert run_alone["metrics"] == run_together["metrics"]  # exactly, on CPU
    assert run_alone["history"] == run_together["history"]
    # bootstrap comparisons and seed statistics are in the JSON and the report
    comparisons = together["comparisons"]
    assert {(c["task"], c["a"], c["b"]) for c in comparisons} == {("sts", "tinyB", "tinyA"),
                                                                  ("upos", "tinyB", "tinyA")}
    for c in comparisons:
        assert c["low"] <= c["high"] and c["resamples"] == 200
    saved = json.loads((tmp_path / "together" / "results.json").read_text())
    assert saved["comparisons"] == json.loads(json.dumps(comparisons))
    report = (tmp_path / "together" / "report.md").read_text()
    assert "Differences" in report


@pytest.mark.shared
def test_failing_job_is_reported_and_others_scored(tiny, shared_dir, tmp_path):
    from click.testing import CliRunner

    from compresso.evaluation.cli import evaluate as evaluate_command

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in Path(tiny["tinyB"]).iterdir():
        if f.name != "model.safetensors":
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    out = tmp_path / "out"
    result = CliRunner().invoke(evaluate_command, [
        f"tinyA={tiny['tinyA']}", f"broken={broken}", "--teacher", "tinyA", "--tasks", "sapn", "--seeds", "1",
        "--jobs", "2", "--device", "cpu", "--out", str(out), "--data-dir", str(shared_dir / "data"),
        "--set", "max_train_examples=16", "--set", "max_eval_examples=16", "--set", "finetune.epochs=1",
        "--set", "finetune.max_length=32", "--set", "efficiency=false"])
    assert result.exit_code == 1, result.output
    saved = json.loads((out / "results.json").read_text())
    assert [(e["model"], e["task"]) for e in saved["errors"]] == [("broken", "sapn")]
    assert saved["scores"]["tinyA"]["sapn"]["metrics"]["accuracy"]["mean"] >= 0


@pytest.mark.shared
def _evaluation_speed_benchmark():
    """benchmarks/evaluation_speed.py as a module (benchmarks/ is no package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "evaluation_speed.py"
    spec = importlib.util.spec_from_file_location("bench_evaluation_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_evaluation_speed_benchmark_smoke(shared_dir, tmp_path):
    bench = _evaluation_speed_benchmark()
    out = tmp_path / "bench"
    assert bench.main(["--smoke", "--shared", str(shared_dir), "--tasks", "sapn,sts", "--seeds", "1",
                       "--max-train-examples", "24", "--out", str(out)]) == 0
    report = json.loads((out / "speed.json").read_text())
    assert report["runs"]["sequential"]["scheduler"]["workers"] == 1
    assert report["runs"]["concurrent"]["scheduler"]["workers"] == 2
    assert report["runs"]["sequential"]["errors"] == report["runs"]["concurrent"]["errors"] == 0
    assert report["concurrent_over_sequential"] > 0
    assert (out / "concurrent" / "results.json").is_file()


def test_evaluation_speed_benchmark_refuses_a_missing_model_before_any_job(shared_dir, tmp_path, capsys):
    """A student folder that does not exist stops the benchmark at once (exit 2, the folder named,
    nothing written), as `compresso evaluate` does -- not one failed job per task and seed."""
    bench = _evaluation_speed_benchmark()
    out = tmp_path / "bench"
    missing = tmp_path / "students" / "distil-bert-2x"
    assert bench.main(["--shared", str(shared_dir), "--models", f"distil-bert-2x={missing}", "--device", "cpu",
                       "--out", str(out)]) == 2
    printed = capsys.readouterr().out
    assert "distil-bert-2x" in printed and "does not exist" in printed
    assert not out.exists()


@pytest.mark.shared
def test_interrupted_evaluation_resumes_finished_jobs(tiny, shared_dir, tmp_path, monkeypatch):
    import compresso.evaluation.report as report_module

    models = [EvalModel("tinyA", tiny["tinyA"], "teacher")]
    cfg = _cfg(shared_dir, tasks=["sapn"], seeds=2, jobs=1)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "write_outputs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate_models(models, cfg, None, tmp_path / "out", torch.device("cpu"), 3, quiet())
    assert len(list((tmp_path / "out" / ".partial-jobs").glob("*.json"))) == 2
    monkeypatch.undo()
    again = evaluate_models(models, cfg, None, tmp_path / "out", torch.device("cpu"), 3, quiet())
    assert again["scheduler"]["resumed"] == 2 and again["errors"] == []
    assert [r["seed"] for r in again["scores"]["tinyA"]["sapn"]["runs"]] == [3, 4]
    assert not (tmp_path / "out" / ".partial-jobs").exists()


@pytest.mark.shared
def test_evaluation_speed_benchmark_alone_check(tiny, shared_dir, tmp_path):
    """The device run's path on CPU at test size: the main run, then UPOS/SAPN/STS of the smaller
    model again one job at a time, compared with the concurrent scores."""
    bench = _evaluation_speed_benchmark()
    out = tmp_path / "bench"
    assert bench.main(["--teachers", f"tinyA={tiny['tinyA']}", "--models", f"tinyB={tiny['tinyB']}", "--device", "cpu",
                       "--shared", str(shared_dir), "--tasks", "upos,sapn,sts", "--seeds", "2", "--jobs", "2",
                       "--max-train-examples", "16", "--out", str(out)]) == 0
    report = json.loads((out / "speed.json").read_text())
    check = report["alone_check"]
    # both have one layer: the first of the fewest-layer models is re-run
    assert check["model"] == "tinyA" and check["seed"] == 42 and sorted(check["tasks"]) == ["sapn", "sts", "upos"]
    for task, job in check["tasks"].items():
        assert job["concurrent"] in job["seed_values"] and len(job["seed_values"]) == 2
        # on CPU, with the same thread count, a job scores the same alone as beside another
        assert job["difference"] == 0.0 and job["identical"], (task, job)
    assert report["scheduler"]["quantization_backends_hidden_in_workers"] is True
    # the check alone, later, on the run left in the folder (a device with a shorter limit per command)
    assert bench.main(["--alone-only", "--device", "cpu", "--shared", str(shared_dir), "--out", str(out)]) == 0
    again = json.loads((out / "speed.json").read_text())
    scores = {t: (j["concurrent"], j["alone"], j["difference"]) for t, j in check["tasks"].items()}
    assert {t: (j["concurrent"], j["alone"], j["difference"]) for t, j in again["alone_check"]["tasks"].items()} \
        == scores and "--alone-only" in again["alone_check"]["command"]
    assert again["wall_seconds"] == report["wall_seconds"]


def test_workers_fork_on_cpu_only():
    """Forked workers skip re-importing torch (the 2-core CPU target); anything CUDA spawns."""
    from compresso.evaluation.scheduler import worker_start_method

    assert worker_start_method(torch.device("cuda")) == "spawn"
    assert worker_start_method(torch.device("cpu")) == ("fork" if sys.platform == "linux" else "spawn")


def test_evaluation_workers_do_not_import_quantization_backends(tmp_path):
    import importlib.util

    from compresso.evaluation.config import EvaluateConfig
    from compresso.evaluation.runner import _init_worker
    from tests.worker_probe import quantization_backends_loaded

    init_args = (EvaluateConfig().model_dump(mode="json"), {}, "cpu", str(tmp_path))
    hidden = list(run_jobs([0], _init_worker, init_args + (True,), quantization_backends_loaded, workers=2,
                           threads=1))
    assert [e.kind for e in hidden] == ["start", "done"] and hidden[1].payload == []
    if importlib.util.find_spec("torchao") is not None:  # the control: without hiding, transformers imports it
        shown = list(run_jobs([0], _init_worker, init_args + (False,), quantization_backends_loaded, workers=2,
                              threads=1))
        assert "torchao" in shown[1].payload
