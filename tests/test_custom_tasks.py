"""Custom tasks on the user's own files: CoNLL-U as a format (multiword tokens and empty nodes),
column numbering, settings precedence and defaults by shape, the --help text against behaviour,
paths relative to the task file, bad files, the scores plot, plain progress lines, and the
worked examples of docs/evaluation.md run as written."""

import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from click.testing import CliRunner
from pydantic import ValidationError
from rich.console import Console

from compresso.evaluation import EvaluationError
from compresso.evaluation.config import ALL_TASKS, CustomTask, EvaluateConfig
from compresso.evaluation.custom_tasks import custom_task_data, load_task_files, read_split, task_spec
from compresso.evaluation.data import DataError
from compresso.evaluation.runner import check_data
from compresso.evaluation.tasks import TASKS, DatasetCache, effective_settings
from tests.tiny import tiny_bert

REPO = Path(__file__).resolve().parents[1]

# "Dă-mi-l acum ." with its multiword token as a range line, and an empty node
CONLLU = """\ufeff# sent_id = a
# text = Dă-mi-l acum.
1-3\tDă-mi-l\t_\t_\t_\t_\t_\t_\t_\t_
1\tDă-\tda\tVERB\tVmm-2s\tMood=Imp\t0\troot\t_\tNER=O
2\tmi-\teu\tPRON\tPp1-sd\tCase=Dat\t1\tiobj\t_\tNER=O
3\tl\tel\tPRON\tPp3msa\tCase=Acc\t1\tobj\t_\tNER=O
3.1\tx\tx\tX\tX\t_\t_\t_\t1:dep\t_
4\tacum\tacum\tADV\tRgp\tDegree=Pos\t1\tadvmod\t_\tSpaceAfter=No|NER=O
5\t.\t.\tPUNCT\tPERIOD\t_\t1\tpunct\t_\tNER=O

# sent_id = b
1\tIon\tIon\tPROPN\tNp\tGender=Masc\t2\tnsubj\t_\tNER=B-PER
2\tvine\tveni\tVERB\tVmip3s\tMood=Ind\t0\troot\t_\tSpaceAfter=No|NER=O
3\t.\t.\tPUNCT\tPERIOD\t_\t2\tpunct\t_\tNER=O

"""
WORDS_A = ["Dă-", "mi-", "l", "acum", "."]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def tagging(path: Path, **keys) -> CustomTask:
    return CustomTask(name="t", kind="tagging", files={"train": str(path), "test": str(path)}, **keys)


def examples(task: CustomTask) -> list[tuple[list[str], list[str]]]:
    return [(ex.text, ex.label) for ex in read_split(task, "train")]


# --- CoNLL-U: one reader, multiword tokens and empty nodes ----------------------------------------


def test_builtin_and_custom_tasks_read_a_conllu_file_identically(tmp_path):
    for split in ("train", "dev", "test"):
        write(tmp_path / "data" / "ro_rrt" / f"x-ud-{split}.conllu", CONLLU)
    path = tmp_path / "data" / "ro_rrt" / "x-ud-train.conllu"
    cache = DatasetCache(EvaluateConfig(data_dir=str(tmp_path / "data")))
    builtin = {tag: [(ex.text, ex.label) for ex in cache.task(tag).train] for tag in ("upos", "xpos")}
    assert builtin["upos"][0] == (WORDS_A, ["VERB", "PRON", "PRON", "ADV", "PUNCT"])  # no Dă-mi-l, no _, no x

    upos = examples(tagging(path, format="conllu", tag="upos"))
    assert upos == builtin["upos"]
    assert examples(tagging(path, tag="xpos")) == builtin["xpos"]  # format from the .conllu suffix
    # plain CoNLL columns counted from 1, as in CoNLL-U: FORM 2, UPOS 4; the range and the empty node
    # are skipped there too
    assert examples(tagging(path, format="conll", token_column=2, tag_column=4)) == builtin["upos"]
    copy = write(tmp_path / "plain.txt", CONLLU)
    assert examples(tagging(copy, token_column=2, tag_column=5)) == builtin["xpos"]


def test_conllu_tag_columns_and_misc_keys(tmp_path):
    path = write(tmp_path / "a.conllu", CONLLU)
    assert examples(tagging(path, tag="misc:NER")) == [(WORDS_A, ["O"] * 5),
                                                       (["Ion", "vine", "."], ["B-PER", "O", "O"])]
    assert examples(tagging(path, tag="deprel"))[1][1] == ["nsubj", "root", "punct"]
    assert examples(tagging(path, tag="feats"))[0][1] == ["Mood=Imp", "Case=Dat", "Case=Acc", "Degree=Pos", "_"]
    assert tagging(path, tag="UPOS").tag == "upos"
    missing = write(tmp_path / "m.conllu", CONLLU.replace("\tNER=B-PER", "\t_"))
    with pytest.raises(DataError, match=r"m\.conllu:12: word 1 has no NER=\.\.\. in MISC \(column 10: '_'\)"):
        examples(tagging(missing, tag="misc:NER"))
    with pytest.raises(ValidationError, match="expected upos, xpos, feats, deprel or misc:KEY"):
        tagging(path, tag="lemma")
    with pytest.raises(ValidationError, match="CoNLL-U files need tag: upos, xpos"):
        tagging(path)
    with pytest.raises(ValidationError, match="tag_column: CoNLL-U files are read by column name"):
        tagging(path, tag="upos", tag_column=4)
    with pytest.raises(ValidationError, match="tag: is for CoNLL-U files"):
        tagging(write(tmp_path / "x.conll", "a\tB\n"), tag="upos")


def test_plain_conll_refuses_id_and_key_value_columns_naming_them(tmp_path):
    path = write(tmp_path / "ud.txt", CONLLU)  # a CoNLL-U file read as plain CoNLL with the default columns
    with pytest.raises(DataError, match=r"ud\.txt: column 1 \(the word column\) holds word IDs, not words "
                                        r"\(e\.g\. '1', '2'\); columns count from 1, as in CoNLL-U"):
        examples(tagging(path))
    with pytest.raises(DataError, match=r"ud\.txt: the last column \(the tag column\) holds key=value lists, not "
                                        r"tags \(e\.g\. 'NER=O', 'SpaceAfter=No\|NER=O'\); .*set format: conllu"):
        examples(tagging(path, token_column=2))
    with pytest.raises(DataError, match=r"column 7 \(the tag column\) holds word IDs|column 1 \(the tag column\)"):
        examples(tagging(path, token_column=2, tag_column=1))


def test_columns_count_from_one(tmp_path):
    path = write(tmp_path / "a.conll", "Ion\tNp\tB-PER\nvine\tVm\tO\n\nMaria\tNp\tB-PER\n")
    assert examples(tagging(path))[0] == (["Ion", "vine"], ["B-PER", "O"])  # word in column 1, tag in the last
    assert examples(tagging(path, tag_column=2))[0] == (["Ion", "vine"], ["Np", "Vm"])
    for bad in ({"tag_column": 0}, {"tag_column": -1}, {"token_column": 0}):
        with pytest.raises(ValidationError, match=r"columns count from 1, as in the CoNLL-U specification \(FORM "
                                                  r"is column 2, UPOS column 4\)"):
            tagging(path, **bad)
    with pytest.raises(DataError, match=r"a\.conll:1: expected a word in column 1 and a tag in column 5 \(columns "
                                        r"count from 1\), found 3 column\(s\)"):
        examples(tagging(path, tag_column=5))


# --- settings: precedence and defaults by shape ------------------------------------------------------


def test_settings_precedence_and_where_each_came_from():
    task = CustomTask(name="pos", kind="tagging", files={"train": "a.conll", "test": "b.conll"},
                      finetune={"epochs": 7, "batch_size": 4})
    spec = task_spec(task, [["NOUN", "VERB"]])
    cfg = EvaluateConfig(custom_tasks=[task], finetune={"epochs": 2, "lr": 5e-5, "batch_size": 8},
                         per_task={"pos": {"batch_size": 2}})
    settings, sources = effective_settings(spec, cfg)
    assert (settings.epochs, settings.lr, settings.batch_size) == (7, 5e-5, 2)
    assert sources["epochs"] == "the task's finetune" and sources["lr"] == "evaluate.finetune"
    assert sources["batch_size"] == "evaluate.per_task.pos"
    assert sources["patience"] == "default: UPOS's settings (tagging with 2 tags, at most 40)"
    assert settings.patience == TASKS["upos"].defaults.patience
    # the built-in tasks: their own defaults, then evaluate.finetune, then per_task
    settings, sources = effective_settings(TASKS["sts"], cfg)
    assert (settings.epochs, sources["epochs"], sources["head"]) == (2, "evaluate.finetune", "default")


def test_defaults_follow_the_task_shape(tmp_path):
    files = {"train": "x/a", "test": "x/b"}

    def defaults(kind, labels, **keys):
        spec = task_spec(CustomTask(name="t", kind=kind, files={k: v + (".conll" if kind == "tagging" else ".csv")
                                                                 for k, v in files.items()}, **keys), labels)
        return spec.defaults, spec.defaults_from

    xpos_like = [[f"T{i}" for i in range(120)]]
    assert defaults("tagging", xpos_like) == (TASKS["xpos"].defaults,
                                              "XPOS's settings (tagging with 120 tags, more than 40)")
    assert defaults("tagging", [["NOUN", "VERB", "ADJ"]])[0] == TASKS["upos"].defaults
    assert defaults("tagging", [["O", "B-PER", "I-PER"]])[0] == TASKS["ner"].defaults
    assert defaults("classification", ["a", "b", "a"])[0] == TASKS["sapn"].defaults
    assert defaults("classification", ["1", "2", "3", "4"]) == (TASKS["sar"].defaults,
                                                                "SAR's settings (classification, 4 classes)")
    assert defaults("regression", [0.0, 1.0], text_pair="b")[0] == TASKS["sts"].defaults
    assert defaults("regression", [0.0, 1.0])[0].head == "cross"

    # read from real files: a tagging task with 45 tags starts from XPOS's settings, and the label set of
    # every split counts
    rows = "\n\n".join(f"w{i}\tT{i}" for i in range(45))
    path = write(tmp_path / "many.conll", rows + "\n")
    data = custom_task_data(tagging(path), EvaluateConfig())
    assert len(data.labels) == 45 and data.spec.defaults == TASKS["xpos"].defaults


# --- the command line: help text against behaviour, paths, bad task files ----------------------------


def _help_of(option: str) -> str:
    from compresso.cli import main

    out = CliRunner().invoke(main, ["evaluate", "--help"], terminal_width=400)
    assert out.exit_code == 0
    text = " ".join(out.output.split())
    return text[text.index(option):]


def _mood_files(folder: Path) -> None:
    rows = "".join(f"{i},casa {'mare' if i % 2 else 'mic'} este,{'good' if i % 2 else 'bad'}\n" for i in range(12))
    for split in ("train", "test"):
        write(folder / f"{split}.csv", "id,review,mood\n" + rows)


def test_help_text_says_what_tasks_run_and_it_is_so(tmp_path, monkeypatch):
    from compresso.cli import main
    from tests.test_eval_data import small_release

    tasks_help = _help_of("--tasks LIST")
    assert "Default: every built-in task; with --task-file, only the custom tasks (list built-in tasks here to " \
           "run them too)." in tasks_help
    assert "relative paths in it start from its folder" in _help_of("--task-file YAML")
    assert "A custom task's own finetune: wins over finetune.*, and per_task.NAME.* over both." in \
        _help_of("--set KEY.PATH=VALUE")

    model = tiny_bert(tmp_path / "m", layers=1)
    small_release(tmp_path / "data", with_train=True)
    _mood_files(tmp_path / "sub" / "mood")
    task_file = write(tmp_path / "sub" / "tasks.yaml", "- {name: mood, kind: classification, text: review, "
                                                        "label: mood, files: {train: mood/train.csv, "
                                                        "test: mood/test.csv}, finetune: {epochs: 9, lr: 1e-3}}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths in the task file start from its folder, not from here
    seen = []

    def evaluate_models(models, cfg, report, out_dir, device, seed, console):
        seen.append(cfg)
        return {"errors": []}

    base = ["evaluate", str(model), "--data-dir", str(tmp_path / "data"), "--device", "cpu", "--out", "o"]
    with mock.patch("compresso.evaluation.runner.evaluate_models", evaluate_models):
        for extra in ([], ["--task-file", str(task_file)], ["--task-file", "../sub/tasks.yaml", "--tasks",
                                                             "upos,mood"],
                      ["--task-file", str(task_file), "--set", "finetune.epochs=2", "--set", "finetune.lr=5e-5",
                       "--set", "per_task.mood.lr=2e-5"]):
            out = CliRunner().invoke(main, base + extra)
            assert out.exit_code == 0, out.output
    assert [cfg.tasks for cfg in seen] == [list(ALL_TASKS), ["mood"], ["upos", "mood"], ["mood"]]
    assert not (elsewhere / "o").exists()
    # the precedence the --set help states: the task's own epochs 9 beat finetune.epochs=2, per_task's lr
    # beats both the task's 1e-3 and finetune.lr
    settings, sources = effective_settings(DatasetCache(seen[-1]).task("mood").spec, seen[-1])
    assert (settings.epochs, settings.lr) == (9, 2e-5)
    assert (sources["epochs"], sources["lr"]) == ("the task's finetune", "evaluate.per_task.mood")


def test_task_file_errors_name_the_problem(tmp_path):
    from compresso.cli import main

    model = str(tiny_bert(tmp_path / "m", layers=1))

    def fails(task_file: str, message: str) -> None:
        out = CliRunner().invoke(main, ["evaluate", model, "--task-file", task_file, "--device", "cpu",
                                        "--out", str(tmp_path / "o")])
        assert out.exit_code == 2 and out.exception is None or isinstance(out.exception, SystemExit), out.output
        assert message in " ".join(out.output.split()), out.output

    (tmp_path / "folder").mkdir()
    fails(str(tmp_path / "folder"), f"task file {tmp_path / 'folder'} is a folder; expected a file")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    fails(str(tmp_path / "loop"), "is a symlink loop")
    fails(str(tmp_path / "none.yaml"), "none.yaml does not exist")
    _mood_files(tmp_path / "mood")
    txt = write(tmp_path / "txt.yaml", "- {name: mood, kind: classification, text: review, label: mood, "
                                       "files: {train: mood/train.txt, test: mood/test.csv}}\n")
    fails(str(txt), "cannot tell the format of")
    fails(str(txt), "accepted: csv (.csv, .tsv), json (.json, .jsonl), conllu (.conllu)")
    os.symlink(tmp_path / "dloop", tmp_path / "dloop")
    loop = write(tmp_path / "loop.yaml", "- {name: mood, kind: classification, text: review, label: mood, "
                                         "files: {train: dloop, test: mood/test.csv}, format: csv}\n")
    fails(str(loop), f"custom task mood: train file {tmp_path / 'dloop'} is a symlink loop")
    assert not (tmp_path / "o").exists()


# --- bad rows: regression scores, CSV and JSON -----------------------------------------------------


def _table_task(tmp_path, text: str, suffix=".csv", **keys) -> CustomTask:
    path = write(tmp_path / f"data{suffix}", text)
    kind = keys.pop("kind", "regression")
    return CustomTask(name="sim", kind=kind, files={"train": str(path), "test": str(path)}, text="a",
                      label="score", **keys)


@pytest.mark.parametrize("value, message", [
    ("inf", "is not a finite number"), ("nan", "is not a finite number"), ("-Infinity", "is not a finite number"),
    ("1e300", r"is beyond ±1e\+12"), ("abc", "is not a number"), ("", "is not a number")])
def test_regression_scores_must_be_finite_and_plausible(tmp_path, value, message):
    task = _table_task(tmp_path, f"a,score\nun text,1.5\nalt text,{value}\n")
    with pytest.raises(DataError, match=rf"data\.csv:3: column 'score' = '{re.escape(value)}' {message}"):
        read_split(task, "train")


def test_regression_scores_outside_the_declared_range_and_json_rows(tmp_path):
    task = _table_task(tmp_path, "a,score\nun text,1.5\nalt text,7\n", value_range=(0, 5))
    with pytest.raises(DataError, match=r"data\.csv:3: column 'score' = '7' is outside value_range \[0, 5\]"):
        read_split(task, "train")
    task = _table_task(tmp_path, '{"a": "x", "score": 1}\n\n{"a": "y", "score": 1e400}\n', ".jsonl")
    with pytest.raises(DataError, match=r"data\.jsonl:3: column 'score' = inf is not a finite number"):
        read_split(task, "train")
    task = _table_task(tmp_path, '[{"a": "x", "score": 1},\n {"a": "y", "score": true}]', ".json")
    with pytest.raises(DataError, match=r"data\.json:2: column 'score' = True is not a number"):
        read_split(task, "train")
    task = _table_task(tmp_path, '{"a": "x", "score": 1}\n{"a": "y" "score": 2}\n', ".jsonl")
    with pytest.raises(DataError, match=r"data\.jsonl:2: invalid JSON at column 11: Expecting ',' delimiter"):
        read_split(task, "train")
    with pytest.raises(ValidationError, match=r"value_range: scores beyond ±1e\+12"):
        _table_task(tmp_path, "a,score\n", value_range=(0, 1e300))


def test_malformed_csv_names_line_row_and_column(tmp_path):
    def fails(text: str, message: str, **keys):
        with pytest.raises(DataError, match=message):
            read_split(_table_task(tmp_path, text, kind="classification", **keys), "train")

    fails("a,score\nx,good\ny,bad,extra\n", r"data\.csv:3: row 2 has 3 field\(s\), the header 2 \(a, score\)")
    fails('a,score\nx,good\n"y,bad\nz,good\n', r"data\.csv:\d+: malformed CSV \(row 2\): unexpected end of data")
    fails("a,score\nx,good\n ,bad\n", r"data\.csv:3: column 'a' is empty or not text")
    fails("a,score\nx,good\ny,\n", r"data\.csv:3: column 'score' is empty or not a class name")
    fails("a,a,score\nx,y,good\n", r"data\.csv:1: the header names column\(s\) 'a' twice")
    fails("a;score\nx;good\n", r"has no column 'a', 'score' \(columns: a;score\); is the delimiter right\?")
    # a quoted field spanning lines: the next row's line number is still right
    fails('a,score\n"x\nstill x",good\ny,\n', r"data\.csv:4: column 'score' is empty")


def test_validate_writes_nothing_for_a_recipe_with_a_custom_csv_task(tmp_path):
    """No cache under the user's home (the csv/json readers write nothing), no output folder."""
    from tests.tiny import STRATEGIES_SOURCE, install_distribution, run_cli

    site = install_distribution(tmp_path / "site", "compresso-test-strategies",
                                {"engine_test_strategies": STRATEGIES_SOURCE},
                                {"keep_layers": "engine_test_strategies:KeepLayers"})
    model = tiny_bert(tmp_path / "m", layers=2)
    _mood_files(tmp_path / "mood")
    recipe = {"name": "v", "output_dir": str(tmp_path / "run"), "device": "cpu",
              "teachers": [{"name": "t", "model": str(model)}], "student": {"model": "t"},
              "stages": [{"strategy": "keep_layers", "params": {"layers": 1}}],
              "evaluate": {"custom_tasks": [{"name": "mood", "kind": "classification", "text": "review",
                                             "label": "mood", "files": {"train": str(tmp_path / "mood/train.csv"),
                                                                        "test": str(tmp_path / "mood/test.csv")}}]}}
    write(tmp_path / "r.yaml", json.dumps(recipe))
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_"))}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    out = subprocess.run([sys.executable, "-m", "compresso.cli", "validate", str(tmp_path / "r.yaml")], cwd=cwd,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "valid" in out.stdout
    written = [str(p.relative_to(tmp_path)) for p in (home, cwd) for p in p.rglob("*")]
    assert written == [] and not (tmp_path / "run").exists()
    # and a bad row stops validate with the file and line
    write(tmp_path / "mood" / "test.csv", "id,review,mood\n1,casa,\n")
    out = run_cli(["validate", str(tmp_path / "r.yaml")], cwd=cwd, extra_path=[site, REPO], env={"HOME": str(home)})
    assert out.returncode == 2 and "test.csv:2: column 'mood' is empty" in " ".join(out.stderr.split())


# --- the report: scores plot, columns read, settings sources, progress lines ---------------------------


def scores_results(n_tasks: int, n_models: int) -> dict:
    """results.json-shaped scores for ``n_tasks`` tasks with long custom titles and ``n_models`` models."""
    titles = ["UPOS (UD Romanian-SiMoNERo)", "XPOS (UD Romanian-SiMoNERo)", "NER", "Sentiment of product reviews",
              "STS", "Dialect (Moldavian vs Romanian)", "UPOS (UD Romanian-Nonstandard)", "DI",
              "Relatedness of sentence pairs"]
    heads = ["macro_f1", "macro_f1", "f1_macro", "accuracy", "pearson", "macro_f1", "macro_f1", "macro_f1", "pearson"]
    tasks = {f"t{i}": {"title": titles[i % 9] + (f" {i}" if i >= 9 else ""), "headline": heads[i % 9]}
             for i in range(n_tasks)}
    names = ["bert-cased", "robert-uncased", "distil-6L", "distil-4L-int8", "pruned"][:n_models]
    models = [{"name": name, "role": "teacher" if i == 0 else "student"} for i, name in enumerate(names)]
    scores = {m["name"]: {t: {"metrics": {tasks[t]["headline"]: {"mean": 97.0 - 6 * j - 3 * i, "std": 0.8}}}
                          for i, t in enumerate(tasks)} for j, m in enumerate(models)}
    return {"tasks": tasks, "models": models, "scores": scores, "seeds": [1, 2, 3]}


@pytest.mark.parametrize("n_tasks, n_models", [(1, 1), (2, 2), (9, 3), (9, 5), (27, 4)])
def test_scores_plot_is_readable(n_tasks, n_models, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compresso.evaluation.report import plot_scores, scores_figure

    results = scores_results(n_tasks, n_models)
    fig = scores_figure(results)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        legend = ax.get_legend().get_window_extent(renderer)
        bars = [p.get_window_extent(renderer) for p in ax.patches]
        assert len(bars) == n_tasks * n_models and not any(legend.overlaps(b) for b in bars)
        labels = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
        assert all(not a.overlaps(b) for i, a in enumerate(labels) for b in labels[i + 1:])
        assert fig.get_figwidth() >= min(2.0 + n_tasks * (0.5 + 0.3 * n_models), 30.0)  # grows with tasks, models
        shown = [t.get_text() for t in ax.get_xticklabels()]
        assert all(max(len(line) for line in s.split("\n")) <= 22 for s in shown)  # long titles wrapped
    finally:
        plt.close(fig)
    assert plot_scores(results, tmp_path / "scores.png", 80) and (tmp_path / "scores.png").stat().st_size > 0


def test_plain_progress_lines_when_output_is_not_a_terminal(tmp_path):
    import compresso

    model = tiny_bert(tmp_path / "m", layers=1)
    _mood_files(tmp_path / "mood")
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False, log_path=False)
    task = {"name": "mood", "kind": "classification", "text": "review", "label": "mood",
            "files": {"train": str(tmp_path / "mood/train.csv"), "test": str(tmp_path / "mood/test.csv")}}
    results = compresso.evaluate([f"tiny={model}"], out_dir=tmp_path / "e", device="cpu", jobs=1, seeds=1,
                                 settings={"custom_tasks": [task], "efficiency": False,
                                           "finetune": {"epochs": 2, "patience": 5, "max_length": 16}},
                                 console=console)
    assert results["errors"] == []
    text = out.getvalue()
    assert "job 1/1 started: mood · tiny · seed 42" in text
    assert re.search(r"mood · tiny · seed 42: epoch 1/2, validation \d+\.\d\d", text)
    assert re.search(r"mood · tiny · seed 42: epoch 2/2, validation \d+\.\d\d", text)
    assert "\x1b[" not in text  # plain lines, no terminal control codes


# --- the worked examples of docs/evaluation.md ------------------------------------------------------


def _doc_section() -> str:
    text = (REPO / "docs" / "evaluation.md").read_text(encoding="utf-8")
    start = text.index("\n## Custom tasks: your own files\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _doc_files(section: str) -> tuple[dict[str, str], str]:
    """The files the example shows (a fenced block right after a line naming them in backticks and
    ending with a colon, or a parenthesis closing in one) and its `compresso evaluate` command."""
    files: dict[str, str] = {}
    blocks = re.finditer(r"((?:[^\n]+\n)+)\n```(\w+)\n(.*?)\n```", section, re.S)
    command = None
    for match in blocks:
        lead, lang, body = match.group(1).strip().split("\n"), match.group(2), match.group(3)
        if lang == "bash" and body.startswith("compresso evaluate"):
            command = body
            continue
        named = re.findall(r"`([^`\s]+\.[a-z]+)`", lead[0]) if lead[0].startswith("`") else []
        for name in named:
            files[name] = body + "\n"
    return files, command


def test_the_documented_example_runs(tmp_path, monkeypatch):
    from compresso.cli import main

    files, command = _doc_files(_doc_section())
    assert set(files) == {"my_tasks.yaml", "ud/train.conllu", "ud/test.conllu", "reviews/train.csv",
                          "reviews/test.csv"}
    assert command is not None and "\t" in files["ud/train.conllu"]
    for name, body in files.items():
        write(tmp_path / "example" / name, body)
    model = tiny_bert(tmp_path / "model", layers=1)
    args = shlex.split(command)[1:]
    assert args[:2] == ["evaluate", "../shared/teachers/ro-bert-small-cased"]
    args[1] = str(model)
    monkeypatch.chdir(tmp_path)  # the task file sits in example/; its relative paths start from there
    args[args.index("--task-file") + 1] = "example/my_tasks.yaml"
    quick = ["--device", "cpu", "--seeds", "1", "--jobs", "1", "--set", "efficiency=false",
             "--set", "finetune.epochs=1", "--set", "finetune.max_length=32"]
    out = CliRunner().invoke(main, args + quick)
    assert out.exit_code == 0, out.output
    results = json.loads((tmp_path / "runs" / "mine" / "results.json").read_text())
    pos, mood = results["tasks"]["pos"], results["tasks"]["mood"]
    assert list(results["tasks"]) == ["pos", "mood"] and results["errors"] == []
    assert pos["columns_read"] == "CoNLL-U FORM → UPOS" and mood["columns_read"] == "text 'review' → label 'mood'"
    # the task's own finetune (epochs 5) wins over --set finetune.epochs=1; mood takes the global one
    assert pos["settings"]["epochs"] == 5 and pos["settings_from"]["epochs"] == "the task's finetune"
    assert mood["settings"]["epochs"] == 1 and mood["settings_from"]["epochs"] == "evaluate.finetune"
    assert pos["settings_from"]["lr"].startswith("default: UPOS's settings (tagging with")
    assert mood["settings_from"]["lr"] == "default: SAPN's settings (classification, 2 classes)"
    report = (tmp_path / "runs" / "mine" / "report.md").read_text()
    assert "; read: CoNLL-U FORM → UPOS" in report and "; read: text 'review' → label 'mood'" in report
    assert "- UPOS (my treebank): defaults: UPOS's settings" in report and "epochs 5 from the task's finetune" in report
    assert (tmp_path / "runs" / "mine" / "scores.png").is_file()
    # the multiword token's words, not its surface form: 5 + 4 + 4 words in three sentences
    data = DatasetCache(EvaluateConfig.model_validate(
        {"custom_tasks": load_task_files([tmp_path / "example" / "my_tasks.yaml"])})).task("pos")
    words = [w for split in (data.train, data.validation) for ex in split for w in ex.text]
    assert len(words) == 13 and "Dă-mi-l" not in words and "_" not in data.labels


def test_check_data_refuses_a_custom_task_cleanly(tmp_path):
    """check_data (the pre-run check) turns a data error into EvaluationError, naming the file."""
    path = write(tmp_path / "ud.txt", CONLLU)
    cfg = EvaluateConfig(custom_tasks=[tagging(path).model_dump()])
    with pytest.raises(EvaluationError, match=r"ud\.txt: column 1 \(the word column\) holds word IDs"):
        check_data(cfg)


def test_the_documented_shape_defaults_are_the_code_s():
    """The settings table of the section quotes TASKS, MANY_TAGS and MAX_SCORE; it must not drift."""
    from compresso.evaluation.config import MAX_SCORE
    from compresso.evaluation.tasks import MANY_TAGS

    section = _doc_section()
    rows = {name: quoted for _, name, quoted in
            re.findall(r"^\| ([^|]+?) \| (NER|XPOS|UPOS|SAPN|SAR) \(([^)]*)\) \|$", section, re.M)}
    assert set(rows) == {"NER", "XPOS", "UPOS", "SAPN", "SAR"}
    for name, quoted in rows.items():
        settings = TASKS[name.lower()].defaults
        lr, epochs = re.fullmatch(r"lr ([0-9.e-]+), (\d+) epochs.*", quoted).groups()
        assert (float(lr), int(epochs)) == (settings.lr, settings.epochs), (name, quoted)
    assert "max length 512" in rows["NER"] and TASKS["ner"].defaults.max_length == 512
    assert f"tagging with more than {MANY_TAGS} tags" in section and MAX_SCORE == 1e12 and "±10¹²" in section


@pytest.mark.shared
def test_the_real_treebank_reads_identically_as_a_custom_task(shared_dir):
    """UD Romanian RRT through the built-in XPOS task and through a custom format: conllu task: the
    same words and tags, and the custom task, with its hundreds of XPOS tags, starts from XPOS's
    settings."""
    rrt = shared_dir / "data" / "ro_rrt"
    files = {"train": str(rrt / "ro_rrt-ud-dev.conllu"), "test": str(rrt / "ro_rrt-ud-test.conllu")}
    cfg = EvaluateConfig(data_dir=str(shared_dir / "data"), custom_tasks=[
        {"name": "my-xpos", "kind": "tagging", "files": files, "tag": "xpos"},
        {"name": "my-upos", "kind": "tagging", "files": files, "tag": "upos"}])
    cache = DatasetCache(cfg)
    for builtin, custom in (("xpos", "my-xpos"), ("upos", "my-upos")):
        a, b = cache.task(builtin), cache.task(custom)
        for split in ("train", "validation", "test"):
            pairs = [[(ex.text, ex.label) for ex in getattr(data, split)] for data in (a, b)]
            assert pairs[0] == pairs[1]
        assert a.labels == b.labels
    xpos = cache.task("my-xpos")
    assert len(xpos.labels) > 40 and xpos.spec.defaults == TASKS["xpos"].defaults
    assert cache.task("my-upos").spec.defaults == TASKS["upos"].defaults
