"""Tasks on the user's own files: classification, sentence-pair regression, token classification.

Declared in a recipe's ``evaluate.custom_tasks`` (or a YAML file given to ``compresso evaluate
--task-file``), read through ``datasets``' ``csv``/``json`` loaders or a CoNLL reader, and scored
with the same fine-tuning, metrics and loyalty as the built-in tasks::

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
        - name: ner-en
          kind: tagging
          format: conll                      # one token per line, tag in the last column
          files: {train: conll2003/train.txt, validation: conll2003/valid.txt, test: conll2003/test.txt}
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import yaml

from compresso.evaluation.config import CustomTask


def load_task_files(paths) -> list[dict]:
    """Custom task declarations from YAML files (a list, or a mapping with ``custom_tasks``)."""
    out: list[dict] = []
    for path in paths:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read custom tasks: {exc}") from None
        if isinstance(data, dict) and "custom_tasks" in data:
            data = data["custom_tasks"]
        elif isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of custom tasks (or a mapping with custom_tasks:)")
        out += data
    return out


# --- reading ------------------------------------------------------------------------------------


def read_conll(path: Path, token_column: int = 0, tag_column: int = -1) -> list[tuple[list[str], list[str]]]:
    """CoNLL-style token classification: one token per line, whitespace- or tab-separated columns,
    sentences separated by blank lines; ``#`` comments and ``-DOCSTART-`` lines are skipped."""
    from compresso.evaluation.data import DataError, conll_blocks, text_lines

    # -DOCSTART- lines (CoNLL-2003) separate documents: read them as sentence boundaries
    lines = ((n, "" if line.startswith("-DOCSTART-") else line) for n, line in text_lines(path))
    sentences: list[tuple[list[str], list[str]]] = []
    for _, rows in conll_blocks(lines):
        words: list[str] = []
        tags: list[str] = []
        for lineno, line in rows:
            cols = line.split("\t") if "\t" in line else line.split()
            try:
                word, tag = cols[token_column], cols[tag_column]
            except IndexError:
                raise DataError(f"{path}:{lineno}: expected a token in column {token_column} and a tag in "
                                f"column {tag_column}, found {len(cols)} column(s): {line[:80]!r}") from None
            words.append(word)
            tags.append(tag)
        sentences.append((words, tags))
    return sentences


def _read_table(task: CustomTask, split: str, path: Path) -> list[dict]:
    """Rows of a CSV or JSON (lines) file through ``datasets``, as plain dicts."""
    from compresso.evaluation.data import DataError

    try:
        import datasets
    except ImportError:
        raise DataError(f"custom task {task.name}: reading {path} needs `datasets` "
                        f"(pip install -e \".[hub]\")") from None
    fmt = task.file_format(str(path))
    kwargs = {}
    if fmt == "csv":
        kwargs["delimiter"] = task.delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    datasets.disable_progress_bars()  # compresso shows its own progress
    try:
        ds = datasets.load_dataset(fmt, data_files={split: str(path)}, split=split, keep_in_memory=True,
                                   **kwargs)
    except Exception as exc:
        raise DataError(f"custom task {task.name}: cannot read {path} as {fmt}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    columns = [task.text, task.label] + ([task.text_pair] if task.text_pair else [])
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(f"custom task {task.name}: {path} has no column {', '.join(map(repr, missing))} "
                        f"(columns: {', '.join(ds.column_names)})")
    return ds.to_list()


def read_split(task: CustomTask, split: str, base: Path) -> list:
    """The examples of one split."""
    from compresso.evaluation.data import DataError, Example

    path = Path(task.files[split]).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise DataError(f"custom task {task.name}: {split} file {path} does not exist")
    fmt = task.file_format(str(path))
    if task.kind == "tagging":
        if fmt != "conll":
            raise DataError(f"custom task {task.name}: tagging tasks read CoNLL files (one token per line), "
                            f"not {fmt}")
        return [Example(words, tags, id=f"{split}-{i}")
                for i, (words, tags) in enumerate(read_conll(path, task.token_column, task.tag_column))]
    out = []
    for i, row in enumerate(_read_table(task, split, path)):
        text, label = row[task.text], row[task.label]
        pair = row[task.text_pair] if task.text_pair else None
        where = f"{path}, row {i + 1}"
        if not isinstance(text, str) or not text.strip() or (task.text_pair and not isinstance(pair, str)):
            raise DataError(f"custom task {task.name}: {where}: empty or non-text {task.text!r}"
                            + (f"/{task.text_pair!r}" if task.text_pair else ""))
        if task.kind == "regression":
            try:
                label = float(label)
            except (TypeError, ValueError):
                raise DataError(f"custom task {task.name}: {where}: {task.label!r} = {label!r} is not a number") \
                    from None
        else:
            if label is None or str(label).strip() == "":
                raise DataError(f"custom task {task.name}: {where}: empty {task.label!r}")
            label = str(label)
        out.append(Example(text, label, pair, id=f"{split}-{i}"))
    return out


# --- the task -----------------------------------------------------------------------------------


def task_spec(task: CustomTask, train_labels: list | None = None):
    """The ``TaskSpec`` of a custom task; the regression range and the entity scoring default come
    from the training labels."""
    from compresso.evaluation.tasks import KIND_DEFAULTS, TaskSpec

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
    else:
        headline, metrics = "macro_f1", ("macro_f1", "accuracy")
    defaults = KIND_DEFAULTS[task.kind]
    if task.kind == "regression" and not task.text_pair:
        defaults = replace(defaults, head="cross")  # single texts: nothing to encode apart
    defaults = defaults.with_overrides(task.finetune)
    dataset = Path(task.files["train"]).parent.name or Path(task.files["train"]).name
    return TaskSpec(task.name, task.title or task.name, task.kind, f"custom:{dataset}", headline, metrics, defaults,
                    value_range=value_range, entity_level=entity)


def custom_task_data(task: CustomTask, cfg):
    """``TaskData`` for a custom task, with the same subsetting and validation carving as the built-in ones."""
    from compresso.evaluation.data import DataError, RawSplits
    from compresso.evaluation.tasks import finish_task_data

    base = Path.cwd()
    train = read_split(task, "train", base)
    test = read_split(task, "test", base)
    validation = read_split(task, "validation", base) if "validation" in task.files else None
    spec = task_spec(task, [ex.label for ex in train])
    if task.kind == "regression":
        low, high = spec.value_range
        if low >= high:
            raise DataError(f"custom task {task.name}: every training score is {low}; set value_range")
    sources = {split: str(Path(path)) for split, path in task.files.items()}
    raw = RawSplits(train, validation, test, sources, [])
    labels = None
    if task.kind != "regression":
        labels = _labels(task, [train] + ([validation] if validation else []) + [test])
    return finish_task_data(spec, raw, cfg, labels, examples=lambda records: records)


def _labels(task: CustomTask, splits: list[list]) -> list[str]:
    from compresso.evaluation.data import DataError

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
