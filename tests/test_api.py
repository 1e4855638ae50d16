"""The Python API (compresso.apply / evaluate / load / publish), custom tasks on the user's own
files, model cards, and what the command line prints."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from pydantic import ValidationError

import compresso
from compresso import registry
from compresso.evaluation import EvaluationError
from tests.tiny import STRATEGIES_SOURCE, install_distribution, run_cli, tiny_bert

REPO = Path(__file__).resolve().parents[1]
QUICK = {"max_train_examples": 48, "max_eval_examples": 24,
         "finetune": {"epochs": 1, "max_length": 32, "batch_size": 8},
         "efficiency": {"gpu": False, "cpu_batch_sizes": [1], "cpu_seq_length": 16, "cpu_threads": 1,
                        "min_seconds": 0.01, "repeats": 3, "warmup": 1}}


@pytest.fixture()
def site(tmp_path, monkeypatch):
    root = install_distribution(tmp_path / "site", "compresso-test-strategies",
                                {"engine_test_strategies": STRATEGIES_SOURCE},
                                {"keep_layers": "engine_test_strategies:KeepLayers"})
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("COMPRESSO_TEST_CALLS", str(tmp_path / "calls.txt"))
    registry.discover.cache_clear()
    yield root
    sys.modules.pop("engine_test_strategies", None)
    registry.discover.cache_clear()


def _sentiment_csv(folder: Path) -> dict:
    """A two-class task a tiny model can learn: the class is which of two words a sentence holds."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", 48), ("test", 24)):
        path = folder / f"{split}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "review", "mood"])
            for i in range(n):
                good = i % 2 == 0
                w.writerow([i, f"casa {'mare frumos' if good else 'mic'} este, {'ziua' if i % 3 else 'noaptea'}",
                            "good" if good else "bad"])
        files[split] = str(path)
    return files


def _recipe(tmp_path, model_dir, files, evaluate=True) -> dict:
    recipe = {"name": "api", "seed": 3, "output_dir": str(tmp_path / "run"), "device": "cpu",
              "teachers": [{"name": "t", "model": str(model_dir)}], "student": {"model": "t"},
              "stages": [{"strategy": "keep_layers", "params": {"layers": 2}}]}
    if evaluate:
        recipe["evaluate"] = {**QUICK, "custom_tasks": [
            {"name": "mood", "title": "Mood", "kind": "classification", "files": files, "text": "review",
             "label": "mood"}]}
    return recipe


def test_apply_from_python_with_a_custom_csv_task_and_model_cards(tmp_path, site):
    from huggingface_hub import ModelCard

    model_dir = tiny_bert(tmp_path / "tiny", layers=4)
    files = _sentiment_csv(tmp_path / "mood")
    run = compresso.apply(_recipe(tmp_path, model_dir, files), console=_quiet())

    assert run.final_stage == tmp_path / "run" / "00-keep_layers"
    assert [s.status for s in run.stages] == ["ran"]
    ev = run.evaluation
    assert ev["errors"] == [] and list(ev["tasks"]) == ["mood"]
    assert ev["tasks"]["mood"]["sizes"]["test"] == 24 and ev["tasks"]["mood"]["classes"] == 2
    for model in ("t", "00-keep_layers"):
        metrics = ev["scores"][model]["mood"]["metrics"]
        assert set(metrics) == {"macro_f1", "accuracy"} and 0 <= metrics["accuracy"]["mean"] <= 100
    loyalty = [e for e in ev["loyalty"] if e["task"] == "mood"]
    assert [(e["student"], e["reference"]) for e in loyalty] == [("00-keep_layers", "t")]
    assert 0.0 <= loyalty[0]["label"]["mean"] <= 1.0
    assert "| model | Mood (macro-F1) |" in (tmp_path / "run" / "evaluation" / "report.md").read_text()

    card = ModelCard.load(run.final_stage / "README.md")  # the hub's own parser reads it back
    assert card.data.library_name == "transformers"
    assert card.data.teachers == [{"name": "t", "model": str(model_dir)}]
    assert "keep_layers" in card.data.tags and "compresso" in card.data.tags
    [result] = card.data.eval_results
    assert result.task_name == "Mood" and result.metric_type == "f1"
    assert result.metric_value == round(ev["scores"]["00-keep_layers"]["mood"]["metrics"]["macro_f1"]["mean"], 2)
    assert "AutoModelForMaskedLM.from_pretrained" in card.text and "strategy: keep_layers" in card.text
    assert "Loyalty" in card.text

    bundle = compresso.load(run.final_stage)
    assert bundle.model.config.num_hidden_layers == 2 and bundle.lineage[-1]["strategy"] == "keep_layers"


def test_apply_without_evaluation(tmp_path, site):
    from huggingface_hub import ModelCard

    model_dir = tiny_bert(tmp_path / "tiny", layers=4)
    run = compresso.apply(_recipe(tmp_path, model_dir, _sentiment_csv(tmp_path / "mood")), evaluate=False,
                          console=_quiet())
    assert run.evaluation is None and not (tmp_path / "run" / "evaluation").exists()
    card = ModelCard.load(run.final_stage / "README.md")
    assert "Not evaluated in this run" in card.text and card.data.eval_results is None


def test_recipe_dict_errors_name_the_key(tmp_path):
    from compresso.recipe import RecipeError

    with pytest.raises(RecipeError, match="stages.0.strategy"):
        compresso.apply({"name": "x", "output_dir": str(tmp_path), "student": {"model": "a/b"},
                         "stages": [{"strategy": "no_such_strategy"}]})


def test_evaluate_custom_regression_json_and_conll_tagging(tmp_path):
    a, b = tiny_bert(tmp_path / "a", layers=2), tiny_bert(tmp_path / "b", layers=1, seed=1)
    rows = [{"s1": f"casa {w} este", "s2": f"masa {w} sunt", "score": float(i % 5)}
            for i, w in enumerate(["mare", "mic", "frumos", "om", "carte"] * 8)]
    for split, part in (("train", rows[:30]), ("test", rows[30:])):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    conll = []
    for i in range(30):
        conll += ["-DOCSTART- O", ""] if i == 0 else []
        conll += ["casa\tNN\tB-LOC", "mare\tJJ\tI-LOC", "este\tVB\tO", f"{'om' if i % 2 else 'carte'}\tNN\tB-PER", ""]
    (tmp_path / "ner.txt").write_text("\ufeff" + "\n".join(conll), encoding="utf-8")  # a BOM is read as text start
    tasks = [{"name": "sim", "kind": "regression", "files": {"train": str(tmp_path / "train.jsonl"),
                                                            "test": str(tmp_path / "test.jsonl")},
              "text": "s1", "text_pair": "s2", "label": "score", "value_range": [0, 4]},
             {"name": "ents", "kind": "tagging", "files": {"train": str(tmp_path / "ner.txt"),
                                                          "test": str(tmp_path / "ner.txt")}}]
    results = compresso.evaluate({"a": str(a), "b": str(b)}, teachers=["a"], out_dir=tmp_path / "eval",
                                 device="cpu", settings={**QUICK, "custom_tasks": tasks, "efficiency": False},
                                 console=_quiet())
    assert results["errors"] == [] and list(results["tasks"]) == ["sim", "ents"]
    assert set(results["scores"]["b"]["sim"]["metrics"]) == {"pearson", "spearman"}
    assert {"f1_macro", "f1_micro"} <= set(results["scores"]["b"]["ents"]["metrics"])  # BIO tags: entity F1
    kinds = {e["task"]: e for e in results["loyalty"]}
    assert "regression" in kinds["sim"] and "label" in kinds["ents"]
    assert results["tasks"]["ents"]["classes"] == 4  # O, B-LOC, I-LOC, B-PER


def test_custom_task_errors(tmp_path):
    a = tiny_bert(tmp_path / "a", layers=1)
    files = _sentiment_csv(tmp_path / "mood")
    base = {"name": "mood", "kind": "classification", "files": files, "text": "review"}
    with pytest.raises(EvaluationError, match=r"train.csv has no column 'label' \(columns: id, review, mood\)"):
        compresso.evaluate([str(a)], settings={"custom_tasks": [base]}, out_dir=tmp_path / "e", device="cpu")
    one_class = tmp_path / "one.csv"
    one_class.write_text("review,mood\ncasa mare,good\ncasa mic,good\n")
    with pytest.raises(EvaluationError, match="1 class"):
        compresso.evaluate([str(a)], settings={"custom_tasks": [{**base, "label": "mood", "files": {
            "train": str(one_class), "test": str(one_class)}}]}, out_dir=tmp_path / "e", device="cpu")
    with pytest.raises(ValidationError, match="unknown task"):
        compresso.evaluate([str(a)], tasks=["mood", "nope"], settings={"custom_tasks": [base]}, device="cpu")
    with pytest.raises(ValidationError, match="custom_tasks\n.*upos repeated or taken by a built-in task"):
        compresso.evaluate([str(a)], settings={"custom_tasks": [{**base, "name": "upos"}]}, device="cpu")
    assert not (tmp_path / "e").exists()  # nothing written


def test_publish_uploads_through_huggingface_hub(tmp_path):
    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    api = mock.MagicMock()
    api.upload_folder.return_value = mock.Mock(commit_url="https://huggingface.co/me/m/commit/abc")
    with pytest.raises(FileNotFoundError, match="README.md"):
        compresso.publish(folder, "me/m", api=api)
    (folder / "README.md").write_text("---\nlibrary_name: transformers\n---\n# m\n")
    assert compresso.publish(folder, "me/m", private=True, api=api) == "https://huggingface.co/me/m/commit/abc"
    api.create_repo.assert_called_once_with(repo_id="me/m", repo_type="model", private=True, exist_ok=True)
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["folder_path"] == str(folder) and kwargs["repo_id"] == "me/m"


def test_edited_plugin_source_reruns_its_stage(tmp_path, site):
    model_dir = tiny_bert(tmp_path / "tiny", layers=4)
    recipe = _recipe(tmp_path, model_dir, {}, evaluate=False)
    assert [s.status for s in compresso.apply(recipe, console=_quiet()).stages] == ["ran"]
    assert [s.status for s in compresso.apply(recipe, console=_quiet()).stages] == ["skipped"]
    source = site / "engine_test_strategies.py"
    source.write_text(source.read_text() + "\n# edited, version unchanged\n")
    assert [s.status for s in compresso.apply(recipe, console=_quiet()).stages] == ["ran"]


def test_plugin_log_lines_are_labelled_with_the_plugin(tmp_path):
    import torch
    from rich.console import Console

    from compresso.strategy import RunContext

    console = Console(record=True, width=200, log_path=False)
    ctx = RunContext(stage_dir=tmp_path, work_dir=tmp_path, device=torch.device("cpu"), seed=0, teachers={},
                     base_dir=tmp_path, console=console)
    exec("def step(ctx):\n    ctx.log('trimmed 12 rows')\n", plugin := {"__name__": "my_plugin.strategy"})
    plugin["step"](ctx)
    ctx.log("from compresso itself")
    text = console.export_text()
    assert "[my_plugin.strategy] trimmed 12 rows" in text
    assert "strategy.py:" not in text and "[compresso" not in text


def test_help_does_not_import_torch():
    code = ("import sys; sys.argv = ['compresso', '--help']\nimport compresso.cli\n"
            "try:\n    compresso.cli.main()\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.stdout.strip().endswith("NO-TORCH") and "apply" in out.stdout


def test_cli_quiet_no_eval_and_piped_output(tmp_path, site):
    model_dir = tiny_bert(tmp_path / "a-folder-with-a-rather-long-name-so-lines-exceed-eighty-columns", layers=4)
    recipe = tmp_path / "r.json"  # YAML is a superset of JSON
    recipe.write_text(json.dumps(_recipe(tmp_path, model_dir, _sentiment_csv(tmp_path / "mood"))))
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    validate = subprocess.run([sys.executable, "-m", "compresso.cli", "validate", str(recipe)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120,
                              env=dict(env, PYTHONPATH=os.pathsep.join([str(site), str(REPO)])))
    assert validate.returncode == 0, validate.stderr
    line = next(x for x in validate.stdout.splitlines() if x.startswith("teachers:"))
    assert str(model_dir) in line and len(line) > 80  # one line, not wrapped at 80 columns

    out = run_cli(["-q", "apply", str(recipe), "--no-eval"], cwd=tmp_path, extra_path=[site, REPO])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("done in") and len(out.stdout.strip().splitlines()) == 1
    assert "Failed to load" not in out.stderr and "is an Enum subclass" not in out.stderr
    assert "no triton" not in out.stderr
    assert not (tmp_path / "run" / "evaluation").exists() and (tmp_path / "run" / "00-keep_layers" / "README.md").is_file()

    shown = run_cli(["strategies", "distill"], cwd=tmp_path, extra_path=[REPO])
    assert shown.returncode == 0 and "Teachers to distil from, by recipe name" in shown.stdout
    rows = {line.split("│")[1].strip(): line for line in shown.stdout.splitlines() if line.count("│") >= 4}
    assert "list[Path]" in rows["corpus"] and "Text files, one document per line" in rows["corpus"]
    assert "int (>= 1)" in rows["max_steps"] and "1000" in rows["max_steps"]


def _quiet():
    from rich.console import Console

    return Console(quiet=True)


def test_evaluate_cli_reads_custom_tasks_from_a_task_file(tmp_path):
    from click.testing import CliRunner

    from compresso.cli import main

    a = tiny_bert(tmp_path / "a", layers=1)
    files = _sentiment_csv(tmp_path / "mood")
    task_file = tmp_path / "tasks.yaml"
    task_file.write_text(json.dumps({"custom_tasks": [{"name": "mood", "kind": "classification", "files": files,
                                                       "text": "review", "label": "stars"}]}))
    out = CliRunner().invoke(main, ["evaluate", str(a), "--task-file", str(task_file), "--device", "cpu",
                                    "--out", str(tmp_path / "e")])
    assert out.exit_code == 2 and "has no column 'stars'" in out.output
    assert not (tmp_path / "e").exists()


def test_verbosity_levels_and_known_import_noise(capsys):
    import logging

    from compresso.console import configure

    try:
        configure(1)  # -v: INFO records from any logger, labelled with the logger's name
        logging.getLogger("my_plugin.trim").info("kept 900 rows")
        logging.getLogger("torchao").warning("Failed to load /x/_C_mxfp8.so: no CUDA")  # known, harmless
        logging.getLogger("torchao").warning("something else")  # not known: still shown
        err = capsys.readouterr().err
        assert "my_plugin.trim: kept 900 rows" in err and "something else" in err and "Failed to load" not in err
        configure(0)
        logging.getLogger("my_plugin.trim").info("quiet now")
        logging.getLogger("my_plugin.trim").warning("but warnings show")
        err = capsys.readouterr().err
        assert "quiet now" not in err and "but warnings show" in err
    finally:
        configure(0)
