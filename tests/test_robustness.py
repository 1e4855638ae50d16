"""Careless and hostile input (issue 16): nothing outside output_dir is touched, every bad input is
a clean exit 2 with file:line:key, runs on one folder exclude each other, interrupts are recorded,
diverging training stops with a usable checkpoint, plugins cannot take compresso down."""

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from click.testing import CliRunner

from compresso import cli, registry
from compresso.engine import RunError, inside
from compresso.recipe import RecipeError, load_recipe
from tests.tiny import STRATEGIES_SOURCE, WORDS, install_distribution, tiny_bert

# Strategies for these tests only: one that waits for a file (to hold a run open), two that declare
# formats, and plugins that misbehave in the ways an audit found.
EXTRA_SOURCE = '''
import os
import shlex
import time
from pathlib import Path

from compresso.strategy import CompressionStrategy, ModelBundle, StrategyParams


class WaitForFile(CompressionStrategy):
    """Holds the run open until the file named by COMPRESSO_TEST_GO exists (at most 60 s)."""
    name = "wait_for_file"
    summary = "waits"

    def apply(self, bundle, ctx):
        (ctx.work_dir / "started").write_text("yes")
        go = Path(os.environ["COMPRESSO_TEST_GO"])
        deadline = time.time() + 60
        while not go.exists() and time.time() < deadline:
            time.sleep(0.05)
        return ModelBundle(bundle.model, bundle.tokenizer, bundle.lineage)


class ToLowRank(CompressionStrategy):
    """Declares that it produces its own format (as a low-rank factorisation plugin would)."""
    name = "to_low_rank"

    def output_format(self, input_format):
        return "to_low_rank"

    def apply(self, bundle, ctx):
        return ModelBundle(bundle.model, bundle.tokenizer, bundle.lineage, format="to_low_rank")


class NeedsTransformers(CompressionStrategy):
    name = "needs_transformers"
    accepts_formats = frozenset({"transformers"})

    def apply(self, bundle, ctx):
        return bundle
'''

EXITING_SOURCE = "import sys\nsys.exit(3)\n"
SUMMARY_NONE_SOURCE = '''
from compresso.strategy import CompressionStrategy
class S(CompressionStrategy):
    name = "summary_none"
    summary = None
    def apply(self, bundle, ctx):
        return bundle
'''
PARAMS_DICT_SOURCE = '''
from compresso.strategy import CompressionStrategy
class S(CompressionStrategy):
    name = "params_dict"
    Params = dict
    def apply(self, bundle, ctx):
        return bundle
'''


@pytest.fixture()
def site(tmp_path, monkeypatch):
    root = install_distribution(
        tmp_path / "site", "compresso-test-strategies",
        {"engine_test_strategies": STRATEGIES_SOURCE, "robust_test_strategies": EXTRA_SOURCE},
        {"keep_layers": "engine_test_strategies:KeepLayers", "wait_for_file": "robust_test_strategies:WaitForFile",
         "to_low_rank": "robust_test_strategies:ToLowRank",
         "needs_transformers": "robust_test_strategies:NeedsTransformers"})
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("COMPRESSO_TEST_CALLS", str(tmp_path / "calls.txt"))
    monkeypatch.setenv("COMPRESSO_TEST_GO", str(tmp_path / "go"))
    registry.discover.cache_clear()
    yield root
    for name in ("engine_test_strategies", "robust_test_strategies"):
        sys.modules.pop(name, None)
    registry.discover.cache_clear()


@pytest.fixture()
def model_dir(tmp_path):
    return tiny_bert(tmp_path / "tiny", layers=2)


def recipe(tmp_path, model_dir, stages="  - strategy: keep_layers\n    params: {layers: 1}\n", extra="", out=None):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: robust\nseed: 1\noutput_dir: {out or tmp_path / 'run'}\ndevice: cpu\n"
                    f"teachers:\n  - name: t\n    model: {model_dir}\nstudent:\n  model: t\nstages:\n{stages}{extra}")
    return path


def invoke(args, cwd=None):
    """The CLI in-process, as a user runs it; returns (exit code, stdout + stderr)."""
    old, widths = os.getcwd(), (cli.console.width, cli.err_console.width)
    if cwd is not None:
        os.chdir(cwd)
    cli.console.width = cli.err_console.width = 1000  # no wrapping inside the messages tested
    try:
        result = CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=True)
    finally:
        os.chdir(old)
        cli.console.width, cli.err_console.width = widths
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback: always a failure here
    return result.exit_code, result.output


def tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- 1. stage names are never paths -------------------------------------------------------------

def test_stage_name_traversal_is_refused_and_touches_nothing(tmp_path, site, model_dir):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    out = tmp_path / "a" / "b"
    path = recipe(tmp_path, model_dir, out=out)
    for command in ("validate", "apply", "apply"):
        code, output = invoke([command, path, "--set", "stages.0.name=x/../../victim"])
        assert code == 2, output
        assert "stages.0.name" in output and "not a plain name" in output
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not out.exists()
    for bad in ("..", ".hidden", "a\\b", "tab\there", "x" * 65, ""):
        with pytest.raises(RecipeError, match="not a plain name"):
            load_recipe(path, [f"stages.0.name={json.dumps(bad)}"])


def test_engine_refuses_paths_outside_the_output_folder(tmp_path):
    out = tmp_path / "run"
    (out / "00-x").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (out / "01-link").symlink_to(tmp_path / "elsewhere")
    assert inside(out, out / "00-x") == out / "00-x"
    for path in (out / ".." / "elsewhere", out, out / "01-link", tmp_path):
        with pytest.raises(RunError, match="not inside the output folder"):
            inside(out, path)


# --- 2. output_dir ------------------------------------------------------------------------------

def test_output_dir_must_be_new_empty_or_a_compresso_run(tmp_path, site, model_dir):
    path = recipe(tmp_path, model_dir)
    code, output = invoke(["apply", path, "-o", "/"])
    assert code == 2 and "not a compresso run" in output
    assert not os.path.exists("/run.json")
    code, output = invoke(["validate", path, "--set", "output_dir=''"])
    assert code == 2 and "output_dir" in output
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    code, output = invoke(["apply", path, "-o", a_file])
    assert code == 2 and "is a file" in output and a_file.read_text() == "x"
    foreign = tmp_path / "mine"
    (foreign / "00-keep_layers").mkdir(parents=True)
    (foreign / "00-keep_layers" / "thesis.tex").write_text("years of work")
    (foreign / "notes.txt").write_text("notes")
    before = tree(foreign)
    for command in ("validate", "apply"):
        code, output = invoke([command, path, "-o", foreign])
        assert code == 2 and "not a compresso run" in output and "notes.txt" in output
    assert tree(foreign) == before and (foreign / "00-keep_layers" / "thesis.tex").read_text() == "years of work"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke(["apply", path, "-o", empty])[0] == 0
    assert invoke(["apply", path, "-o", empty])[0] == 0  # a compresso run: reused
    # A lock file left by a process that died does not hold anything up.
    (empty / ".lock").write_text("pid 999999 on nowhere: compresso apply x")
    code, output = invoke(["apply", path, "-o", empty, "--force"])
    assert code == 0, output


# --- 3. two runs on one folder ------------------------------------------------------------------

def _cli_env(site):
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="200")
    env["PYTHONPATH"] = os.pathsep.join([str(site), os.getcwd(), env.get("PYTHONPATH", "")])
    return env


def _start(args, tmp_path, site):
    return subprocess.Popen([sys.executable, "-m", "compresso.cli", *map(str, args)], cwd=tmp_path,
                            env=_cli_env(site), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, seconds=120):
    deadline = time.time() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.communicate()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_two_concurrent_runs_one_waits_out_with_the_lock_message(tmp_path, site, model_dir):
    path = recipe(tmp_path, model_dir, stages="  - strategy: wait_for_file\n")
    first = _start(["apply", path], tmp_path, site)
    _wait_for(tmp_path / "run" / ".work" / "00-wait_for_file" / "started", first)
    second = _start(["apply", path], tmp_path, site)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 2, out + err
    assert "in use by another compresso run" in err and f"pid {first.pid}" in err
    (tmp_path / "go").write_text("go")
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out + err
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["status"] == "finished" and [s["stage"] for s in manifest["stages"]] == ["00-wait_for_file"]


# --- 9. interrupts ------------------------------------------------------------------------------

@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "interrupted")])
def test_interrupt_records_the_run_and_the_hint_keeps_output_dir_and_set(tmp_path, site, model_dir, sig, code, word):
    path = recipe(tmp_path, model_dir, stages="  - strategy: wait_for_file\n  - strategy: keep_layers\n"
                                               "    params: {layers: 2}\n")
    out = tmp_path / "elsewhere"
    proc = _start(["apply", path, "-o", out, "--set", "stages.1.params.layers=1"], tmp_path, site)
    _wait_for(out / ".work" / "00-wait_for_file" / "started", proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stdout + stderr
    assert word in stderr
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "interrupted"
    assert not list(out.glob(".tmp-*"))  # no half-written stage folder left behind
    hint = stderr.split("To continue: ", 1)[1].strip()
    assert f"-o {out}" in hint and "--set stages.1.params.layers=1" in hint and "--resume" in hint
    (tmp_path / "go").write_text("go")
    args = shlex.split(hint)[1:]  # followed verbatim, it resumes the same run
    code, output = invoke(args, cwd=tmp_path)
    assert code == 0, output
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_ctrl_c_during_start_up_exits_130(tmp_path, site, model_dir, monkeypatch):
    import compresso.recipe

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compresso.recipe, "load_recipe", interrupted)
    code, output = invoke(["apply", recipe(tmp_path, model_dir)])
    assert code == 130 and "Aborted" not in output and "interrupted" in output


def test_a_killed_run_leaves_no_lock_behind(tmp_path, site, model_dir):
    path = recipe(tmp_path, model_dir, stages="  - strategy: wait_for_file\n")
    proc = _start(["apply", path], tmp_path, site)
    _wait_for(tmp_path / "run" / ".work" / "00-wait_for_file" / "started", proc)
    proc.kill()  # SIGKILL: no handler runs, the lock file stays with the dead holder's pid in it
    proc.communicate(timeout=60)
    assert f"pid {proc.pid}" in (tmp_path / "run" / ".lock").read_text()
    (tmp_path / "go").write_text("go")
    code, output = invoke(["apply", path])
    assert code == 0, output


# --- 4, 7. the recipe file itself ----------------------------------------------------------------

ALIAS_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_alias_bomb_is_refused_within_a_second(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    start = time.perf_counter()
    with pytest.raises(RecipeError, match="expands to more than"):
        load_recipe(path)
    assert time.perf_counter() - start < 1.0


def test_anchors_and_merge_keys_still_work(tmp_path, site, model_dir):
    path = recipe(tmp_path, model_dir, stages="  - strategy: keep_layers\n    params: &p {layers: 1, fail: false}\n"
                                               "  - strategy: keep_layers\n    name: again\n"
                                               "    params:\n      <<: *p\n      layers: 2\n")
    stages = load_recipe(path).recipe.stages
    assert stages[0].params == {"layers": 1, "fail": False} and stages[1].params == {"layers": 2, "fail": False}


@pytest.mark.parametrize("mutate, key, message", [
    (lambda t: t.replace("seed: 1", "seed: 1\nseed: 2"), "", "'seed' appears twice"),
    (lambda t: t.replace("seed: 1", "seed: true"), "seed", "valid integer"),
    (lambda t: t.replace("seed: 1", f"seed: {2**64}"), "seed", "less than"),
    (lambda t: t.replace("name: robust", 'name: "a\\0b"'), "name", "NUL"),
    (lambda t: t.replace("name: t\n", 'name: "t\\0"\n'), "teachers.0.name", "NUL"),
    (lambda t: t.replace("student:\n  model: t", "student:\n  model: t\n  config: {no_such_setting: 1}"),
     "", "student.config.no_such_setting"),
    (lambda t: t.replace("device: cpu", "device: tpu"), "device", "expected auto, cpu, cuda"),
    (lambda t: "[" * 5000 + "\n", "", "nested"),
    (lambda t: t.replace("layers: 1", "layers: .inf"), "stages.0.params.layers", ""),
])
def test_bad_recipes_exit_2_with_key_never_a_traceback(tmp_path, site, model_dir, mutate, key, message):
    path = recipe(tmp_path, model_dir)
    path.write_text(mutate(path.read_text()))
    code, output = invoke(["validate", path])
    assert code == 2, output
    assert message in output and key in output
    assert not (tmp_path / "run").exists()


def test_non_text_recipes_and_bad_set_values_exit_2(tmp_path, site, model_dir):
    path = recipe(tmp_path, model_dir)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(path.read_text().replace("robust", "român").encode("latin-1"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    for bad, message in ((latin1, "not UTF-8"), (binary, "not UTF-8")):
        code, output = invoke(["validate", bad])
        assert code == 2 and message in output, output
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"name: x\x00\n")
    code, output = invoke(["validate", nul])
    assert code == 2 and "NUL" in output
    for item in ("seed=[1", "seed={a: [", "stages.0.params.layers.x=1"):
        code, output = invoke(["validate", path, "--set", item])
        assert code == 2, (item, output)
    code, output = invoke(["apply", path, "--device", "tpu"])
    assert code == 2 and "expected auto, cpu, cuda or cuda:N" in output


# --- 5. non-finite numbers and diverging training -------------------------------------------------

def _corpus(path, lines=200):
    import random

    rng = random.Random(0)
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) for _ in range(lines)) + "\n")
    return path


def distill_stage(corpus, **params):
    base = dict(corpus=[str(corpus)], seq_len=16, batch_size=4, max_steps=8, heldout_documents=8, log_every=1,
                checkpoint_every=2, lr=1e-3, warmup_ratio=0.0, num_layers=1)
    base.update(params)
    return f"  - strategy: distill\n    params: {json.dumps(base)}\n"


def test_infinite_numbers_are_rejected_by_validate(tmp_path, model_dir):
    corpus = _corpus(tmp_path / "c.txt")
    path = recipe(tmp_path, model_dir, stages=distill_stage(corpus))
    text = path.read_text()
    for old, new, key in (('"lr": 0.001', '"lr": .inf', "stages.0.params.lr"),
                          ('"lr": 0.001', '"lr": .nan', "stages.0.params.lr"),
                          ('"num_layers": 1', '"teachers": {"t": .inf}', "stages.0.params.teachers"),
                          ('"num_layers": 1', '"adam_betas": [5, -3]', "stages.0.params.adam_betas")):
        path.write_text(text.replace(old, new))
        code, output = invoke(["validate", path])
        assert code == 2 and key in output, output
    path.write_text(text + "evaluate: {finetune: {lr: .inf}}\n")
    code, output = invoke(["validate", path])
    assert code == 2 and "evaluate.finetune.lr" in output and "finite" in output


def test_nan_loss_stops_training_with_exit_1_and_a_usable_checkpoint(tmp_path, model_dir, monkeypatch):
    from compresso.strategies.distill import trainer as trainer_module

    corpus = _corpus(tmp_path / "c.txt")
    path = recipe(tmp_path, model_dir, stages=distill_stage(corpus))
    real, calls = trainer_module.compute_losses, [0]

    def poisoned(*args, **kwargs):
        losses = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] >= 5:  # step 5 of 8: checkpoints were written at steps 2 and 4
            losses.total = losses.total * float("nan")
        return losses

    monkeypatch.setattr(trainer_module, "compute_losses", poisoned)
    code, output = invoke(["apply", path])
    assert code == 1, output
    assert "diverged at step 5" in output and "last good checkpoint" in output
    out = tmp_path / "run"
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert not (out / "00-distill").exists() and not list(out.glob(".tmp-*"))
    checkpoint = out / ".work" / "00-distill" / "checkpoint"
    assert torch.load(checkpoint / "state.pt", weights_only=True)["step"] == 4
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(str(checkpoint / "student.safetensors")).values())
    monkeypatch.undo()  # the cause fixed, the same command resumes from that checkpoint and finishes
    code, output = invoke(["apply", path])
    assert code == 0, output
    report = json.loads((out / "00-distill" / "distill.json").read_text())
    assert report["training"]["resumed_from_step"] == 4


# --- 6, 15.6. validate makes every check apply makes ----------------------------------------------

def test_validate_catches_what_apply_would_find_later(tmp_path, site, model_dir):
    path = recipe(tmp_path, model_dir, extra=f"evaluate: {{tasks: [upos], data_dir: {tmp_path / 'nodata'}}}\n")
    code, output = invoke(["validate", path])
    assert code == 2 and "nodata" in output and "does not exist" in output
    (tmp_path / "data").mkdir()
    path = recipe(tmp_path, model_dir, extra="evaluate: {tasks: [upos], models: [t, 00-keep_layer]}\n")
    code, output = invoke(["validate", path])
    assert code == 2 and "'00-keep_layer'" in output and "00-keep_layers" in output
    path = recipe(tmp_path, model_dir, stages=distill_stage(tmp_path / "c.txt", teachers=["t", "nobody"]))
    _corpus(tmp_path / "c.txt")
    code, output = invoke(["validate", path])
    assert code == 2 and "'nobody' is not among the recipe's teachers" in output
    binary = tmp_path / "binary.txt"
    binary.write_bytes(os.urandom(20000))
    path = recipe(tmp_path, model_dir, stages=distill_stage(binary))
    code, output = invoke(["validate", path])
    assert code == 2 and "not valid UTF-8" in output and str(binary) in output


def test_stage_formats_are_checked_along_the_chain(tmp_path, site, model_dir):
    path = recipe(tmp_path, model_dir, stages="  - strategy: to_low_rank\n  - strategy: needs_transformers\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    (problem,) = exc.value.problems
    assert problem.key == "stages.1.strategy" and problem.line == 12
    assert "format(s) transformers" in problem.message and "'to_low_rank'" in problem.message
    # The built-in quantize after a plugin's own format: found by validate, not after the earlier stages ran.
    path = recipe(tmp_path, model_dir, stages="  - strategy: to_low_rank\n  - strategy: quantize\n"
                                               "    params: {method: dynamic}\n")
    code, output = invoke(["validate", path])
    assert code == 2 and "stages.1.strategy" in output and "'to_low_rank'" in output, output
    # From the student (a transformers model) it is fine, and so is the other order.
    ok = recipe(tmp_path, model_dir, stages="  - strategy: needs_transformers\n  - strategy: to_low_rank\n"
                                             "  - strategy: needs_transformers\n    input: student\n")
    assert len(load_recipe(ok).recipe.stages) == 3


def test_from_stage_with_force_is_refused(tmp_path, site, model_dir):
    code, output = invoke(["apply", recipe(tmp_path, model_dir), "--force", "--from-stage", "keep_layers"])
    assert code == 2 and "--from-stage" in output and "--force" in output
    assert not (tmp_path / "run").exists()


# --- 8. plugins ---------------------------------------------------------------------------------

def test_misbehaving_plugins_are_listed_and_clashes_must_be_resolved(tmp_path, site, model_dir, monkeypatch):
    bad = install_distribution(tmp_path / "bad", "compresso-bad-plugins",
                               {"exits_on_import": EXITING_SOURCE, "summary_none": SUMMARY_NONE_SOURCE,
                                "params_dict": PARAMS_DICT_SOURCE,
                                "clashing": STRATEGIES_SOURCE},
                               {"exits": "exits_on_import:S", "summary_none": "summary_none:S",
                                "params_dict": "params_dict:S", "keep_layers": "clashing:KeepLayers"})
    monkeypatch.syspath_prepend(str(bad))
    registry.discover.cache_clear()
    try:
        code, output = invoke(["strategies"])
        assert code == 0, output
        assert "SystemExit" in output and "summary must be a string" in output
        assert "must be a StrategyParams subclass" in output and "name clash" in output
        path = recipe(tmp_path, model_dir)
        code, output = invoke(["validate", path])
        assert code == 2 and "registered by more than one" in output
        assert "keep_layers@compresso-test-strategies" in output and "keep_layers@compresso-bad-plugins" in output
        path.write_text(path.read_text().replace("strategy: keep_layers", "strategy: keep_layers@compresso-test-strategies"))
        code, output = invoke(["apply", path])
        assert code == 0, output
        assert (tmp_path / "run" / "00-keep_layers" / "stage.json").is_file()
    finally:
        for name in ("exits_on_import", "summary_none", "params_dict", "clashing"):
            sys.modules.pop(name, None)
        registry.discover.cache_clear()


# --- 10. corpora --------------------------------------------------------------------------------

def test_undecodable_corpus_warns_then_fails(tmp_path):
    from compresso.corpus import CorpusError, check_corpus

    text = "casa mare este frumoasă\n" * 400
    mostly = tmp_path / "mostly.txt"
    mostly.write_bytes(text.encode() + b"\xff\xfe" * 20 + b"\n" + text.encode())
    warnings = check_corpus([mostly])
    assert len(warnings) == 1 and "not valid UTF-8" in warnings[0]
    binary = tmp_path / "binary.txt"
    binary.write_bytes(os.urandom(50000))
    with pytest.raises(CorpusError, match=r"binary\.txt: .*% of its first characters are not valid UTF-8"):
        check_corpus([binary])
    assert check_corpus([binary], max_undecodable=1.0)  # configurable: allowed, with a warning
    assert check_corpus([tmp_path / "mostly.txt"], max_undecodable=0.5)


def test_corpus_check_reads_compressed_files(tmp_path):
    import lzma

    from compresso.corpus import check_corpus

    path = tmp_path / "c.txt.xz"
    with lzma.open(path, "wt", encoding="utf-8") as f:
        f.write(textwrap.dedent("""\
            una doua trei
            patru cinci
            """))
    assert check_corpus([path]) == []


# --- second audit: stale results, symlinks, non-finite configurations, ... ------------------------

def _mood_task(folder):
    """A two-class custom CSV task a tiny model can learn (no ../shared needed)."""
    from tests.test_api import _sentiment_csv

    return {"name": "mood", "kind": "classification", "files": _sentiment_csv(folder), "text": "review",
            "label": "mood"}


def test_an_interrupted_evaluation_never_resumes_another_models_scores(tmp_path, monkeypatch):
    """Finished jobs are keyed by the model's content, not its path: a model rebuilt in the same
    folder is evaluated afresh; an unchanged one resumes."""
    from compresso.evaluation import EvalModel, evaluate_models
    from compresso.evaluation import runner as eval_runner
    from tests.tiny import quiet

    model = tiny_bert(tmp_path / "model", layers=1, seed=0)
    cfg = {"max_train_examples": 48, "max_eval_examples": 24, "seeds": 2, "jobs": 1, "efficiency": False,
           "loyalty": False, "finetune": {"epochs": 1, "max_length": 32, "batch_size": 8},
           "custom_tasks": [_mood_task(tmp_path / "mood")], "tasks": ["mood"]}
    models = [EvalModel("m", str(model), "student")]
    saved = []
    original = eval_runner._JobStore.save

    def save_then_stop(self, job, result):
        original(self, job, result)
        saved.append(job)
        raise KeyboardInterrupt  # as if stopped right after the first job

    monkeypatch.setattr(eval_runner._JobStore, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        evaluate_models(models, cfg, None, tmp_path / "eval", torch.device("cpu"), 3, quiet())
    monkeypatch.undo()
    assert len(saved) == 1
    tiny_bert(tmp_path / "model", layers=2, seed=5)  # another model in the same folder
    again = evaluate_models(models, cfg, None, tmp_path / "eval", torch.device("cpu"), 3, quiet())
    fresh = evaluate_models(models, cfg, None, tmp_path / "fresh", torch.device("cpu"), 3, quiet())
    assert again["scheduler"]["resumed"] == 0

    def metrics(results):
        return [run["metrics"] for run in results["scores"]["m"]["mood"]["runs"]]

    assert metrics(again) == metrics(fresh)
    # The same model, interrupted and started again: its finished job is taken over.
    monkeypatch.setattr(eval_runner._JobStore, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        evaluate_models(models, cfg, None, tmp_path / "eval2", torch.device("cpu"), 3, quiet())
    monkeypatch.undo()
    resumed = evaluate_models(models, cfg, None, tmp_path / "eval2", torch.device("cpu"), 3, quiet())
    assert resumed["scheduler"]["resumed"] == 1
    assert metrics(resumed) == metrics(fresh)
