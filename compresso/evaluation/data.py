"""Readers for the Romanian benchmark data in the formats its authors publish.

Local folders hold the authors' own files (what ``../shared/data`` holds, and what the full
public releases contain); ``source: hub`` reads the same data through ``datasets``. A malformed
record raises ``DataError`` naming the file and line. Where a dataset has no validation split
(LaRoSeDa always; RRT and RONEC when only their dev file is present) one is carved out of train
deterministically, and the task's notes say so.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

CARVE_SEED = 20220620  # fixed, so every model and every run sees the same validation split
SUBSET_SEED = 7


class DataError(ValueError):
    """Task data missing or malformed; the message names the file (and line) and what was expected."""


@dataclass
class Example:
    """One task example: ``text`` is a word list for tagging tasks, a string otherwise."""

    text: str | list[str]
    label: str | float | list[str]
    text_pair: str | None = None
    id: str | None = None


@dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# File formats


@dataclass
class ConlluSentence:
    words: list[str]
    upos: list[str]
    xpos: list[str]
    id: str | None = None


def read_conllu(path: Path) -> list[ConlluSentence]:
    """CoNLL-U (Universal Dependencies): 10 tab-separated columns per word; multiword-token
    ranges (``1-2``) and empty nodes (``1.1``) are skipped, as UD's own evaluation does."""
    sentences: list[ConlluSentence] = []
    words: list[str] = []
    upos: list[str] = []
    xpos: list[str] = []
    sent_id = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                if words:
                    sentences.append(ConlluSentence(words, upos, xpos, sent_id))
                words, upos, xpos, sent_id = [], [], [], None
                continue
            if line.startswith("#"):
                if line.startswith("# sent_id"):
                    sent_id = line.split("=", 1)[-1].strip()
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                raise DataError(f"{path}:{lineno}: expected 10 tab-separated CoNLL-U columns, found {len(cols)}")
            token_id = cols[0]
            if re.fullmatch(r"\d+-\d+", token_id) or re.fullmatch(r"\d+\.\d+", token_id):
                continue
            if not token_id.isdigit():
                raise DataError(f"{path}:{lineno}: column 1 (ID) must be a word index, a range N-M or a "
                                f"decimal N.M; found {token_id!r}")
            if not cols[1] or not cols[3] or cols[3] == "_":
                raise DataError(f"{path}:{lineno}: word {token_id} has an empty FORM or UPOS")
            words.append(cols[1])
            upos.append(cols[3])
            xpos.append(cols[4])
    if words:
        sentences.append(ConlluSentence(words, upos, xpos, sent_id))
    if not sentences:
        raise DataError(f"{path}: no sentences found (expected CoNLL-U)")
    return sentences


def _line_counter(text: str):
    """Line number (1-based) of a character offset, for offsets visited in increasing order."""
    state = {"pos": 0, "line": 1}

    def line_at(offset: int) -> int:
        state["line"] += text.count("\n", state["pos"], offset)
        state["pos"] = offset
        return state["line"]

    return line_at


def iter_json_array(path: Path, key: str | None = None) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(index, line, element)`` for each element of a JSON array (top level, or under
    ``key`` of a top-level object), so that schema errors can name the line of the record."""
    text = Path(path).read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    try:
        if key is None:
            start = text.index("[")
            if text[:start].strip():
                raise ValueError
        else:
            m = re.search(r'"%s"\s*:\s*\[' % re.escape(key), text)
            if m is None:
                raise ValueError
            start = m.end() - 1
    except ValueError:
        what = "a JSON array" if key is None else f'a JSON object with a "{key}" array'
        raise DataError(f"{path}:1: expected {what}") from None
    line_at = _line_counter(text)
    pos, index = start + 1, 0
    ws = re.compile(r"[\s,]*")
    while True:
        pos = ws.match(text, pos).end()
        if pos >= len(text):
            raise DataError(f"{path}:{line_at(len(text))}: the JSON array is not closed")
        if text[pos] == "]":
            return
        try:
            element, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        yield index, line_at(pos), element
        pos, index = end, index + 1


@dataclass
class NerSentence:
    tokens: list[str]
    tags: list[str]
    id: str | None = None


_BIO = re.compile(r"O|[BI]-[A-Z_]+")


def read_ronec(path: Path) -> list[NerSentence]:
    """RONEC v2 JSON: a list of ``{id, tokens, ner_tags, ner_ids, space_after}`` with BIO tags."""
    out = []
    for index, line, rec in iter_json_array(path):
        where = f"{path}:{line}: record {index}" + (f" (id {rec.get('id')})" if isinstance(rec, dict) else "")
        if not isinstance(rec, dict) or "tokens" not in rec or "ner_tags" not in rec:
            raise DataError(f"{where}: expected an object with 'tokens' and 'ner_tags'")
        tokens, tags = rec["tokens"], rec["ner_tags"]
        if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags):
            raise DataError(f"{where}: 'tokens' and 'ner_tags' must be lists of equal length "
                            f"(got {len(tokens) if isinstance(tokens, list) else type(tokens).__name__} and "
                            f"{len(tags) if isinstance(tags, list) else type(tags).__name__})")
        bad = next((t for t in tags if not isinstance(t, str) or not _BIO.fullmatch(t)), None)
        if bad is not None:
            raise DataError(f"{where}: ner_tags must be BIO tags such as O, B-PERSON, I-PERSON; found {bad!r}")
        if not tokens:
            continue
        out.append(NerSentence([str(t) for t in tokens], tags, str(rec.get("id"))))
    return out


@dataclass
class Review:
    title: str
    content: str
    rating: int
    id: str | None = None


def read_laroseda(path: Path) -> list[Review]:
    """LaRoSeDa JSON: ``{"reviews": [{index, title, content, starRating}]}``, ratings 1, 2, 4, 5."""
    out = []
    for index, line, rec in iter_json_array(path, key="reviews"):
        where = f"{path}:{line}: review {index}"
        if not isinstance(rec, dict) or not {"title", "content", "starRating"} <= rec.keys():
            raise DataError(f"{where}: expected an object with 'title', 'content' and 'starRating'")
        try:
            rating = int(rec["starRating"])
        except (TypeError, ValueError):
            rating = None
        if rating not in (1, 2, 4, 5):
            raise DataError(f"{where} (index {rec.get('index')}): starRating must be 1, 2, 4 or 5; "
                            f"found {rec['starRating']!r}")
        out.append(Review(str(rec["title"] or ""), str(rec["content"] or ""), rating, str(rec.get("index"))))
    return out


@dataclass
class StsPair:
    score: float
    sentence1: str
    sentence2: str


def read_ro_sts(path: Path) -> list[StsPair]:
    """RO-STS TSV: ``score<TAB>sentence1<TAB>sentence2``, scores in [0, 5]."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) != 3:
                raise DataError(f"{path}:{lineno}: expected 3 tab-separated columns "
                                f"(score, sentence1, sentence2), found {len(cols)}")
            try:
                score = float(cols[0])
            except ValueError:
                raise DataError(f"{path}:{lineno}: score {cols[0]!r} is not a number") from None
            if not 0.0 <= score <= 5.0 or math.isnan(score):
                raise DataError(f"{path}:{lineno}: score {score} is outside [0, 5]")
            out.append(StsPair(score, cols[1], cols[2]))
    if not out:
        raise DataError(f"{path}: no sentence pairs found")
    return out


@dataclass
class MorocoSample:
    id: str
    text: str
    dialect: int  # 1 Moldavian, 2 Romanian
    category: int | None


def _read_id_tsv(path: Path, what: str) -> dict[str, str]:
    rows: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            parts = line.split("\t", 1)
            if len(parts) != 2 or not parts[0].strip():
                raise DataError(f"{path}:{lineno}: expected ID<TAB>{what}")
            key = parts[0].strip()
            if key in rows:
                raise DataError(f"{path}:{lineno}: ID {key} appears twice")
            rows[key] = parts[1]
    return rows


def read_moroco(folder: Path) -> list[MorocoSample]:
    """One MOROCO split folder: ``samples.txt`` (``ID<TAB>text``), ``dialect_labels.txt``
    (``ID<TAB>1|2``) and optionally ``category_labels.txt`` (``ID<TAB>1..6``)."""
    samples_path = folder / "samples.txt"
    dialect_path = folder / "dialect_labels.txt"
    for p in (samples_path, dialect_path):
        if not p.is_file():
            raise DataError(f"{p}: file not found (a MOROCO split folder holds samples.txt and dialect_labels.txt)")
    samples = _read_id_tsv(samples_path, "text")
    dialects = _read_id_tsv(dialect_path, "1|2")
    category_path = folder / "category_labels.txt"
    categories = _read_id_tsv(category_path, "1..6") if category_path.is_file() else {}
    out = []
    with open(dialect_path, encoding="utf-8") as f:
        line_of = {ln.split("\t", 1)[0].strip(): i for i, ln in enumerate(f, 1) if ln.strip()}
    for key, label in dialects.items():
        if label.strip() not in ("1", "2"):
            raise DataError(f"{dialect_path}:{line_of[key]}: dialect label must be 1 (Moldavian) or 2 "
                            f"(Romanian); found {label.strip()!r}")
        if key not in samples:
            raise DataError(f"{dialect_path}:{line_of[key]}: ID {key} has no text in {samples_path}")
    missing = [k for k in samples if k not in dialects]
    if missing:
        raise DataError(f"{samples_path}: {len(missing)} sample(s) have no dialect label in {dialect_path} "
                        f"(first: ID {missing[0]})")
    for key, text in samples.items():
        cat = categories.get(key)
        out.append(MorocoSample(key, text, int(dialects[key].strip()),
                                int(cat) if cat is not None and cat.strip().isdigit() else None))
    return out


# ---------------------------------------------------------------------------------------------
# Dataset folders → splits of raw records


def _first_existing(*candidates: Path) -> Path | None:
    return next((p for p in candidates if p.exists()), None)


def _need(path: Path | None, what: str, folder: Path) -> Path:
    if path is None:
        raise DataError(f"{folder}: {what} not found. Point data_dir (--data-dir) at the folder that holds "
                        f"ro_rrt/, ronec/, laroseda/, ro_sts/ and moroco/ (see docs/evaluation.md).")
    return path


def _dataset_folder(data_dir: Path, *names: str) -> Path:
    for name in names:
        if (data_dir / name).is_dir():
            return data_dir / name
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist (relative paths are read from the current "
                        f"directory, {Path.cwd()})")
    raise DataError(f"{data_dir}: no {' or '.join(names)}/ folder (expected the authors' files there; "
                    f"see docs/evaluation.md)")


@dataclass
class RawSplits:
    train: list
    validation: list | None
    test: list
    sources: dict[str, str]
    notes: list[str]


def local_rrt(data_dir: Path) -> RawSplits:
    d = _dataset_folder(data_dir, "ro_rrt", "UD_Romanian-RRT")
    def find(split):
        return next(iter(sorted(d.glob(f"*-ud-{split}.conllu"))), None)
    train, dev, test = find("train"), find("dev"), _need(find("test"), "*-ud-test.conllu", d)
    if train is not None:
        return RawSplits(read_conllu(train), read_conllu(dev) if dev else None, read_conllu(test),
                         {"train": str(train), "validation": str(dev) if dev else "", "test": str(test)}, [])
    dev = _need(dev, "*-ud-train.conllu or *-ud-dev.conllu", d)
    return RawSplits(read_conllu(dev), None, read_conllu(test), {"train": str(dev), "test": str(test)},
                     [f"no *-ud-train.conllu in {d}: trained on {dev.name}"])


def local_ronec(data_dir: Path) -> RawSplits:
    d = _dataset_folder(data_dir, "ronec", "RONEC")
    train = _first_existing(d / "train.json")
    dev = _first_existing(d / "valid.json", d / "dev.json", d / "validation.json")
    test = _need(_first_existing(d / "test.json"), "test.json", d)
    if train is not None:
        return RawSplits(read_ronec(train), read_ronec(dev) if dev else None, read_ronec(test),
                         {"train": str(train), "validation": str(dev) if dev else "", "test": str(test)}, [])
    dev = _need(dev, "train.json or valid.json", d)
    return RawSplits(read_ronec(dev), None, read_ronec(test), {"train": str(dev), "test": str(test)},
                     [f"no train.json in {d}: trained on {dev.name}"])


def local_laroseda(data_dir: Path) -> RawSplits:
    d = _dataset_folder(data_dir, "laroseda", "LaRoSeDa")
    train = _need(_first_existing(d / "laroseda_train.json"), "laroseda_train.json", d)
    test = _need(_first_existing(d / "laroseda_test.json"), "laroseda_test.json", d)
    return RawSplits(read_laroseda(train), None, read_laroseda(test), {"train": str(train), "test": str(test)}, [])


def local_ro_sts(data_dir: Path) -> RawSplits:
    d = _dataset_folder(data_dir, "ro_sts", "RO-STS")
    train = _need(_first_existing(d / "RO-STS.train.tsv"), "RO-STS.train.tsv", d)
    dev = _first_existing(d / "RO-STS.dev.tsv")
    test = _need(_first_existing(d / "RO-STS.test.tsv"), "RO-STS.test.tsv", d)
    return RawSplits(read_ro_sts(train), read_ro_sts(dev) if dev else None, read_ro_sts(test),
                     {"train": str(train), "validation": str(dev) if dev else "", "test": str(test)}, [])


def local_moroco(data_dir: Path) -> RawSplits:
    d = _dataset_folder(data_dir, "moroco", "MOROCO")
    if not (d / "train").is_dir() and (d / "preprocessed" / "train").is_dir():
        d = d / "preprocessed"  # layout of the authors' repository
    train = _need(_first_existing(d / "train"), "train/ (samples.txt, dialect_labels.txt)", d)
    test = _need(_first_existing(d / "test"), "test/ (samples.txt, dialect_labels.txt)", d)
    dev = _first_existing(d / "validation", d / "dev")
    return RawSplits(read_moroco(train), read_moroco(dev) if dev else None, read_moroco(test),
                     {"train": str(train), "validation": str(dev) if dev else "", "test": str(test)}, [])


LOCAL_READERS = {"ro_rrt": local_rrt, "ronec": local_ronec, "laroseda": local_laroseda,
                 "ro_sts": local_ro_sts, "moroco": local_moroco}


# ---------------------------------------------------------------------------------------------
# Helpers shared by every task


def carve_validation(train: list, fraction: float) -> tuple[list, list]:
    """Hold out ``fraction`` of train (at least one example) as validation: a fixed permutation,
    both parts kept in file order."""
    n = len(train)
    if n < 2:
        raise DataError(f"cannot carve a validation split out of {n} training example(s)")
    n_val = min(n - 1, max(1, round(n * fraction)))
    perm = np.random.default_rng(CARVE_SEED).permutation(n)
    held = set(perm[:n_val].tolist())
    return [x for i, x in enumerate(train) if i not in held], [x for i, x in enumerate(train) if i in held]


def fixed_subset(items: list, limit: int | None) -> list:
    """A fixed random subset of ``limit`` items in file order (files can be sorted by label)."""
    if limit is None or len(items) <= limit:
        return items
    keep = set(np.random.default_rng(SUBSET_SEED).permutation(len(items))[:limit].tolist())
    return [x for i, x in enumerate(items) if i in keep]
