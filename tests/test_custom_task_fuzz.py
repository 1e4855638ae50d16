"""A seeded fuzzer for custom task files: a few hundred mutations of a task file (its YAML
structure and its text) and of the data files it names (CoNLL-U, plain CoNLL, CSV, JSON lines),
each checked the way `compresso evaluate --task-file` and `compresso validate` check them before
any work (task file, settings, every task's data). Every outcome must be "valid" or a clean
bad-input error naming what is wrong; never a traceback; what a valid outcome reads is sane (no
empty words or tags, finite scores); and nothing is written anywhere (no cache under the home
folder, nothing beside the data)."""

import copy
import math
import random
from pathlib import Path

import yaml
from pydantic import ValidationError

from compresso.evaluation import EvaluationError
from compresso.evaluation.config import EvaluateConfig
from compresso.evaluation.custom_tasks import load_task_files
from compresso.evaluation.data import DataError
from compresso.evaluation.runner import check_data
from compresso.evaluation.tasks import DatasetCache
from tests.test_custom_tasks import CONLLU
from tests.test_recipe_fuzz import mutate_data, mutate_text

MUTATIONS = 400

TASKS = {"custom_tasks": [
    {"name": "pos", "kind": "tagging", "files": {"train": "ud/train.conllu", "test": "ud/test.conllu"},
     "tag": "upos", "finetune": {"epochs": 3}},
    {"name": "ents", "kind": "tagging", "files": {"train": "ner/train.conll", "test": "ner/train.conll"},
     "token_column": 1, "tag_column": 3},
    {"name": "mood", "kind": "classification", "files": {"train": "mood/train.csv", "test": "mood/test.csv"},
     "text": "review", "label": "mood", "labels": ["bad", "good"]},
    {"name": "sim", "kind": "regression", "files": {"train": "sim/train.jsonl", "test": "sim/train.jsonl"},
     "text": "a", "text_pair": "b", "label": "score", "value_range": [0, 5]},
]}
DATA = {
    "ud/train.conllu": CONLLU + CONLLU.lstrip("\ufeff"),
    "ud/test.conllu": CONLLU,
    "ner/train.conll": "-DOCSTART- -X- O\n\nIon NP B-PER\nvine VB O\n\nMaria NP B-PER\npleacă VB O\n",
    "mood/train.csv": "id,review,mood\n1,\"casa mare, frumoasă\",good\n2,casa mică,bad\n3,ziua bună,good\n",
    "mood/test.csv": "id,review,mood\n1,casa mare,good\n2,noaptea rea,bad\n",
    "sim/train.jsonl": '{"a": "casa mare", "b": "casa mică", "score": 3.5}\n'
                       '{"a": "ziua", "b": "noaptea", "score": 1}\n{"a": "om", "b": "oameni", "score": 4.75}\n',
}
DATA_NOISE = ["inf", "nan", "1e300", "-1", "99", "", " ", "\t", '"', "'", ",", ";", "=", "|", "_", "\x00", "\ufeff",
              "\r", "1-2", "1.1", "3-1\tDă-mi\t_\t_\t_\t_\t_\t_\t_\t_", "SpaceAfter=No", "B-", "O", "{", "}", "[",
              "]", "null", "true", '"score": "x"', "\\", "#", "-DOCSTART-", "x" * 300]
HOSTILE_PATHS = ["", ".", "/", "ud", "../ud/train.conllu", "ud/train.txt", "ud/train.conllu/", "nope.csv",
                 "loop", "~", "a\x00b", "x" * 5000, "mood/train.json", "sim/train.csv"]


def mutate_file(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 3)):
        if not lines:
            break
        op, i = rng.random(), rng.randrange(len(lines))
        if op < 0.2:
            del lines[i]
        elif op < 0.35:
            lines.insert(i, lines[i])
        elif op < 0.75:  # a field or a character replaced by noise
            sep = "\t" if "\t" in lines[i] else ("," if "," in lines[i] else " ")
            fields = lines[i].split(sep)
            fields[rng.randrange(len(fields))] = rng.choice(DATA_NOISE)
            lines[i] = sep.join(fields)
        elif op < 0.9:
            j = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:j] + rng.choice(DATA_NOISE) + lines[i][j:]
        else:
            lines = lines[:i]
    return "\n".join(lines)


def check(task_file: Path) -> str:
    """'valid' or 'bad input'; anything else propagates and fails the test."""
    try:
        tasks = load_task_files([task_file])
        cfg = EvaluateConfig.model_validate({"custom_tasks": tasks})
        check_data(cfg)
    except (DataError, ValidationError, EvaluationError) as exc:
        assert str(exc).strip(), "an error without a message"
        return "bad input"
    cache = DatasetCache(cfg)
    for name in cfg.tasks:
        data = cache.task(name)
        for ex in data.train + data.validation + data.test:
            if data.spec.kind == "tagging":
                assert ex.text and len(ex.text) == len(ex.label)
                assert all(w.strip() for w in ex.text) and all(t.strip() for t in ex.label)
                assert not any(t == "_" for t in ex.label) or name != "pos"
            elif data.spec.kind == "regression":
                assert math.isfinite(ex.label) and 0 <= ex.label <= 5
            else:
                assert ex.label in ("bad", "good") and ex.text.strip()
    return "valid"


def snapshot(root: Path) -> list:
    return sorted((str(p.relative_to(root)), p.is_dir(), p.stat().st_size if p.is_file() else 0)
                  for p in root.rglob("*") if not p.is_symlink())


def test_fuzzed_task_files_and_data_are_valid_or_clean_errors(tmp_path, monkeypatch):
    home, cwd, root = tmp_path / "home", tmp_path / "cwd", tmp_path / "tasks"
    for d in (home, cwd, root):
        d.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)  # paths in the task file start from its folder, not from here
    for name, text in DATA.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    (root / "loop").symlink_to(root / "loop")
    task_file = root / "tasks.yaml"
    base_text = yaml.safe_dump(TASKS, sort_keys=False, allow_unicode=True)
    task_file.write_text(base_text)
    assert check(task_file) == "valid"  # the unmutated files are fine
    before = snapshot(root)

    rng = random.Random(27)
    outcomes = {"valid": 0, "bad input": 0}
    for n in range(MUTATIONS):
        op = rng.random()
        data_name = None
        if op < 0.25:
            text = yaml.safe_dump(mutate_data(TASKS, rng), sort_keys=False, allow_unicode=True)
        elif op < 0.4:
            text = mutate_text(base_text, rng)
        elif op < 0.5:  # a file path replaced by a hostile one
            tasks = copy.deepcopy(TASKS)
            task = rng.choice(tasks["custom_tasks"])
            task["files"][rng.choice(["train", "test"])] = rng.choice(HOSTILE_PATHS)
            text = yaml.safe_dump(tasks, sort_keys=False, allow_unicode=True)
        else:
            text = base_text
            data_name = rng.choice(sorted(DATA))
            (root / data_name).write_bytes(mutate_file(DATA[data_name], rng).encode("utf-8", "surrogatepass"))
        task_file.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            outcomes[check(task_file)] += 1
        except Exception as exc:  # the point of the test: show the mutation that caused a traceback
            shown = (root / data_name).read_bytes() if data_name else text
            raise AssertionError(f"mutation {n} raised {type(exc).__name__}: {exc}\n--- "
                                 f"{data_name or 'task file'} ---\n{shown!r}") from exc
        finally:
            if data_name:
                (root / data_name).write_text(DATA[data_name], encoding="utf-8")
    task_file.write_text(base_text)
    # nothing written: not under the home folder, not in the working directory, not beside the data
    assert not any(home.iterdir()) and not any(cwd.iterdir())
    assert snapshot(root) == before
    assert outcomes["bad input"] > MUTATIONS // 4 and outcomes["valid"] > MUTATIONS // 10, outcomes
