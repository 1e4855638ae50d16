"""Engine: stage chaining, atomic outputs, skip/resume by content hash, registry discovery, CLI."""

import json
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForMaskedLM

from compresso import registry
from compresso.engine import Runner
from compresso.recipe import load_recipe
from tests.tiny import STRATEGIES_SOURCE, install_distribution, run_cli, tiny_bert

BROKEN_SOURCE = "import a_module_that_does_not_exist\n"


@pytest.fixture()
def site(tmp_path, monkeypatch):
    root = install_distribution(tmp_path / "site", "compresso-test-strategies",
                                {"engine_test_strategies": STRATEGIES_SOURCE, "broken_strategy": BROKEN_SOURCE},
                                {"keep_layers": "engine_test_strategies:KeepLayers",
                                 "broken": "broken_strategy:Broken"})
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("COMPRESSO_TEST_CALLS", str(tmp_path / "calls.txt"))
    registry.discover.cache_clear()
    yield root
    for name in ("engine_test_strategies", "broken_strategy"):
        sys.modules.pop(name, None)
    registry.discover.cache_clear()


def recipe_file(tmp_path, model_dir, stages=((3, False), (2, False)), name="recipe.yaml"):
    lines = [f"name: chain\nseed: 1\noutput_dir: {tmp_path / 'run'}\ndevice: cpu",
             f"teachers:\n  - name: t\n    model: {model_dir}", "student:\n  model: t", "stages:"]
    for layers, fail in stages:
        lines.append(f"  - strategy: keep_layers\n    name: keep{layers}\n    params: {{layers: {layers}, fail: {str(fail).lower()}}}")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def calls(tmp_path):
    f = tmp_path / "calls.txt"
    return f.read_text().split() if f.exists() else []


def run(path, **kw):
    runner = Runner(load_recipe(path), **kw)
    runner.preflight()
    return runner.run()


def test_registry_reports_broken_plugin_and_keeps_others(site):
    found = registry.discover()
    assert found["keep_layers"].cls is not None
    assert found["keep_layers"].distribution == "compresso-test-strategies"
    assert found["broken"].cls is None
    assert "ModuleNotFoundError" in found["broken"].error and "a_module_that_does_not_exist" in found["broken"].error
    assert "keep_layers" in registry.available() and "broken" not in registry.available()
    with pytest.raises(registry.StrategyImportError, match="failed to load"):
        registry.get("broken")
    with pytest.raises(registry.UnknownStrategy, match="available: .*keep_layers"):
        registry.get("nope")


def test_stages_chain_and_outputs_load_with_plain_transformers(tmp_path, site):
    model_dir = tiny_bert(tmp_path / "tiny", layers=4)
    result = run(recipe_file(tmp_path, model_dir))
    out = tmp_path / "run"
    assert [o.status for o in result.stages] == ["ran", "ran"]
    # No scratch left behind: no empty .work/, no .tmp-*; .lock is the run folder's lock file.
    assert sorted(p.name for p in out.iterdir()) == [".lock", "00-keep3", "01-keep2", "run.json"]
    first = AutoModelForMaskedLM.from_pretrained(out / "00-keep3")
    second = AutoModelForMaskedLM.from_pretrained(out / "01-keep2")
    assert first.config.num_hidden_layers == 3 and second.config.num_hidden_layers == 2  # chained
    stage = json.loads((out / "01-keep2" / "stage.json").read_text())
    assert stage["params"] == {"layers": 2, "fail": False} and stage["metrics"] == {"layers": 2}
    assert stage["model"]["parameters"] == sum(p.numel() for p in second.parameters())
    assert (out / "01-keep2" / "extra.txt").is_file()
    meta = json.loads((out / "01-keep2" / "compresso.json").read_text())
    assert [step.get("stage") for step in meta["lineage"]][-2:] == ["00-keep3", "01-keep2"]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "finished" and manifest["seed"] == 1
    assert manifest["resolved_recipe"]["stages"][1]["params"]["layers"] == 2
    assert "torch" in manifest["versions"] and manifest["device"] == "cpu"
    # Outputs equal a direct application of the same steps.
    ids = torch.tensor([[2, 20, 21, 3]])
    orig = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
    orig.bert.encoder.layer = orig.bert.encoder.layer[:2]
    with torch.no_grad():
        torch.testing.assert_close(second.eval()(ids).logits, orig(ids).logits)


def test_rerun_skips_unchanged_and_reruns_changed(tmp_path, site):
    model_dir = tiny_bert(tmp_path / "tiny", layers=4)
    run(recipe_file(tmp_path, model_dir))
    assert calls(tmp_path) == [".tmp-00-keep3", ".tmp-01-keep2"]
    result = run(recipe_file(tmp_path, model_dir))
    assert [o.status for o in result.stages] == ["skipped", "skipped"]
    assert len(calls(tmp_path)) == 2
    # Changing the second stage's params reruns only the second stage.
    result = run(recipe_file(tmp_path, model_dir, stages=((3, False), (1, False))))
    assert [o.status for o in result.stages] == ["skipped", "ran"]
    # Changing the first stage reruns both (the second's input changed).
    result = run(recipe_file(tmp_path, model_dir, stages=((2, False), (1, False))))
    assert [o.status for o in result.stages] == ["ran", "ran"]
    # --force reruns everything; --from-stage reruns from there.
    assert [o.status for o in run(recipe_file(tmp_path, model_dir, stages=((2, False), (1, False))), force=True).stages] == ["ran", "ran"]
    assert [o.status for o in run(recipe_file(tmp_path, model_dir, stages=((2, False), (1, False))), from_stage="keep1").stages] == ["skipped", "ran"]


def test_failed_stage_leaves_no_half_output_and_resumes(tmp_path, site):
    model_dir = tiny_bert(tmp_path / "tiny", layers=4)
    with pytest.raises(RuntimeError, match="failing on purpose"):
        run(recipe_file(tmp_path, model_dir, stages=((3, False), (2, True))))
    out = tmp_path / "run"
    assert (out / "00-keep3" / "stage.json").is_file()
    assert not (out / "01-keep2").exists()  # nothing half-written under the final name
    assert (out / ".work" / "01-keep2" / "progress.txt").is_file()  # checkpoints kept for resuming
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    result = run(recipe_file(tmp_path, model_dir), resume=True)
    assert [o.status for o in result.stages] == ["skipped", "ran"]
    assert not (out / ".work" / "01-keep2").exists()
    assert not (out / ".tmp-01-keep2").exists()


def test_resume_without_a_run_is_an_error(tmp_path, site):
    from compresso.engine import RunError

    model_dir = tiny_bert(tmp_path / "tiny", layers=2)
    runner = Runner(load_recipe(recipe_file(tmp_path, model_dir, stages=((1, False),))), resume=True)
    with pytest.raises(RunError, match="holds no run"):
        runner.preflight()
    assert not (tmp_path / "run").exists()


def test_student_from_config_is_randomly_initialised(tmp_path, site):
    model_dir = tiny_bert(tmp_path / "tiny", layers=4)
    path = recipe_file(tmp_path, model_dir, stages=((2, False),))
    path.write_text(path.read_text().replace("student:\n  model: t", "student:\n  model: t\n  config: {hidden_dropout_prob: 0.0}"))
    run(path)
    out = AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "00-keep2")
    orig = AutoModelForMaskedLM.from_pretrained(model_dir)
    assert out.config.hidden_dropout_prob == 0.0
    assert not torch.equal(out.bert.embeddings.word_embeddings.weight, orig.bert.embeddings.word_embeddings.weight)


# --- the command line, as a user runs it -------------------------------------------------------

def test_cli_strategies_validate_apply(tmp_path, site):
    model_dir = tiny_bert(tmp_path / "tiny", layers=4)
    path = recipe_file(tmp_path, model_dir)
    env = {"COMPRESSO_TEST_CALLS": str(tmp_path / "calls.txt")}
    listed = run_cli(["strategies"], tmp_path, [site], env)
    assert listed.returncode == 0, listed.stderr
    assert "keep_layers" in listed.stdout and "compresso-test-strategies" in listed.stdout
    assert "broken" in listed.stdout and "failed to load" in listed.stdout
    valid = run_cli(["validate", str(path)], tmp_path, [site], env)
    assert valid.returncode == 0 and "valid" in valid.stdout
    applied = run_cli(["apply", str(path), "--set", "stages.1.params.layers=1"], tmp_path, [site], env)
    assert applied.returncode == 0, applied.stderr + applied.stdout
    assert "01-keep2" in applied.stdout and "done in" in applied.stdout
    assert AutoModelForMaskedLM.from_pretrained(tmp_path / "run" / "01-keep2").config.num_hidden_layers == 1


def test_cli_bad_recipe_exits_2_and_writes_nothing(tmp_path, site):
    model_dir = tiny_bert(tmp_path / "tiny", layers=4)
    path = recipe_file(tmp_path, model_dir)
    path.write_text(path.read_text().replace("layers: 2", "layers: -1"))
    result = run_cli(["apply", str(path)], tmp_path, [site])
    assert result.returncode == 2
    assert f"{path}:" in result.stderr and "stages.1.params.layers" in result.stderr
    assert not (tmp_path / "run").exists()
    unknown = run_cli(["apply", str(path), "--from-stage", "zzz"], tmp_path, [site])
    assert unknown.returncode == 2


def test_cli_unreachable_hub_model_fails_at_once_with_advice(tmp_path, site):
    path = tmp_path / "hub.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: hub
        output_dir: {tmp_path / 'run'}
        teachers:
          - name: bert-ro
            model: dumitrescustefan/bert-base-romanian-cased-v1
        student: {{model: bert-ro}}
        stages:
          - strategy: keep_layers
            params: {{layers: 6}}
        """))
    assert run_cli(["validate", str(path)], tmp_path, [site]).returncode == 0  # offline validation works
    result = run_cli(["apply", str(path)], tmp_path, [site])
    assert result.returncode == 2
    assert "dumitrescustefan/bert-base-romanian-cased-v1" in result.stderr
    assert "local" in result.stderr and "path" in result.stderr
    assert not (tmp_path / "run").exists()


def test_stage_inputs_branch_from_teachers_and_earlier_stages(tmp_path, site):
    model_dir = tiny_bert(tmp_path / "tiny", layers=4)
    path = recipe_file(tmp_path, model_dir, stages=((3, False), (2, False)))
    text = path.read_text() + ("  - strategy: keep_layers\n    name: from-teacher\n    input: t\n    params: {layers: 1}\n"
                               "  - strategy: keep_layers\n    name: from-first\n    input: keep3\n    params: {layers: 3}\n")
    path.write_text(text)
    result = run(path)
    out = tmp_path / "run"
    layers = {o.dirname: AutoModelForMaskedLM.from_pretrained(out / o.dirname).config.num_hidden_layers
              for o in result.stages}
    assert layers == {"00-keep3": 3, "01-keep2": 2, "02-from-teacher": 1, "03-from-first": 3}
    inputs = {s["stage"]: s["input"] for s in json.loads((out / "run.json").read_text())["stages"]}
    assert inputs["02-from-teacher"] == str(model_dir) and inputs["03-from-first"] == str(out / "00-keep3")
    # The teacher was not modified by the stages that started from it.
    assert AutoModelForMaskedLM.from_pretrained(model_dir).config.num_hidden_layers == 4
    # A second run skips everything, whatever the inputs.
    assert {o.status for o in run(path).stages} == {"skipped"}


def test_stage_input_must_exist_before_use(tmp_path, site):
    from compresso.recipe import RecipeError

    model_dir = tiny_bert(tmp_path / "tiny", layers=2)
    path = recipe_file(tmp_path, model_dir, stages=((1, False),))
    path.write_text(path.read_text().replace("    name: keep1\n", "    name: keep1\n    input: later\n"))
    with pytest.raises(RecipeError, match="'later' is not an earlier stage"):
        load_recipe(path)


def test_file_parameters_are_fingerprinted(tmp_path):
    import os

    from compresso.engine import file_fingerprints

    corpus = tmp_path / "c.txt"
    corpus.write_text("una\n")
    first = file_fingerprints({"corpus": [str(corpus)], "steps": 3, "name": "not a file"})
    assert list(first) == [str(corpus.resolve())]
    corpus.write_text("una doua\n")
    os.utime(corpus, ns=(1, 2))
    assert file_fingerprints({"corpus": [str(corpus)]}) != first
