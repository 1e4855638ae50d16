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


class NanWeights(CompressionStrategy):
    """Returns a model with one non-finite weight (as a diverged or buggy stage would)."""
    name = "nan_weights"

    def apply(self, bundle, ctx):
        import torch

        with torch.no_grad():
            next(bundle.model.parameters()).view(-1)[0] = float("nan")
        return bundle


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
         "needs_transformers": "robust_test_strategies:NeedsTransformers",
         "nan_weights": "robust_test_strategies:NanWeights"})
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
    stdout, stderr = proc.communicate(timeout=180)  # generous: a loaded CI machine is slow to start Python
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


def _run_once(tmp_path, site, model_dir):
    path = recipe(tmp_path, model_dir)
    code, output = invoke(["apply", path])
    assert code == 0, output
    return path, tmp_path / "run"


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path, site, model_dir):
    path, out = _run_once(tmp_path, site, model_dir)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / ".lock").unlink()
    (out / ".lock").symlink_to(victim)
    for command in ("validate", "apply"):
        code, output = invoke([command, path])
        assert code == 2, output
        assert "symbolic link" in output and ".lock" in output
    assert victim.read_text() == "keep me"


def test_a_symlinked_work_folder_is_refused_before_anything_is_written(tmp_path, site, model_dir):
    path, out = _run_once(tmp_path, site, model_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / ".work").symlink_to(elsewhere, target_is_directory=True)
    before = tree(out)
    code, output = invoke(["apply", path, "--force"])
    assert code == 2, output
    assert "symbolic link" in output and ".work" in output
    assert list(elsewhere.iterdir()) == [] and tree(out) == before


def test_evaluate_out_refuses_a_foreign_folder(tmp_path, model_dir):
    import compresso
    from compresso.evaluation import EvaluationError

    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "report.md").write_text("my report")
    (foreign / "results.json").write_text('{"mine": true}')
    code, output = invoke(["evaluate", f"m={model_dir}", "--out", foreign, "--device", "cpu"])
    assert code == 2, output
    assert "not a compresso evaluation" in output and "report.md" in output
    with pytest.raises(EvaluationError, match="not a compresso evaluation"):
        compresso.evaluate({"m": str(model_dir)}, out_dir=foreign, device="cpu")
    assert (foreign / "report.md").read_text() == "my report"
    assert (foreign / "results.json").read_text() == '{"mine": true}'


@pytest.mark.parametrize("setting", ["{layer_norm_eps: .nan}", "{initializer_range: .inf}", "{hidden_dropout_prob: -.inf}"])
def test_non_finite_model_configuration_is_refused_with_its_key(tmp_path, site, model_dir, setting):
    path = recipe(tmp_path, model_dir)
    for command in ("validate", "apply"):
        code, output = invoke([command, path, "--set", f"student.config={setting}"])
        assert code == 2, output
        assert "student.config." in output and "not a finite number" in output
    path.write_text(path.read_text().replace("student:\n  model: t", f"student:\n  model: t\n  config: {setting}"))
    code, output = invoke(["validate", path])
    assert code == 2 and "not a finite number" in output
    assert f"{path}:10: student.config." in output  # the line that sets it
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting, message", [
    ("{num_labels: 18446744073709551616}", "at most 100,000 are accepted"),  # transformers would build 2**64 labels
    ("{num_hidden_layers: 2147483648}", "at most 1,000 are accepted"),  # and 2**31 layers, even on the meta device
    ("{id2label: 1.5, num_labels: 3}", "refuses"),
    ("{hidden_size: 65536, intermediate_size: 4194304, num_attention_heads: 1}", "more than this machine's"),
])
def test_a_student_too_large_to_build_is_refused_before_any_memory_is_taken(tmp_path, site, model_dir, setting,
                                                                             message):
    path = recipe(tmp_path, model_dir)
    for command in ("validate", "apply"):
        t0 = time.monotonic()
        code, output = invoke([command, path, "--set", f"student.config={setting}"])
        assert code == 2, output
        assert "student.config" in output and message in output
        assert time.monotonic() - t0 < 60
    assert not list((tmp_path / "run").glob("00-*"))


def test_a_student_with_non_finite_weights_never_trains(tmp_path, site, model_dir):
    path = recipe(tmp_path, model_dir)
    code, output = invoke(["apply", path, "--set", "student.config={initializer_range: 1.0e+300}"])
    assert code == 2, output
    assert "non-finite weight" in output and "student.config" in output
    assert not list((tmp_path / "run").glob("00-*"))


def test_a_stage_that_makes_weights_non_finite_fails_and_saves_nothing(tmp_path, site, model_dir):
    path = recipe(tmp_path, model_dir, stages="  - strategy: nan_weights\n")
    code, output = invoke(["apply", path])
    assert code == 1, output
    assert "00-nan_weights" in output and "non-finite weight" in output
    assert not (tmp_path / "run" / "00-nan_weights").exists()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("stage", [
    "  - strategy: prune\n    params: {{ffn: 0.5, importance: taylor, corpus: [{corpus}], calibration_batches: 1}}\n",
    "  - strategy: quantize\n    params: {{calibration: {{corpus: [{corpus}]}}}}\n",
    "  - strategy: distill\n    params: {{corpus: [{corpus}], num_layers: 1, max_steps: 1}}\n",
])
def test_every_strategy_refuses_a_binary_file_as_text(tmp_path, model_dir, stage):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(os.urandom(50000))
    path = recipe(tmp_path, model_dir, stages=stage.format(corpus=binary))
    code, output = invoke(["validate", path])
    assert code == 2, output
    assert "binary.txt" in output and "not valid UTF-8" in output
    assert f"{path}:12: stages.0.params" in output  # the line of the stage's parameters


EXIT_ZERO_SOURCE = "import os\nos._exit(0)\n"


def test_a_plugin_calling_os_exit_at_import_is_named_and_the_cli_carries_on(tmp_path, site, model_dir):
    bad = install_distribution(tmp_path / "bad", "compresso-exiting-plugin", {"exits_quietly": EXIT_ZERO_SOURCE},
                               {"quiet_exit": "exits_quietly:S"})
    path = recipe(tmp_path, model_dir)
    env = _cli_env(site)
    env["PYTHONPATH"] = os.pathsep.join([str(bad), env["PYTHONPATH"]])
    run = lambda *args: subprocess.run([sys.executable, "-m", "compresso.cli", *map(str, args)], cwd=tmp_path,  # noqa: E731
                                       env=env, capture_output=True, text=True, timeout=300)
    listed = run("strategies")
    assert listed.returncode == 0, listed.stderr
    assert "quiet_exit" in listed.stdout and "os._exit(0)" in listed.stdout and "keep_layers" in listed.stdout
    checked = run("validate", path)
    assert checked.returncode == 0, checked.stderr
    assert "valid" in checked.stdout
    assert "quiet_exit" in checked.stderr and "compresso-exiting-plugin" in checked.stderr and "os._exit" in checked.stderr
    applied = run("apply", path)
    assert applied.returncode == 0 and "done in" in applied.stdout, applied.stderr


class _SilentHub:
    """A 'hub' that accepts connections and never answers: a machine whose network hangs."""

    def __enter__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc):
        self.sock.close()


DISTILL_FROM_HUB = ("  - strategy: distill\n    params: {{corpus: [{corpus}], num_layers: 1, max_steps: 1, "
                    "heldout_documents: 0}}\n")


def _hub_recipe(tmp_path, model_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(WORDS[i:i + 5]) for i in range(20)) + "\n")
    path = tmp_path / "hub.yaml"
    path.write_text(f"name: hub\nseed: 1\noutput_dir: {tmp_path / 'run'}\ndevice: cpu\nteachers:\n"
                    f"  - name: t\n    model: nobody-real/no-such-bert\nstudent:\n  model: {model_dir}\nstages:\n"
                    + DISTILL_FROM_HUB.format(corpus=corpus))
    return path


def test_validate_never_touches_the_network(tmp_path, model_dir, monkeypatch):
    from huggingface_hub import constants

    path = _hub_recipe(tmp_path, model_dir)
    with _SilentHub() as endpoint:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        start = time.perf_counter()
        code, output = invoke(["validate", path])
        assert time.perf_counter() - start < 20
    assert code == 0, output
    assert "not contacted" in output and "nobody-real/no-such-bert" in output
    path.write_text(path.read_text().replace("nobody-real/no-such-bert", "not a hub id!"))
    code, output = invoke(["validate", path])
    assert code == 2 and "teachers.0.model" in output and "neither an existing folder nor a hub id" in output


def test_apply_fails_at_once_without_network_naming_the_way_out(tmp_path, model_dir, monkeypatch):
    from huggingface_hub import constants

    from compresso import models

    path = _hub_recipe(tmp_path, model_dir)
    start = time.perf_counter()
    code, output = invoke(["apply", path])  # HF_HUB_OFFLINE is set for the whole suite
    assert code == 2 and time.perf_counter() - start < 20, output
    assert "nobody-real/no-such-bert" in output and "HF_HUB_OFFLINE" in output and "--local-dir" in output
    assert f"{path}:7: teachers.0.model" in output
    with _SilentHub() as endpoint:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(models, "HUB_CHECK_TIMEOUT", 1.0)
        start = time.perf_counter()
        code, output = invoke(["apply", path])
        assert code == 2 and time.perf_counter() - start < 20, output
    assert "did not answer within 1 s" in output and "HF_HUB_OFFLINE=1" in output and "--local-dir" in output
    assert not (tmp_path / "run").exists()


def test_rich_markup_in_user_text_is_printed_as_written(tmp_path, site, model_dir):
    path = recipe(tmp_path, model_dir)
    path.write_text(path.read_text().replace("name: robust", 'name: "x [/bold] y [red]z"'))
    code, output = invoke(["validate", path])
    assert code == 0, output
    assert "x[/bold]y[red]z" in "".join(output.split())  # the table may wrap it
    assert invoke(["apply", path])[0] == 0
    code, output = invoke(["validate", path, "--set", "student.model='[/nope] x'"])
    assert code == 2 and "'[/nope] x'" in output


def test_publish_without_network_is_one_clean_line_and_never_shows_the_token(tmp_path, site, model_dir):
    import socket

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "README.md").write_text("---\nlibrary_name: transformers\n---\n# m\n")
    with socket.socket() as s:  # a port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(_cli_env(site), HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{port}",
               HF_TOKEN="hf_NeverPrintThisTokenAnywhere123")
    for offline in ("0", "1"):
        env["HF_HUB_OFFLINE"] = offline
        result = subprocess.run([sys.executable, "-m", "compresso.cli", "publish", str(folder), "me/model"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        both = result.stdout + result.stderr
        assert result.returncode == 1, both
        assert "Traceback" not in both and "hf_NeverPrintThisTokenAnywhere123" not in both
        assert "publishing" in result.stderr and "me/model" in result.stderr and "hf auth login" in result.stderr


FULL_DISK_DRIVER = """
import resource, signal, sys
import compresso.cli, compresso.engine, compresso.card, transformers, safetensors.torch  # imported: no writes later
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as ENOSPC on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
sys.argv = ["compresso", "apply", sys.argv[2]]
compresso.cli.main()
"""


@pytest.mark.parametrize("limit, code, message", [(0, 2, "cannot write the lock file"), (8192, 1, "")])
def test_a_full_disk_is_a_clean_error_and_leaves_no_empty_files(tmp_path, site, model_dir, limit, code, message):
    """Every write past ``limit`` bytes fails (RLIMIT_FSIZE: as on a full disk, for this process only)."""
    path = recipe(tmp_path, model_dir)
    result = subprocess.run([sys.executable, "-c", FULL_DISK_DRIVER, str(limit), str(path)], cwd=tmp_path,
                            env=_cli_env(site), capture_output=True, text=True, timeout=300)
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "error:" in result.stderr and message in result.stderr
    out = tmp_path / "run"
    left = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not [p for p in left if p.name.endswith(".tmp") or p.stat().st_size == 0], left
    assert not (out.exists() and list(out.glob(".tmp-*")))


def test_output_dir_that_cannot_be_a_folder_is_caught_by_validate(tmp_path, site, model_dir):
    path = recipe(tmp_path, model_dir)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for command in ("validate", "apply"):
        code, output = invoke([command, path, "-o", loop])
        assert code == 2 and "symbolic link that leads nowhere" in output, output
        code, output = invoke([command, path, "-o", "/proc/compresso-run"])
        assert code == 2 and "pseudo file system" in output, output
    assert loop.is_symlink() and not os.path.exists("/proc/compresso-run")


def test_output_dir_with_a_tilde_means_the_home_folder(tmp_path, site, model_dir, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    path = recipe(tmp_path, model_dir, out="~/runs/x")
    code, output = invoke(["apply", path], cwd=tmp_path)
    assert code == 0, output
    assert (home / "runs" / "x" / "run.json").is_file() and not (tmp_path / "~").exists()


def test_rejections_found_after_loading_carry_a_line(tmp_path, site, model_dir):
    path = recipe(tmp_path, model_dir, extra="evaluate:\n  models: [nobody]\n")
    code, output = invoke(["validate", path])
    assert code == 2 and f"{path}:14: evaluate.models names 'nobody'" in output, output
    path = recipe(tmp_path, model_dir, extra=f"evaluate:\n  data_dir: {tmp_path / 'no-data'}\n")
    code, output = invoke(["validate", path])
    assert code == 2 and f"{path}:14: evaluate.data_dir:" in output, output
    path = recipe(tmp_path, model_dir, stages="  - strategy: ../x@compresso\n")
    code, output = invoke(["validate", path])
    assert code == 2 and f"{path}:11: stages.0.strategy:" in output, output


def test_python_api_checks_argument_types_at_the_door(tmp_path, model_dir):
    import compresso
    from compresso.api import prepare
    from compresso.recipe import RecipeError

    with pytest.raises(TypeError, match="not a single str"):
        compresso.evaluate(str(model_dir), out_dir=tmp_path / "e")
    with pytest.raises(TypeError, match=r"overrides: expected a list .* not str"):
        prepare({"name": "x"}, overrides="seed=3")
    with pytest.raises(TypeError, match="settings: expected a mapping"):
        compresso.evaluate({"m": str(model_dir)}, settings=["tasks"], out_dir=tmp_path / "e")
    with pytest.raises(TypeError, match="device"):
        compresso.evaluate({"m": str(model_dir)}, device=0, out_dir=tmp_path / "e")
    # pathlib paths in a recipe dict are accepted; another object names its key
    from pathlib import Path

    data = {"name": "x", "output_dir": tmp_path / "run", "device": "cpu", "student": {"model": Path(model_dir)},
            "stages": []}
    assert prepare(data).out == tmp_path / "run"
    with pytest.raises(RecipeError, match=r"student\.revision: a object cannot be part of a recipe"):
        prepare({**data, "student": {"model": str(model_dir), "revision": object()}})
    assert not (tmp_path / "e").exists()


def test_load_wraps_every_failure_in_model_load_error_with_the_folder(tmp_path, model_dir, monkeypatch):
    import shutil

    import compresso
    from compresso.models import ModelLoadError

    monkeypatch.chdir(model_dir)  # load("") must not load the current folder
    with pytest.raises(ModelLoadError, match="empty string"):
        compresso.load("")
    cases = {"unknown_format": ("compresso.json", '{"format": "no_such_format"}'),
             "broken_meta": ("compresso.json", "{not json"),
             "meta_list": ("compresso.json", "[1, 2]"),
             "broken_config": ("config.json", "{not json"),
             "foreign_config": ("config.json", '{"model_type": "no_such_type"}')}
    for name, (file, text) in cases.items():
        folder = tmp_path / name
        shutil.copytree(model_dir, folder)
        (folder / file).write_text(text)
        with pytest.raises(ModelLoadError) as info:
            compresso.load(folder)
        assert str(folder) in str(info.value), name
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        compresso.load(empty)
    with pytest.raises(TypeError, match="not int"):
        compresso.load(3)


def test_model_cards_and_reports_show_user_text_and_never_run_it(tmp_path, site, model_dir):
    from compresso.evaluation.report import markdown_table, md_fence

    hostile = '<script>alert(1)</script> # heading [link](javascript:alert(1)) <img src=x onerror=alert(2)>'
    path = recipe(tmp_path, model_dir)
    text = path.read_text().replace("name: robust", f"name: {json.dumps(hostile)}")
    text = text.replace("params: {layers: 1}", 'params: {layers: 1}\n    # a note:\n    #    ````\n    #    ```\n')
    path.write_text(text)
    code, output = invoke(["apply", path, "--set", "stages.0.params.fail=false"])
    assert code == 0, output
    card = (tmp_path / "run" / "00-keep_layers" / "README.md").read_text()
    body, recipe_block = card.split("\n---\n", 1)[1].split("## Recipe")
    assert "<script>" not in body and "<img" not in body and "](javascript:" not in body.replace("\\](", "")
    assert "&lt;script&gt;" in body
    assert not [line for line in body.splitlines() if line.startswith("# heading")]
    # The recipe block: its fence outlasts every run of backticks the recipe holds.
    lines = recipe_block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith("yaml") and line.startswith("```"))
    fence = lines[start][:-len("yaml")]
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == fence)
    assert f"name: {json.dumps(hostile)}"[:20] in "\n".join(lines[start:end]) or "alert(1)" in "\n".join(lines[start:end])
    assert md_fence("a\n   ````\nb")[0] == "`````"
    table = markdown_table(["task", "score"], [["Mood | good\nor bad", "1.0"]]).splitlines()
    assert table[2].count(" | ") == 1 and "\\|" in table[2]


def test_an_error_message_reaches_a_pipe_on_one_line(tmp_path, site, model_dir):
    """Piped (a script, a CI log), an error is never wrapped at any width."""
    path = recipe(tmp_path, model_dir)
    long_dir = tmp_path / ("d" * 200) / ("e" * 200)
    long_dir.mkdir(parents=True)
    (long_dir / "notes.txt").write_text("mine")
    env = dict(_cli_env(site))
    env.pop("COLUMNS")
    result = subprocess.run([sys.executable, "-m", "compresso.cli", "apply", str(path), "-o", str(long_dir)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and str(long_dir) in error[0] and error[0].endswith("so that nothing of yours is overwritten")
