"""The evaluation suite end to end on small slices of the real data, with tiny models built here
(the cased fixture teacher's tokenizer, random weights), on CPU."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from compresso import registry
from compresso.evaluation import EvalModel, EvaluationError, evaluate_models
from compresso.evaluation.cli import evaluate as evaluate_command
from compresso.evaluation.config import ALL_TASKS, EvaluateConfig
from compresso.evaluation.finetune import Predictions
from compresso.evaluation.scoring import score
from compresso.evaluation.tasks import TASKS, DatasetCache
from compresso.strategy import (
    CompressionStrategy,
    ModelBundle,
    StrategyError,
    StrategyParams,
)
from tests.tiny import quiet, tiny_berts_with_tokenizer

pytestmark = pytest.mark.shared



@pytest.fixture(scope="module")
def tiny(shared_dir, tmp_path_factory):
    """Two tiny BERTs (2 and 1 layers) with the fixture teacher's real tokenizer."""
    return tiny_berts_with_tokenizer(shared_dir / "teachers" / "ro-bert-small-cased",
                                     tmp_path_factory.mktemp("tiny"), {"tinyA": 2, "tinyB": 1})


def quick(shared_dir, **extra) -> dict:
    cfg = {"data_dir": str(shared_dir / "data"), "max_train_examples": 40, "max_eval_examples": 40, "seeds": 1,
           "finetune": {"epochs": 1, "max_length": 48, "batch_size": 8},
           "efficiency": {"min_seconds": 0.01, "repeats": 5, "warmup": 1, "cpu_batch_sizes": [1, 2],
                          "cpu_seq_length": 32, "cpu_threads": 1}}
    cfg.update(extra)
    return cfg


def test_every_task_end_to_end(tiny, shared_dir, tmp_path):
    models = [EvalModel("tinyA", tiny["tinyA"], "teacher"), EvalModel("tinyB", tiny["tinyB"], "student"),
              EvalModel("tinyA-again", tiny["tinyA"], "student")]  # the teacher once more, as a student
    out = tmp_path / "eval"
    results = evaluate_models(models, quick(shared_dir, models=["tinyA", "tinyB", "tinyA-again"]), None, out,
                              torch.device("cpu"), 5, quiet())
    assert results["errors"] == []
    assert sorted(p.name for p in out.iterdir()) == ["efficiency.png", "loyalty.png", "report.md", "results.json",
                                                    "scores.png"]  # and no temporary files left behind
    assert json.loads((out / "results.json").read_text())["scores"] == json.loads(json.dumps(results["scores"]))

    for model in ("tinyA", "tinyB", "tinyA-again"):
        assert set(results["scores"][model]) == set(ALL_TASKS)
        for task, entry in results["scores"][model].items():
            for metric in TASKS[task].metrics:
                value = entry["metrics"][metric]["mean"]
                assert (-100.0 if task == "sts" else 0.0) <= value <= 100.0, (model, task, metric, value)
            assert entry["best_epochs"] == [1] and entry["runs"][0]["seed"] == 5
    # fine-tuning is seeded: the same model fine-tuned twice predicts identically -> loyalty 1
    loyal = {(e["student"], e["task"]): e for e in results["loyalty"]}
    assert {e["reference"] for e in results["loyalty"]} == {"tinyA"}
    for task in ALL_TASKS:
        self_loyalty = loyal[("tinyA-again", task)]
        assert results["scores"]["tinyA-again"][task]["metrics"] == results["scores"]["tinyA"][task]["metrics"]
        if task == "sts":
            assert self_loyalty["regression"]["mean"] == pytest.approx(1.0, abs=1e-9)
        else:
            assert self_loyalty["label"]["mean"] == 1.0
            assert self_loyalty["probability"]["mean"] == pytest.approx(1.0, abs=1e-6)
            other = loyal[("tinyB", task)]
            assert 0.0 <= other["label"]["mean"] <= 1.0 and 0.0 < other["probability"]["mean"] < 1.0
    # the datasets without a validation split say how it was carved
    for task in ("upos", "ner", "sapn"):
        assert any("no validation split" in n for n in results["tasks"][task]["notes"])
    eff = results["efficiency"]["models"]
    assert eff["tinyA"]["parameters"] > eff["tinyB"]["parameters"]
    ratio = eff["tinyB"]["parameters"] / eff["tinyA"]["parameters"]
    assert eff["tinyB"]["ratios"]["parameters"] == pytest.approx(ratio)
    assert set(eff["tinyA"]["cpu_latency_ms"]) == {"1", "2"} and eff["tinyA"]["disk_bytes"] > 0
    timing = eff["tinyA"]["cpu_latency"]["1"]  # a median with its spread, over repeated passes
    assert timing["repeats"] >= 5 and timing["q1"] <= timing["median"] <= timing["q3"]
    assert timing["median"] == eff["tinyA"]["cpu_latency_ms"]["1"]
    # both tiny models are saved in fp32: sizes compare as saved and at equal dtype alike
    assert eff["tinyA"]["weights_dtypes"] == ["fp32"]
    assert eff["tinyB"]["ratios"]["size_fp32"] == pytest.approx(eff["tinyB"]["ratios"]["disk_bytes"], rel=0.01)
    if not torch.cuda.is_available():
        assert eff["tinyA"]["gpu_note"] == "n/a (no GPU)"
    report = (out / "report.md").read_text()
    assert "| model | UPOS (macro-F1) | XPOS (macro-F1) | NER (entity F1 macro) | SAPN (accuracy) | SAR (macro-F1) " \
           "| DI (macro-F1) | STS (Pearson) |" in report
    assert "### Loyalty to tinyA (teacher)" in report and "n/a (no GPU)" in report or torch.cuda.is_available()


def test_finetuning_learns_and_keeps_the_best_epoch(tiny, shared_dir, tmp_path):
    cfg = quick(shared_dir, tasks=["upos"], max_train_examples=160, max_eval_examples=120, efficiency=False,
                finetune={"epochs": 4, "lr": 3e-3, "max_length": 64, "batch_size": 16})
    results = evaluate_models([EvalModel("tinyA", tiny["tinyA"], "teacher")], cfg, {"plots": False}, tmp_path,
                              torch.device("cpu"), 1, quiet())
    entry = results["scores"]["tinyA"]["upos"]
    history = entry["runs"][0]["history"]
    losses = [h["train_loss"] for h in history]
    assert len(history) == 4 and losses == sorted(losses, reverse=True)
    best = max(history, key=lambda h: h["validation"])
    assert entry["best_epochs"] == [best["epoch"]] and entry["runs"][0]["validation"] == best["validation"]
    # far above the majority tag (NOUN, about a quarter of the words) after a few seconds of training
    assert entry["metrics"]["accuracy"]["mean"] > 45.0


def test_perfect_predictor_scores_100_on_every_task(shared_dir):
    cache = DatasetCache(EvaluateConfig(data_dir=str(shared_dir / "data"), max_eval_examples=200))
    for task in ALL_TASKS:
        data = cache.task(task)
        spec = data.spec
        if spec.kind == "regression":
            pred = Predictions("regression", values=np.array([ex.label for ex in data.test]))
        else:
            index = {label: i for i, label in enumerate(data.labels)}
            gold = [index[t] for ex in data.test for t in (ex.label if spec.kind == "tagging" else [ex.label])]
            probs = np.eye(len(data.labels))[gold]
            offsets = np.cumsum([0] + [len(ex.label) for ex in data.test]) if spec.kind == "tagging" else None
            pred = Predictions(spec.kind, probs=probs, offsets=offsets)
        scores = score(spec, data.test, data.labels, pred)
        assert all(v == pytest.approx(100.0) for v in scores.values()), (task, scores)


class _Wrapped(torch.nn.Module):
    """What an exported graph looks like to the suite: positional inputs, a bare tensor out (logits,
    or the hidden states of a bare encoder: STS's siamese head)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.logits if "logits" in out else out.last_hidden_state


class RoundToBf16(CompressionStrategy):
    """A real lossy post-training step: weights rounded to bf16 precision (kept in fp32)."""

    name = "round_bf16"
    reapply_after_finetune = True

    class Params(StrategyParams):
        fail: bool = False

    calls: list = []

    def apply(self, bundle, ctx):
        if self.params.fail:
            raise StrategyError("this backend is not available here")
        assert ctx.device.type == "cpu" and ctx.stage_dir.is_dir()
        assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in bundle.model.parameters())
        type(self).calls.append(type(bundle.model).__name__)
        with torch.no_grad():
            for p in bundle.model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
        return ModelBundle(_Wrapped(bundle.model), bundle.tokenizer, format="round_bf16")


def test_reapplied_strategy_is_scored_after_finetuning(tiny, shared_dir, tmp_path, monkeypatch):
    real_get = registry.get
    monkeypatch.setattr(registry, "get", lambda name: RoundToBf16 if name == "round_bf16" else real_get(name))
    RoundToBf16.calls.clear()
    models = [EvalModel("tinyA", tiny["tinyA"], "teacher"), EvalModel("tinyB", tiny["tinyB"], "student"),
              EvalModel("tinyB-bf16", "unused-path", "student", "round_bf16", tiny["tinyB"], {}),
              EvalModel("tinyB-broken", "unused-path", "student", "round_bf16", tiny["tinyB"], {"fail": True})]
    tasks = ["upos", "sapn", "sts"]
    results = evaluate_models(models, quick(shared_dir, tasks=tasks, efficiency=False,
                                            models=[m.name for m in models]),
                              {"plots": False}, tmp_path, torch.device("cpu"), 1, quiet())
    # STS's siamese head: the strategy gets the bare encoder, the cosine head goes back around it
    assert sorted(RoundToBf16.calls) == ["BertForSequenceClassification", "BertForTokenClassification", "BertModel"]
    scores = results["scores"]
    for task in tasks:
        # the input model is fine-tuned once and reused: its scores are tinyB's
        assert scores["tinyB-bf16"][task]["input_metrics"] == scores["tinyB"][task]["metrics"]
        assert scores["tinyB-bf16"][task]["runs"][0]["reapplied"] == "round_bf16"
    assert sorted((e["model"], e["task"]) for e in results["errors"]) == [("tinyB-broken", t) for t in sorted(tasks)]
    assert all("StrategyError: this backend is not available here" in e["error"] for e in results["errors"])
    to_input = {e["task"]: e for e in results["loyalty"] if e["relation"] == "input"}
    assert set(to_input) == set(tasks) and {e["reference"] for e in to_input.values()} == {"tinyB"}
    assert to_input["upos"]["label"]["mean"] > 0.9 and to_input["sts"]["regression"]["mean"] > 0.9
    report = (tmp_path / "report.md").read_text()
    assert "### Loyalty to tinyB (its input model)" in report and "Before and after" in report
    assert "tinyB-broken · UPOS · seed" in report  # the failure line names the task by its title


def _evaluate_tiny_int8(tiny, shared_dir, tmp_path, params: dict, tasks: list[str], needs: str) -> dict:
    """tinyB and tinyB re-applied through the quantize strategy (``params``) after fine-tuning."""
    try:
        registry.get("quantize")
    except (registry.UnknownStrategy, registry.StrategyImportError) as exc:
        pytest.skip(f"quantize strategy unavailable: {exc}")
    pytest.importorskip(needs)
    models = [EvalModel("tinyB", tiny["tinyB"], "student"),
              EvalModel("tinyB-int8", str(tmp_path / "not-saved"), "student", "quantize", tiny["tinyB"], params)]
    return evaluate_models(models, quick(shared_dir, tasks=tasks, efficiency=False, models=["tinyB", "tinyB-int8"]),
                           {"plots": False}, tmp_path / "out", torch.device("cpu"), 1, quiet())


def test_real_int8_quantization_is_scored_after_finetuning(tiny, shared_dir, tmp_path):
    """The contract with the quantize strategy: fine-tune fp32, quantize the task model, score it."""
    # STS included: the siamese head is put back around the quantized bare encoder.
    results = _evaluate_tiny_int8(tiny, shared_dir, tmp_path, {"method": "dynamic", "compile": False},
                                  ["upos", "sapn", "sts"], needs="torchao")
    assert results["errors"] == []
    for task in ("upos", "sapn", "sts"):
        entry = results["scores"]["tinyB-int8"][task]
        assert entry["runs"][0]["reapplied"] == "quantize"
        assert entry["input_metrics"] == results["scores"]["tinyB"][task]["metrics"]
    to_input = {e["task"]: e for e in results["loyalty"] if e["relation"] == "input"}
    assert to_input["upos"]["label"]["mean"] > 0.9 and to_input["sapn"]["probability"]["mean"] > 0.9
    assert results["scores"]["tinyB-int8"]["sts"]["runs"][0]["settings"]["head"] == "siamese"
    assert to_input["sts"]["regression"]["mean"] > 0.9


def test_unknown_model_names_are_rejected(tiny, shared_dir, tmp_path):
    with pytest.raises(EvaluationError, match="'nope', which is not among the models: tinyA"):
        evaluate_models([EvalModel("tinyA", tiny["tinyA"], "teacher")], quick(shared_dir, models=["nope"]), None,
                        tmp_path, torch.device("cpu"), 1, quiet())


def test_cli(tiny, shared_dir, tmp_path):
    runner = CliRunner()
    base = [f"A={tiny['tinyA']}", f"B={tiny['tinyB']}", "--teacher", "A", "--data-dir", str(shared_dir / "data"),
            "--device", "cpu", "--set", "max_train_examples=24", "--set", "max_eval_examples=24",
            "--set", "finetune={epochs: 1, max_length: 32}", "--set", "efficiency=false"]
    out = tmp_path / "cli"
    ok = runner.invoke(evaluate_command, base + ["--tasks", "sar", "--out", str(out), "--set", "report.title=CLI run"])
    assert ok.exit_code == 0, ok.output
    assert (out / "report.md").read_text().startswith("# CLI run")
    loyalty = json.loads((out / "results.json").read_text())["loyalty"]
    assert [(e["student"], e["reference"], e["task"]) for e in loyalty] == [("B", "A", "sar")]

    def fails(args, message):
        result = runner.invoke(evaluate_command, args)
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()), result.output

    fails(base + ["--tasks", "upos,pos"], "evaluate.tasks: unknown task(s) pos; known: upos, xpos, ner, sapn")
    fails(base + ["--teacher", "C"], "teacher C: no such model (models: A, B)")
    fails(base + ["--set", "finetune.lrr=1"], "evaluate.finetune.lrr: unknown key")
    fails(base + ["--set", "nonsense"], "expected key.path=value")
    fails(base + ["--data-dir", str(tmp_path / "none"), "--tasks", "di"], "does not exist")
    fails([f"X={tmp_path / 'missing'}"], f"model X: model folder {tmp_path / 'missing'} does not exist")
    fails(base + ["--device", "tpu"], "expected auto, cpu, cuda or cuda:N")


def test_recipe_sections_are_validated_with_lines(tmp_path):
    from compresso.recipe import RecipeError, load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\noutput_dir: runs/r\nstudent:\n  model: org/model\nevaluate:\n  tasks: [upos, bogus]\n"
                      "  finetune:\n    lrr: 0.1\nreport:\n  plots: maybe\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe, check_files=False)
    text = str(err.value)
    assert "r.yaml:6: evaluate.tasks: unknown task(s) bogus; known: upos" in text
    assert "r.yaml:8: evaluate.finetune.lrr: unknown key" in text
    assert "r.yaml:10: report.plots" in text


def test_static_int8_reapplied_around_the_siamese_sts_head(tiny, shared_dir, tmp_path):
    """Static INT8 (neural-compressor, calibrated) on the bare encoder under the siamese STS head: BERT's
    unused pooler must not reach the calibration (it once raised IndexError there)."""
    corpus = sorted((shared_dir / "corpus").glob("*.txt*"))[:1]
    params = {"method": "static", "backend": "inc", "compile": False,
              "calibration": {"corpus": [str(c) for c in corpus], "num_samples": 8, "check_samples": 4,
                              "scan_documents": 200}}
    results = _evaluate_tiny_int8(tiny, shared_dir, tmp_path, params, ["sts"], needs="neural_compressor")
    assert results["errors"] == []
    assert results["scores"]["tinyB-int8"]["sts"]["runs"][0]["reapplied"] == "quantize"
    to_input = [e for e in results["loyalty"] if e["relation"] == "input" and e["task"] == "sts"]
    assert to_input and to_input[0]["regression"]["mean"] > 0.9
