"""Readers for the Romanian benchmark data in the formats its authors publish.

Local folders hold the authors' own files (what ``../shared/data`` holds, and what the full
public releases contain); ``source: hub`` reads the same data through ``datasets``. A malformed
record raises ``DataError`` naming the file and line. Every reader takes UTF-8 with or without a
byte-order mark, and CRLF or LF line ends; a file that is not UTF-8, or a folder where a file
belongs, is a ``DataError`` too. Where a dataset has no validation split
(LaRoSeDa always; RRT and RONEC when only their dev file is present) one is carved out of train
deterministically, and the task's notes say so.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

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


def read_text(path: Path) -> str:
    """A data file's text: UTF-8 (a byte-order mark is dropped), line ends as newlines."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder; expected a file") from None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {exc.start}: "
                        f"{raw[exc.start:exc.start + 1]!r}); the readers expect UTF-8 text") from None
    # Universal newlines, as open() would: CRLF and lone CR both end a line.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a text file, without line ends."""
    text = read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return enumerate(lines, 1)


@dataclass
class ConlluSentence:
    words: list[str]
    upos: list[str]
    xpos: list[str]
    id: str | None = None


def conll_blocks(lines: Iterable[tuple[int, str]]):
    """The sentences of a CoNLL-style file's ``(line number, line)`` pairs: ``(sent_id, [(lineno,
    line), ...])`` for each block between blank lines; comment lines are skipped, ``# sent_id =
    ...`` names the block."""
    rows: list[tuple[int, str]] = []
    sent_id = None
    for lineno, line in lines:
        if not line.strip():
            if rows:
                yield sent_id, rows
            rows, sent_id = [], None
        elif line.startswith("#"):
            if line.startswith("# sent_id"):
                sent_id = line.split("=", 1)[-1].strip()
        else:
            rows.append((lineno, line))
    if rows:
        yield sent_id, rows


CONLLU_SKIPPED_ID = re.compile(r"\d+-\d+|\d+\.\d+")
"""IDs of CoNLL-U lines that are not syntactic words: multiword-token ranges (``1-2``: the surface
form ``Dă-mi-l`` over its words) and empty nodes (``1.1``); UD's own evaluation skips both."""


def is_multiword_or_empty_node(cols: list[str]) -> bool:
    """A CoNLL-U multiword-token range or empty-node line (10 tab-separated columns, such an ID)."""
    return len(cols) == 10 and CONLLU_SKIPPED_ID.fullmatch(cols[0]) is not None


def conllu_words(path: Path) -> Iterator[tuple[str | None, list[tuple[int, list[str]]]]]:
    """The sentences of a CoNLL-U file as ``(sent_id, [(line number, its 10 columns), ...])``,
    syntactic words only: multiword-token ranges and empty nodes are skipped. The one CoNLL-U
    reader, for the built-in tasks and for custom ``format: conllu`` tasks alike."""
    for sent_id, rows in conll_blocks(text_lines(path)):
        words: list[tuple[int, list[str]]] = []
        for lineno, line in rows:
            cols = line.split("\t")
            if len(cols) != 10:
                raise DataError(f"{path}:{lineno}: expected 10 tab-separated CoNLL-U columns, found {len(cols)}")
            if is_multiword_or_empty_node(cols):
                continue
            if not cols[0].isdigit():
                raise DataError(f"{path}:{lineno}: column 1 (ID) must be a word index, a range N-M or a "
                                f"decimal N.M; found {cols[0]!r}")
            if not cols[1]:
                raise DataError(f"{path}:{lineno}: word {cols[0]} has an empty FORM (column 2)")
            words.append((lineno, cols))
        if words:
            yield sent_id, words


def read_conllu(path: Path) -> list[ConlluSentence]:
    """CoNLL-U (Universal Dependencies): 10 tab-separated columns per word; multiword-token
    ranges (``1-2``) and empty nodes (``1.1``) are skipped, as UD's own evaluation does."""
    sentences: list[ConlluSentence] = []
    for sent_id, words in conllu_words(path):
        for lineno, cols in words:
            if not cols[3] or cols[3] == "_":
                raise DataError(f"{path}:{lineno}: word {cols[0]} has an empty UPOS (column 4)")
        sentences.append(ConlluSentence([c[1] for _, c in words], [c[3] for _, c in words],
                                        [c[4] for _, c in words], sent_id))
    if not sentences:
        raise DataError(f"{path}: no sentences found (expected CoNLL-U)")
    return sentences


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a data file (it does not exist, is a folder, a symlink loop,
    not a regular file), or None when it can."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "is a symlink to a file that does not exist" if os.path.islink(path) else "does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop (a link that points back at itself)"
        return f"cannot be read ({exc.strerror or exc})"
    except ValueError as exc:  # e.g. a NUL byte in the name
        return f"is not a usable path ({exc})"
    if stat.S_ISDIR(mode):
        return "is a folder; expected a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a device, a pipe or a socket)"
    return None


def _line_counter(text: str):
    """Line number (1-based) of a character offset, for offsets visited in increasing order."""
    state = {"pos": 0, "line": 1}

    def line_at(offset: int) -> int:
        state["line"] += text.count("\n", state["pos"], offset)
        state["pos"] = offset
        return state["line"]

    return line_at


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


def _array_start(text: str, key: str) -> int:
    """Offset of the ``[`` that opens the top-level object's ``key`` value (the last one, as
    ``json.loads`` keeps), found by decoding the object key by key, never by pattern matching."""
    decoder = json.JSONDecoder()
    pos, found = _skip_ws(text, 0) + 1, -1  # past the "{"
    while True:
        pos = _skip_ws(text, pos)
        if text[pos] == "}":
            return found
        name, pos = decoder.raw_decode(text, pos)
        pos = _skip_ws(text, pos) + 1  # past the ":"
        pos = _skip_ws(text, pos)
        if name == key:
            found = pos
        _, pos = decoder.raw_decode(text, pos)
        pos = _skip_ws(text, pos)
        if text[pos] == ",":
            pos += 1


def iter_json_array(path: Path, key: str | None = None) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(index, line, element)`` for each element of a JSON array (top level, or under
    ``key`` of a top-level object), so that schema errors can name the line of the record. The
    whole file is parsed with ``json`` first, so its structure is whatever ``json`` says it is."""
    text = read_text(path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise DataError(f"{path}: invalid JSON: nested too deeply") from None
    what = "a JSON array" if key is None else f'a JSON object with a "{key}" array'
    if key is None:
        ok = isinstance(document, list)
    else:
        ok = isinstance(document, dict) and isinstance(document.get(key), list)
    if not ok:
        raise DataError(f"{path}:1: expected {what}")
    start = _skip_ws(text, 0) if key is None else _array_start(text, key)
    decoder = json.JSONDecoder()
    line_at = _line_counter(text)
    pos = start + 1
    for index in range(len(document if key is None else document[key])):
        pos = _skip_ws(text, pos)
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        element, end = decoder.raw_decode(text, pos)
        yield index, line_at(pos), element
        pos = end


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


_CONLLU_COLUMNS = ("ID", "FORM", "LEMMA", "UPOS", "XPOS", "FEATS", "HEAD", "DEPREL", "DEPS", "MISC")
_PARSEME_OPEN = re.compile(r"(\d+):([A-Za-z_]+)")


def read_ner_conllup(path: Path) -> list[NerSentence]:
    """NER in CoNLL-U Plus, as RONEC v1 publishes it: the CoNLL-U columns plus one entity column
    (the first column that is not a CoNLL-U one, named in ``# global.columns = ...``; without that
    header, column 11). Entity values are BIO tags (``B-PERSON``, ``I-PERSON``, ``O``) or the
    numbered style of CoNLL-U Plus (``1:PERSON`` opens entity 1, ``1`` continues it, ``*`` or ``_``
    is outside; of overlapping entities, ``a;b``, the first is kept). The entity types are
    whatever the file uses."""
    form, ner, width = 1, 10, None
    lines = list(text_lines(path))
    first = lines[0][1] if lines else ""
    if first.startswith("# global.columns"):
        names = first.split("=", 1)[-1].split()
        extra = [i for i, n in enumerate(names) if n.upper() not in _CONLLU_COLUMNS]
        if "FORM" not in names or not extra:
            raise DataError(f"{path}:1: global.columns must name FORM and an entity column; found {names}")
        form, ner, width = names.index("FORM"), extra[0], len(names)
    out: list[NerSentence] = []
    for sent_id, rows in conll_blocks(lines):
        tokens: list[str] = []
        tags: list[str] = []
        types: dict[str, str] = {}  # numbered style: entity number -> type, within one sentence
        for lineno, line in rows:
            cols = line.split("\t")
            if len(cols) <= max(form, ner) or (width is not None and len(cols) != width):
                raise DataError(f"{path}:{lineno}: expected {width or ner + 1} tab-separated columns "
                                f"(CoNLL-U Plus with an entity column), found {len(cols)}")
            if re.fullmatch(r"\d+-\d+|\d+\.\d+", cols[0]):
                continue  # multiword-token ranges and empty nodes, as in CoNLL-U
            value = cols[ner].strip().split(";")[0]
            if value in ("", "_", "*", "O"):
                tag = "O"
            elif _BIO.fullmatch(value):
                tag = value
            elif m := _PARSEME_OPEN.fullmatch(value):
                types[m.group(1)] = m.group(2).upper()
                tag = f"B-{types[m.group(1)]}"
            elif value.isdigit() and value in types:
                tag = f"I-{types[value]}"
            else:
                raise DataError(f"{path}:{lineno}: entity column {ner + 1}: expected a BIO tag (B-TYPE, I-TYPE, "
                                f"O), N:TYPE, N or *; found {cols[ner]!r}")
            tokens.append(cols[form])
            tags.append(tag)
        if tokens:
            out.append(NerSentence(tokens, tags, sent_id))
    if not out:
        raise DataError(f"{path}: no sentences found (expected CoNLL-U Plus with an entity column)")
    return out


def read_ner_file(path: Path) -> list[NerSentence]:
    """RONEC in either of its authors' formats, by suffix: v2 JSON or v1 CoNLL-U Plus."""
    return read_ronec(path) if path.suffix.lower() == ".json" else read_ner_conllup(path)


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
    for lineno, line in text_lines(path):
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
    for lineno, line in text_lines(path):
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
    line_of = {ln.split("\t", 1)[0].strip(): i for i, ln in text_lines(dialect_path) if ln.strip()}
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
    try:
        data_dir.exists()
    except (OSError, ValueError) as exc:
        raise DataError(f"data folder {str(data_dir)[:80]}... cannot be used: "
                        f"{getattr(exc, 'strerror', None) or exc}") from None
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
    """RONEC v2 (``train.json``, ``valid.json``, ``test.json``) or v1 (the same names with
    ``.conllup`` or ``.conllu``: CoNLL-U Plus with an entity column)."""
    d = _dataset_folder(data_dir, "ronec", "RONEC")

    def find(*stems: str) -> Path | None:
        return _first_existing(*(d / f"{stem}{suffix}" for suffix in (".json", ".conllup", ".conllu")
                                 for stem in stems))

    train = find("train")
    dev = find("valid", "dev", "validation")
    test = _need(find("test"), "test.json (or test.conllup)", d)
    if train is not None:
        return RawSplits(read_ner_file(train), read_ner_file(dev) if dev else None, read_ner_file(test),
                         {"train": str(train), "validation": str(dev) if dev else "", "test": str(test)}, [])
    dev = _need(dev, "train.json or valid.json (or .conllup)", d)
    return RawSplits(read_ner_file(dev), None, read_ner_file(test), {"train": str(dev), "test": str(test)},
                     [f"no train file in {d}: trained on {dev.name}"])


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


def label_notes(task: str, tagging: bool, train: list[Example], test: list[Example], labels: list[str]) -> list[str]:
    """Refuse a task with fewer than two classes (it would score 100 by predicting the one
    class, e.g. an XPOS column that is all ``_``), and note test labels that training never
    shows (the model cannot predict them: each is scored as an error), with counts."""
    if len(labels) < 2:
        raise DataError(f"{task}: the data has {len(labels)} class{'' if len(labels) == 1 else 'es'} "
                        f"({', '.join(map(repr, labels)) or 'none'}); a task needs at least two "
                        f"(is the label column empty, e.g. all '_'?)")
    notes = []
    if tagging:
        seen = {tag for ex in train for tag in ex.label}
        unseen = Counter(tag for ex in test for tag in ex.label if tag not in seen)
        total = sum(len(ex.label) for ex in test)
        if unseen:
            common = unseen.most_common()
            listed = ", ".join(f"{tag} ×{n}" for tag, n in common[:10]) + \
                (f" and {len(common) - 10} more" if len(common) > 10 else "")
            notes.append(f"{len(unseen)} test tag(s) never seen in training, on {sum(unseen.values())} of {total} "
                         f"test tokens (scored as errors): {listed}")
    else:
        missing = sorted(set(labels) - {ex.label for ex in train})
        if missing:
            count = Counter(ex.label for ex in test)
            notes.append(f"training data has no example of {', '.join(missing)} "
                         f"({sum(count[m] for m in missing)} of {len(test)} test examples)")
    return notes


def fixed_subset(items: list, limit: int | None) -> list:
    """A fixed random subset of ``limit`` items in file order (files can be sorted by label)."""
    if limit is None or len(items) <= limit:
        return items
    keep = set(np.random.default_rng(SUBSET_SEED).permutation(len(items))[:limit].tolist())
    return [x for i, x in enumerate(items) if i in keep]
