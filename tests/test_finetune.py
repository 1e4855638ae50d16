"""The ``finetune`` strategy through the engine: the folder it writes (served by transformers'
pipeline, loaded by compresso.load, described by its card), resume after a kill, bad input, and a
stage's output named as a later stage's teacher."""

from __future__ import annotations

import json

import pytest
import torch

import compresso
from compresso.evaluation.task_model import load_task_model, predict_labels, task_head
from compresso.recipe import RecipeError, recipe_from_dict
from tests.task_data import classification_files, custom_task, tagging_files
from tests.tiny import quiet, tiny_bert

FAST = {"lr": 5e-3, "epochs": 3, "batch_size": 8, "max_length": 32, "seed": 1}


def _recipe(tmp_path, task, stages_extra=(), teachers_extra=(), **params) -> dict:
    base = tiny_bert(tmp_path / "base", layers=2)
    return {"name": "ft", "output_dir": str(tmp_path / "run"), "device": "cpu",
            "teachers": [{"name": "base", "model": str(base)}, *teachers_extra], "student": {"model": "base"},
            "stages": [{"name": "ft", "strategy": "finetune", "input": "base",
                        "params": {"task": task, **FAST, **params}}, *stages_extra]}


def test_finetune_stage_is_a_folder_the_pipeline_serves(tmp_path):
    from transformers import pipeline

    task = custom_task("big", "tagging", tagging_files(tmp_path / "data"))
    result = compresso.apply(_recipe(tmp_path, task, epochs=8), console=quiet())
    folder = result.final_stage
    stage = json.loads((folder / "stage.json").read_text())
    metrics = stage["metrics"]
    assert metrics["task"] == "big" and metrics["kind"] == "tagging" and metrics["labels"] == ["O", "B-BIG"]
    assert {"f1_macro", "f1_micro"} <= set(metrics["test"]) and set(metrics["validation"]) == set(metrics["test"])
    assert metrics["sizes"] == {"train": 40, "validation": 12, "test": 12} and metrics["epochs_run"] == len(metrics["history"]) <= 8
    head = task_head(folder)
    assert head.task == "big" and head.source["custom_task"]["files"]["train"].endswith("train.conll")
    meta = json.loads((folder / "compresso.json").read_text())
    assert meta["task"] == head.to_dict() and meta["lineage"][-1]["strategy"] == "finetune"

    bundle = compresso.load(folder)
    assert type(bundle.model).__name__ == "BertForTokenClassification"
    sentences = [["casa", "mare", "om"], ["un", "drum", "frumos", "la", "bucurești"], ["apa"]]
    ours = predict_labels(bundle.model, bundle.tokenizer, head, sentences)
    tagger = pipeline("token-classification", model=str(folder), device="cpu")
    for words, labels in zip(sentences, ours):
        tokens = tagger(" ".join(words), ignore_labels=[])
        assert [t["entity"] for t in tokens if not t["word"].startswith("##")] == labels
    assert any("B-BIG" in labels for labels in ours) and any("O" in labels for labels in ours)

    card = (folder / "README.md").read_text()
    assert "## Task" in card and "`B-BIG`" in card and 'pipeline("token-classification"' in card
    assert "first sub-token" in card and f"{metrics['test']['f1_macro']:.2f}" in card
    assert "pipeline_tag: token-classification" in card


def test_killed_finetune_stage_resumes_to_the_same_model(tmp_path, monkeypatch):
    from compresso.evaluation import finetune as finetune_module

    task = custom_task("big", "classification", classification_files(tmp_path / "data"))
    whole = compresso.apply(_recipe(tmp_path / "a", task), console=quiet())

    recipe = _recipe(tmp_path / "b", task)
    save = finetune_module._save_checkpoint
    saved = []

    def save_then_die(path, *args):
        save(path, *args)
        saved.append(path)
        if len(saved) == 2:
            raise KeyboardInterrupt("killed after epoch 2")

    monkeypatch.setattr(finetune_module, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        compresso.apply(recipe, console=quiet())
    run = tmp_path / "b" / "run"
    checkpoint = run / ".work" / "00-ft" / "finetune.pt"
    assert checkpoint.is_file() and not (run / "00-ft").exists()
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()
    resumed = compresso.apply(recipe, console=quiet())
    a, b = (json.loads((r.final_stage / "stage.json").read_text())["metrics"] for r in (whole, resumed))
    assert a["history"] == b["history"] and a["test"] == b["test"]
    from safetensors.torch import load_file

    wa, wb = (load_file(str(r.final_stage / "model.safetensors")) for r in (whole, resumed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not checkpoint.exists()  # the finished stage's scratch is gone


def test_finetune_bad_input_is_named(tmp_path):
    with pytest.raises(RecipeError, match=r"stages\.0\.params\.task.*unknown task 'pos'"):
        recipe_from_dict(_recipe(tmp_path, "pos"))
    task = custom_task("big", "classification", {"train": str(tmp_path / "none.csv"), "test": str(tmp_path / "t.csv")})
    from compresso.strategy import StrategyError

    from compresso.api import prepare

    runner = prepare(_recipe(tmp_path / "x", task), console=quiet())
    with pytest.raises(StrategyError, match=r"finetune on big: .*none\.csv"):
        runner.preflight()
    task = custom_task("big", "classification", classification_files(tmp_path / "data"))
    with pytest.raises(RecipeError, match=r"stages\.0\.params\.lr"):
        recipe_from_dict(_recipe(tmp_path / "y", task, lr=-1))
    runner = prepare(_recipe(tmp_path / "z", task, head="siamese"), console=quiet())
    with pytest.raises(StrategyError, match="finetune on big: big: head: siamese is for sentence-pair regression"):
        runner.preflight()


def _teacher_recipe(tmp_path, teachers_extra, stages_extra):
    task = custom_task("big", "classification", classification_files(tmp_path / "data"))
    return _recipe(tmp_path, task, stages_extra=stages_extra, teachers_extra=teachers_extra)


def test_stage_teachers_are_checked_in_the_recipe(tmp_path):
    cases = [
        ([{"name": "t", "stage": "nope"}], [], r"teachers\.1\.stage: 'nope' is not a stage of this recipe"),
        ([{"name": "t", "stage": "ft", "model": "x/y"}], [], "either `model`.*not both"),
        ([{"name": "t"}], [], "either `model`.*not neither"),
        ([{"name": "t", "stage": "ft"}], [{"strategy": "finetune", "input": "t", "params": {"task": "sapn"}}],
         r"teacher 't' is the output of stage 'ft'; name that stage as the input"),
    ]
    for teachers, stages, message in cases:
        with pytest.raises(RecipeError, match=message):
            recipe_from_dict(_teacher_recipe(tmp_path, teachers, stages), check_files=False)
    recipe = _teacher_recipe(tmp_path, [{"name": "t", "stage": "ft"}], [])
    recipe["student"]["model"] = "t"
    with pytest.raises(RecipeError, match="student.model: teacher 't' is the output of stage 'ft'"):
        recipe_from_dict(recipe, check_files=False)


def test_a_finetuned_stage_is_a_teacher_of_later_stages_only(tmp_path, monkeypatch):
    from compresso.engine import Runner

    later = [{"name": "ft2", "strategy": "finetune", "input": "base",
              "params": {"task": custom_task("big", "classification", classification_files(tmp_path / "data")),
                         **FAST, "epochs": 1}}]
    loaded = recipe_from_dict(_teacher_recipe(tmp_path, [{"name": "ft-teacher", "stage": "ft"}], later))
    runner = Runner(loaded, console=quiet())
    assert list(runner._context(0).teachers) == ["base"]
    ctx = runner._context(1)
    assert list(ctx.teachers) == ["base", "ft-teacher"]
    ref = ctx.teachers["ft-teacher"]
    assert ref.stage == "00-ft" and ref.model == str(tmp_path / "run" / "00-ft")
    seen = {}
    from compresso.strategies.finetune import FinetuneStrategy

    apply = FinetuneStrategy.apply

    def spy(self, bundle, ctx):
        if "ft-teacher" in ctx.teachers:
            model, _, head = load_task_model(ctx.teachers["ft-teacher"].model)
            seen["teacher"] = (type(model).__name__, head.task, head.labels)
        return apply(self, bundle, ctx)

    monkeypatch.setattr(FinetuneStrategy, "apply", spy)
    runner.preflight()
    result = runner.run()
    assert seen["teacher"] == ("BertForSequenceClassification", "big", ["big", "small"])
    # the teacher's stage key is part of the later stage's key: rerunning the teacher reruns it
    keys = [o.key for o in result.stages]
    input_key = runner._stage_input(1, keys, None)[2]
    assert runner._stage_key(1, input_key, keys) == keys[1]
    assert runner._stage_key(1, input_key, ["another key", keys[1]]) != keys[1]
    models = runner._eval_models([(o.index, o.dirname, o.path, o.input_path) for o in result.stages])
    teacher = next(m for m in models if m.name == "ft-teacher")
    assert teacher.role == "teacher" and teacher.path == str(tmp_path / "run" / "00-ft")


def test_task_stages_are_scored_as_they_are_with_loyalty_to_finetuned_teachers(tmp_path):
    task = custom_task("big", "classification", classification_files(tmp_path / "data"))
    student = [{"name": "ft-student", "strategy": "finetune", "input": "base",
                "params": {"task": task, **FAST, "epochs": 1, "seed": 5}}]
    recipe = _recipe(tmp_path, task, stages_extra=student, teachers_extra=[{"name": "big-teacher", "stage": "ft"}])
    recipe["evaluate"] = {"custom_tasks": [task], "tasks": ["big"], "models": ["big-teacher", "01-ft-student"],
                          "seeds": 2, "efficiency": False, "jobs": 1}
    recipe["report"] = {"plots": False}
    result = compresso.apply(recipe, console=quiet())
    scores = result.evaluation["scores"]
    teacher_runs = scores["big-teacher"]["big"]["runs"]
    student_runs = scores["01-ft-student"]["big"]["runs"]
    assert all(r["as_is"] and r["epochs_run"] == 0 for r in teacher_runs + student_runs)
    # scored as it is: the stage's own test score, the same for every seed
    own = json.loads((result.stages[1].path / "stage.json").read_text())["metrics"]["test"]
    assert [r["metrics"] for r in student_runs] == [own, own]
    loyalty = [e for e in result.evaluation["loyalty"] if e["student"] == "01-ft-student"]
    assert [(e["reference"], e["relation"]) for e in loyalty] == [("big-teacher", "teacher")]
    assert 0.0 <= loyalty[0]["label"]["mean"] <= 1.0 and loyalty[0]["seeds"] == [42, 43]
    report = (tmp_path / "run" / "evaluation" / "report.md").read_text()
    assert "as is" in report
    card = (result.stages[1].path / "README.md").read_text()
    assert "Test-set scores (0–100), this task model scored as it is on big; 2 seed(s)." in card


def test_a_task_model_lacking_a_label_of_the_task_is_an_error_naming_both(tmp_path):
    import csv

    task = custom_task("big", "classification", classification_files(tmp_path / "data"))
    result = compresso.apply(_recipe(tmp_path, task, epochs=1), console=quiet())
    wider = {}
    for split, path in task["files"].items():
        rows = list(csv.reader(open(path, encoding="utf-8")))
        rows[1][1] = "medium"  # a label the fine-tuned head never had
        wider[split] = str(tmp_path / f"wider-{split}.csv")
        with open(wider[split], "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
    results = compresso.evaluate({"ft": str(result.final_stage)}, tasks=["big"], seeds=1, jobs=1,
                                 out_dir=tmp_path / "eval", device="cpu", console=quiet(),
                                 settings={"custom_tasks": [custom_task("big", "classification", wider)],
                                           "efficiency": False}, report={"plots": False})
    [error] = results["errors"]
    assert "model 'ft' lacks label(s) 'medium' of big; its head has 'big', 'small'" in error["error"]


def _ort_labels(folder, head, sentences) -> list:
    """What plain onnxruntime answers: the .onnx file and the tokenizer beside it, argmax, id2label."""
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoConfig, AutoTokenizer

    meta = json.loads((folder / "quantize.json").read_text())
    session = ort.InferenceSession(str(folder / meta["weights_file"]), providers=["CPUExecutionProvider"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    id2label = AutoConfig.from_pretrained(folder).id2label
    names = [i.name for i in session.get_inputs()]
    out = []
    for words in sentences:
        tagging = head.kind == "tagging"
        enc = tokenizer(words, is_split_into_words=tagging, return_tensors="np")
        logits = session.run(None, {n: enc[n].astype(np.int64) for n in names})[0][0]
        ids = logits.argmax(-1)
        if tagging:
            firsts, previous = [], None
            for j, w in enumerate(enc.word_ids(0)):
                if w is not None and w != previous:
                    firsts.append(id2label[int(ids[j])])
                previous = w
            out.append(firsts)
        else:
            out.append(id2label[int(ids)])
    return out


@pytest.mark.parametrize("kind,method", [("tagging", "static"), ("classification", "dynamic")])
def test_int8_task_model_runs_in_plain_onnxruntime_and_agrees(tmp_path, kind, method):
    from compresso.strategies.quantize.backends import BACKENDS

    if BACKENDS["ort"].missing():
        pytest.skip(f"onnxruntime backend not installed: {BACKENDS['ort'].missing()}")
    files = (tagging_files if kind == "tagging" else classification_files)(tmp_path / "data")
    task = custom_task("big", kind, files)
    int8 = [{"name": "int8", "strategy": "quantize",
             "params": {"backend": "ort", "method": method, "calibration": {"num_samples": 16, "check_samples": 8}}}]
    result = compresso.apply(_recipe(tmp_path, task, stages_extra=int8, epochs=8), console=quiet())
    folder = result.final_stage
    metrics = json.loads((folder / "stage.json").read_text())["metrics"]
    check = metrics["task_check"]
    headline = "f1_macro" if kind == "tagging" else "macro_f1"
    fp32_metrics = json.loads((result.stages[0].path / "stage.json").read_text())["metrics"]
    assert check["split"] == "validation" and check["metric"] == headline
    assert check["examples"] == fp32_metrics["sizes"]["validation"]
    assert set(check["fp32"]) == set(check["int8"]) and 0.0 <= check["loyalty"]["label"] <= 1.0
    # the fp32 side of the check is the fine-tuned stage's own validation score
    assert check["fp32"][headline] == pytest.approx(fp32_metrics["validation"][headline], abs=1e-6)
    assert metrics["calibration"] == f"{24 if method == 'static' else 8} training examples of big (big)"
    head = task_head(folder)
    assert head is not None and head.task == "big"  # the INT8 folder is a task model too
    bundle = compresso.load(folder)
    sentences = ([["casa", "mare", "om"], ["un", "drum", "frumos", "la", "bucurești"], ["apa", "de", "la", "român"]]
                 if kind == "tagging" else ["casa mare", "un om la drum", "apa de noaptea", "ziua frumos", "o carte"])
    ours = predict_labels(bundle.model, bundle.tokenizer, head, sentences)
    assert _ort_labels(folder, head, sentences) == ours
    # asked for another device (a GPU in the evaluation), the INT8 model stays on the CPU where it runs
    model, tokenizer, _ = load_task_model(folder, device="meta")
    assert predict_labels(model, tokenizer, head, sentences, device="cpu") == ours
    card = (folder / "README.md").read_text()
    assert f"INT8 against its fp32 input on {check['examples']} validation examples" in card


def test_pruning_a_task_model_keeps_its_head(tmp_path):
    from safetensors.torch import load_file

    task = custom_task("big", "tagging", tagging_files(tmp_path / "data"))
    prune = [{"name": "pruned", "strategy": "prune", "params": {"heads": 0.5, "ffn": 0.25, "scope": "global"}}]
    result = compresso.apply(_recipe(tmp_path, task, stages_extra=prune, epochs=8), console=quiet())
    fine, pruned = result.stages[0].path, result.stages[1].path
    assert json.loads((pruned / "compresso.json").read_text())["format"] == "prune"
    assert task_head(pruned) == task_head(fine)
    model, tokenizer, head = load_task_model(pruned)
    assert type(model).__name__ == "BertForTokenClassification"
    # the classifier (it reads the hidden size, which pruning keeps) is the fine-tuned one, unchanged
    before, after = load_file(str(fine / "model.safetensors")), model.state_dict()
    assert torch.equal(before["classifier.weight"], after["classifier.weight"])
    assert sum(t.numel() for t in after.values()) < sum(t.numel() for t in before.values())
    labels = predict_labels(model, tokenizer, head, [["casa", "mare"], ["un", "om"]])
    assert [len(x) for x in labels] == [2, 2] and set(sum(labels, [])) <= {"O", "B-BIG"}


@pytest.mark.shared
def test_builtin_tasks_from_the_shared_data(shared_dir, tmp_path):
    """NER and STS (siamese) from ../shared/data on capped splits, with an INT8 NER model after."""
    from compresso.evaluation.task_model import task_data_for
    from tests.tiny import tiny_berts_with_tokenizer

    base = tiny_berts_with_tokenizer(shared_dir / "teachers" / "ro-bert-small-cased", tmp_path, {"tiny": 2})["tiny"]
    caps = {"data_dir": str(shared_dir / "data"), "max_train_examples": 48, "max_eval_examples": 24,
            "epochs": 2, "batch_size": 8, "max_length": 64, "lr": 1e-3}
    recipe = {"name": "builtin", "output_dir": str(tmp_path / "run"), "device": "cpu",
              "teachers": [{"name": "tiny", "model": base}], "student": {"model": "tiny"},
              "stages": [{"name": "ner", "strategy": "finetune", "input": "tiny", "params": {"task": "ner", **caps}},
                         {"name": "ner-int8", "strategy": "quantize",
                          "params": {"backend": "ort", "method": "dynamic", "calibration": {"check_samples": 8}}},
                         {"name": "sts", "strategy": "finetune", "input": "tiny", "params": {"task": "sts", **caps}}]}
    result = compresso.apply(recipe, console=quiet())
    ner, int8, sts = (o.path for o in result.stages)
    head = task_head(ner)
    assert head.task == "ner" and head.entity_level and head.source["dataset"] == "ronec"
    assert head.source["data_dir"] == str((shared_dir / "data").resolve()) and "O" in head.labels
    again = task_data_for(head, max_train_examples=48, max_eval_examples=24)
    metrics = json.loads((ner / "stage.json").read_text())["metrics"]
    assert again.sizes() == metrics["sizes"] and again.labels == head.labels
    check = json.loads((int8 / "stage.json").read_text())["metrics"]["task_check"]
    assert check["examples"] == 24 and check["fp32"]["f1_macro"] == pytest.approx(metrics["validation"]["f1_macro"])
    sts_head = task_head(sts)
    assert (sts_head.head, sts_head.pooling, sts_head.value_range) == ("siamese", "mean", (0.0, 5.0))
    st = pytest.importorskip("sentence_transformers")
    vectors = st.SentenceTransformer(str(sts), device="cpu").encode(["O propoziție.", "Alta."])
    assert vectors.shape == (2, 32)


def test_every_finetune_parameter_is_documented():
    from pathlib import Path

    from compresso.evaluation.config import CustomTask
    from compresso.strategies.finetune import FinetuneParams
    from compresso.strategies.quantize import QuantizeParams

    docs = Path(__file__).resolve().parents[1] / "docs"
    page = (docs / "finetune.md").read_text()
    missing = [f for f in list(FinetuneParams.model_fields) + list(CustomTask.model_fields)
               if f"| `{f}` |" not in page]
    assert not missing, f"docs/finetune.md lacks rows for {missing}"
    quantization = (docs / "quantization.md").read_text()
    assert all(f"| `{f}` |" in quantization for f in ("task_check", "task_check_examples", "max_task_drop"))
    assert all(f in QuantizeParams.model_fields for f in ("task_check", "task_check_examples", "max_task_drop"))
