"""Tasks on the user's own files: classification, sentence-pair regression, token classification.

Declared in a recipe's ``evaluate.custom_tasks`` (or a YAML file given to ``compresso evaluate
--task-file``), read with Python's ``csv``/``json`` modules or compresso's CoNLL-U reader (the one
the built-in tasks use), and scored with the same fine-tuning, metrics and loyalty as the built-in
tasks::

    evaluate:
      custom_tasks:
        - name: reviews
          kind: classification              # classification | regression | tagging
          files: {train: data/reviews/train.csv, test: data/reviews/test.csv}
          text: review                      # column(s); text_pair: for sentence pairs
          label: stars
        - name: sick
          kind: regression
          files: {train: sick/train.jsonl, validation: sick/dev.jsonl, test: sick/test.jsonl}
          text: sentence_A
          text_pair: sentence_B
          label: relatedness
          value_range: [1, 5]
        - name: pos
          kind: tagging
          files: {train: ud/train.conllu, test: ud/test.conllu}
          tag: upos                         # upos | xpos | feats | deprel | misc:KEY
        - name: ner-en
          kind: tagging
          format: conll                     # one token per line, columns counted from 1
          files: {train: conll2003/train.txt, validation: conll2003/valid.txt, test: conll2003/test.txt}
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections import Counter
from pathlib import Path

import yaml

from compresso.evaluation.config import CONLLU_TAGS, MAX_SCORE, CustomTask
from compresso.evaluation.data import (
    DataError,
    Example,
    conll_blocks,
    conllu_words,
    file_problem,
    is_multiword_or_empty_node,
    iter_json_array,
    read_text,
    text_lines,
)


def load_task_files(paths) -> list[dict]:
    """Custom task declarations from YAML files (a list, or a mapping with ``custom_tasks``).
    Relative paths under ``files:`` are made to start from the folder of the file that names them."""
    out: list[dict] = []
    for path in paths:
        problem = file_problem(Path(path))
        if problem:
            raise DataError(f"task file {path} {problem}")
        try:
            data = yaml.safe_load(read_text(Path(path)))
        except yaml.YAMLError as exc:
            raise DataError(f"{path}: cannot read custom tasks: {exc}") from None
        if isinstance(data, dict) and "custom_tasks" in data:
            data = data["custom_tasks"]
        elif isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a list of custom tasks (or a mapping with custom_tasks:)")
        folder = Path(path).absolute().parent
        for task in data:
            if isinstance(task, dict) and isinstance(task.get("files"), dict):
                task["files"] = {split: _from_folder(folder, f) for split, f in task["files"].items()}
        out += data
    return out


def _from_folder(folder: Path, value):
    if not isinstance(value, str) or not value or "\x00" in value:
        return value  # not a path: the task's validation says what is wrong
    path = Path(value).expanduser()
    return value if path.is_absolute() else str(folder / path)


# --- reading ------------------------------------------------------------------------------------

_KEY_VALUES = re.compile(r"[A-Za-z][\w.:-]*=[^|=]*(\|[A-Za-z][\w.:-]*=[^|=]*)*")


def read_conll(path: Path, token_column: int = 1, tag_column: int | None = None
               ) -> list[tuple[list[str], list[str]]]:
    """Plain CoNLL token classification: one token per line, whitespace- or tab-separated columns
    counted from 1 (``tag_column`` None: the last), sentences separated by blank lines; ``#``
    comments and ``-DOCSTART-`` lines are skipped, and so are CoNLL-U multiword-token ranges and
    empty nodes, so that a CoNLL-U file read this way gives the words ``format: conllu`` gives."""
    # -DOCSTART- lines (CoNLL-2003) separate documents: read them as sentence boundaries
    lines = ((n, "" if line.startswith("-DOCSTART-") else line) for n, line in text_lines(path))
    what = f"column {tag_column}" if tag_column else "the last column"
    sentences: list[tuple[list[str], list[str]]] = []
    for _, rows in conll_blocks(lines):
        words: list[str] = []
        tags: list[str] = []
        for lineno, line in rows:
            cols = line.split("\t") if "\t" in line else line.split()
            if is_multiword_or_empty_node(cols):
                continue
            if len(cols) < max(token_column, tag_column or 2):
                raise DataError(f"{path}:{lineno}: expected a word in column {token_column} and a tag in {what} "
                                f"(columns count from 1), found {len(cols)} column(s): {line[:80]!r}")
            word, tag = cols[token_column - 1], cols[-1] if tag_column is None else cols[tag_column - 1]
            if not word.strip() or not tag.strip():
                raise DataError(f"{path}:{lineno}: empty {'word' if not word.strip() else 'tag'} (word in column "
                                f"{token_column}, tag in {what}; columns count from 1): {line[:80]!r}")
            words.append(word)
            tags.append(tag)
        if words:  # a block of only multiword-token lines holds no word
            sentences.append((words, tags))
    if not sentences:
        raise DataError(f"{path}: no sentences found (expected one word per line, blank lines between sentences)")
    _refuse_ids_and_key_values(path, sentences, token_column, tag_column)
    return sentences


def _looks_like_ids(column: list[list[str]]) -> bool:
    """Every sentence numbers its words 1, 2, 3, ... in this column: CoNLL-U's ID column."""
    return all(values == [str(i) for i in range(1, len(values) + 1)] for values in column if values)


def _refuse_ids_and_key_values(path: Path, sentences, token_column: int, tag_column: int | None) -> None:
    """A plain CoNLL task pointed at a CoNLL-U file with the default columns reads IDs as words and
    MISC (``SpaceAfter=No``) as tags; refuse such a column, naming it and two of its values."""
    hint = ("columns count from 1, as in CoNLL-U (FORM is column 2, UPOS 4, XPOS 5); for a CoNLL-U file set "
            "format: conllu and tag: upos, xpos, feats, deprel or misc:KEY")
    for name, number, index in (("word", token_column, 0), ("tag", tag_column, 1)):
        column = [sentence[index] for sentence in sentences]
        values = [v for seq in column for v in seq]
        examples = list(dict.fromkeys(values))[:2]
        where = f"column {number}" if number else "the last column"
        if _looks_like_ids(column) and any(len(seq) > 1 for seq in column):
            raise DataError(f"{path}: {where} (the {name} column) holds word IDs, not {name}s "
                            f"(e.g. {', '.join(map(repr, examples))}); {hint}")
        keyed = [v for v in values if v != "_"]
        if keyed and sum(_KEY_VALUES.fullmatch(v) is not None for v in keyed) * 2 > len(keyed):
            examples = list(dict.fromkeys(v for v in keyed if _KEY_VALUES.fullmatch(v)))[:2]
            raise DataError(f"{path}: {where} (the {name} column) holds key=value lists, not {name}s "
                            f"(e.g. {', '.join(map(repr, examples))}); {hint}")


def conllu_tag(cols: list[str], tag: str, path: Path, lineno: int) -> str:
    """The value of ``tag`` (upos, xpos, feats, deprel or misc:KEY) on one CoNLL-U word line."""
    if tag in CONLLU_TAGS:
        column = {"upos": 3, "xpos": 4, "feats": 5, "deprel": 7}[tag]
        value = cols[column]
        if not value or (tag == "upos" and value == "_"):
            raise DataError(f"{path}:{lineno}: word {cols[0]} has an empty {tag.upper()} (column {column + 1})")
        return value
    key = tag.split(":", 1)[1]
    for item in cols[9].split("|"):
        name, _, value = item.partition("=")
        if name == key and value:
            return value
    raise DataError(f"{path}:{lineno}: word {cols[0]} has no {key}=... in MISC (column 10: {cols[9][:80]!r}); "
                    f"tag: misc:{key} needs it on every word")


def read_conllu_tags(path: Path, tag: str) -> list[tuple[list[str], list[str]]]:
    """Words (FORM) and their ``tag`` from a CoNLL-U file, through the built-in tasks' reader."""
    sentences = [([cols[1] for _, cols in words], [conllu_tag(cols, tag, path, lineno) for lineno, cols in words])
                 for _, words in conllu_words(path)]
    if not sentences:
        raise DataError(f"{path}: no sentences found (expected CoNLL-U)")
    return sentences


def _csv_rows(task: CustomTask, path: Path) -> list[tuple[int, dict]]:
    """``(line, {column: value})`` of a CSV/TSV file with a header row; blank lines are skipped."""
    delimiter = task.delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, dict]] = []
    header: list[str] | None = None
    start = 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1  # a quoted field may span lines: a row starts after the last
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                dup = sorted({c for c in header if header.count(c) > 1})
                if dup:
                    raise DataError(f"{path}:{line}: the header names column(s) {', '.join(map(repr, dup))} twice")
                continue
            if len(cells) != len(header):
                raise DataError(f"{path}:{line}: row {len(rows) + 1} has {len(cells)} field(s), the header "
                                f"{len(header)} ({', '.join(header)}); is the delimiter {delimiter!r} right, and "
                                f"are fields holding it quoted?")
            rows.append((line, dict(zip(header, cells))))
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV (row {len(rows) + 1}): {exc}") from None
    if header is None:
        raise DataError(f"{path}: empty file (expected a header row naming the columns)")
    return rows


def _json_rows(path: Path) -> list[tuple[int, dict]]:
    """``(line, record)`` of a JSON array of objects or of JSON lines (one object per line)."""
    text = read_text(path)
    if text.lstrip().startswith("["):
        rows = [(line, rec) for _, line, rec in iter_json_array(path)]
    else:
        rows = []
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON at column {exc.colno}: {exc.msg} (expected one "
                                f"object per line, or one JSON array)") from None
            except RecursionError:
                raise DataError(f"{path}:{lineno}: invalid JSON: nested too deeply") from None
    for line, rec in rows:
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{line}: expected a JSON object (column name: value), found "
                            f"{type(rec).__name__}")
    return rows


def _table_rows(task: CustomTask, path: Path, fmt: str) -> list[tuple[int, dict]]:
    rows = _csv_rows(task, path) if fmt == "csv" else _json_rows(path)
    columns = [task.text, task.label] + ([task.text_pair] if task.text_pair else [])
    names = list(dict.fromkeys(k for _, row in rows for k in row))
    missing = [c for c in columns if c not in names]
    if missing:
        hint = ""
        if fmt == "csv" and len(names) == 1 and any(d in names[0] for d in ";\t|,"):
            hint = "; is the delimiter right? (set delimiter:)"
        raise DataError(f"custom task {task.name}: {path} has no column {', '.join(map(repr, missing))} "
                        f"(columns: {', '.join(map(str, names)) or 'none'}){hint}")
    return rows


def score_value(task: CustomTask, value, where: str) -> float:
    """A regression score: a finite number within ``value_range`` (when declared) and ±MAX_SCORE."""
    bad = f"custom task {task.name}: {where}: column {task.label!r} = {value!r}"
    if isinstance(value, bool):
        raise DataError(f"{bad} is not a number")
    try:
        score = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{bad} is not a number") from None
    if not math.isfinite(score):
        raise DataError(f"{bad} is not a finite number")
    if abs(score) > MAX_SCORE:
        raise DataError(f"{bad} is beyond ±{MAX_SCORE:g}: a unit or parsing error? (scores are trained in float32)")
    if task.value_range is not None and not task.value_range[0] <= score <= task.value_range[1]:
        raise DataError(f"{bad} is outside value_range [{task.value_range[0]:g}, {task.value_range[1]:g}]")
    return score


def read_split(task: CustomTask, split: str, base: Path | None = None) -> list:
    """The examples of one split. Relative paths start from ``base`` (default: the current directory)."""
    path = Path(task.files[split]).expanduser()
    path = path if path.is_absolute() or base is None else base / path
    problem = file_problem(path)
    if problem:
        relative = "" if Path(task.files[split]).expanduser().is_absolute() else \
            f" (relative paths start from the current directory, {Path.cwd()})"
        raise DataError(f"custom task {task.name}: {split} file {path} {problem}{relative}")
    fmt = task.file_format(str(path))
    if fmt == "conllu":
        sentences = read_conllu_tags(path, task.tag)
    elif fmt == "conll":
        sentences = read_conll(path, task.token_column, task.tag_column)
    if fmt in ("conll", "conllu"):
        return [Example(words, tags, id=f"{split}-{i}") for i, (words, tags) in enumerate(sentences)]
    out = []
    for i, (line, row) in enumerate(_table_rows(task, path, fmt)):
        text, label, pair = row.get(task.text), row.get(task.label), row.get(task.text_pair) if task.text_pair else None
        where = f"{path}:{line}"
        for column, value in ((task.text, text), (task.text_pair, pair)):
            if column is not None and (not isinstance(value, str) or not value.strip()):
                raise DataError(f"custom task {task.name}: {where}: column {column!r} is empty or not text "
                                f"({value!r})")
        if task.kind == "regression":
            label = score_value(task, label, where)
        else:
            if label is None or isinstance(label, (dict, list)) or str(label).strip() == "":
                raise DataError(f"custom task {task.name}: {where}: column {task.label!r} is empty or not a "
                                f"class name ({label!r})")
            label = str(label)
        out.append(Example(text, label, pair, id=f"{split}-{i}"))
    if not out:
        raise DataError(f"custom task {task.name}: {path} holds no rows")
    return out


# --- the task -----------------------------------------------------------------------------------


def task_spec(task: CustomTask, train_labels: list | None = None, n_labels: int | None = None):
    """The ``TaskSpec`` of a custom task: the regression range, the entity scoring default and the
    fine-tuning defaults (chosen by the task's shape: ``tasks.shape_defaults``) come from the
    training labels; ``n_labels``: the size of the label set (default: the classes in training)."""
    from compresso.evaluation.tasks import TaskSpec, shape_defaults

    value_range = None
    entity = False
    if task.kind == "regression":
        value_range = task.value_range
        if value_range is None and train_labels:
            value_range = (float(min(train_labels)), float(max(train_labels)))
        headline, metrics = "pearson", ("pearson", "spearman")
    elif task.kind == "tagging":
        tags = {t for seq in (train_labels or []) for t in seq}
        entity = task.entity_scoring if task.entity_scoring is not None else \
            bool(tags) and all(t == "O" or t.startswith(("B-", "I-")) for t in tags)
        headline, metrics = ("f1_macro", ("f1_macro", "f1_micro")) if entity else ("macro_f1", ("macro_f1", "accuracy"))
        n_labels = n_labels or len(tags)
    else:
        headline, metrics = "macro_f1", ("macro_f1", "accuracy")
        n_labels = n_labels or len(set(train_labels or []))
    defaults, reason = shape_defaults(task.kind, n_labels, entity, task.text_pair is not None)
    dataset = Path(task.files["train"]).parent.name or Path(task.files["train"]).name
    return TaskSpec(task.name, task.title or task.name, task.kind, f"custom:{dataset}", headline, metrics, defaults,
                    value_range=value_range, entity_level=entity, own_finetune=task.finetune,
                    defaults_from=reason, columns_read=task.columns_read())


def custom_task_data(task: CustomTask, cfg):
    """``TaskData`` for a custom task, with the same subsetting and validation carving as the built-in ones."""
    from compresso.evaluation.data import RawSplits
    from compresso.evaluation.tasks import finish_task_data

    train = read_split(task, "train")
    test = read_split(task, "test")
    validation = read_split(task, "validation") if "validation" in task.files else None
    labels = None
    if task.kind != "regression":
        labels = _labels(task, [train] + ([validation] if validation else []) + [test])
    spec = task_spec(task, [ex.label for ex in train], len(labels) if labels else None)
    if task.kind == "regression":
        low, high = spec.value_range
        if low >= high:
            raise DataError(f"custom task {task.name}: every training score is {low}; set value_range")
    sources = {split: os.path.normpath(path) for split, path in task.files.items()}
    raw = RawSplits(train, validation, test, sources, [])
    return finish_task_data(spec, raw, cfg, labels, examples=lambda records: records)


def _labels(task: CustomTask, splits: list[list]) -> list[str]:
    counts = Counter(tag for split in splits for ex in split
                     for tag in (ex.label if isinstance(ex.label, list) else [ex.label]))
    if task.labels is not None:
        unknown = sorted(set(counts) - set(task.labels))
        if unknown:
            raise DataError(f"custom task {task.name}: labels {', '.join(unknown)} found in the files are not "
                            f"in labels: {task.labels}")
        return list(task.labels)
    if len(counts) < 2:
        raise DataError(f"custom task {task.name}: the files hold {len(counts)} class(es) "
                        f"({', '.join(counts) or 'none'}); a task needs at least two")
    return sorted(counts, key=lambda t: (t != "O", t))
