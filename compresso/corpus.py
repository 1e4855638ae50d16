"""Streaming text corpora: local text files or a hub dataset, one document at a time.

Used by distillation (training text), quantization (calibration text) and pruning (importance
scores). Nothing here holds more than one document in memory, so memory does not grow with the
corpus. A corpus is either

* text files with one document per line (``.txt`` or any plain-text name, ``.gz``, ``.xz``,
  ``.bz2``), read in the order given; blank lines are skipped; or
* a Hugging Face dataset id, streamed with ``datasets`` (the optional ``hub`` extra), one row per
  document taken from ``text_field``.

The first ``heldout`` documents form a held-out slice that is never trained on (``part="heldout"``);
the rest are the training part (``part="train"``), optionally capped by ``max_documents`` and
dealt round-robin to ``world_size`` data-parallel ranks. Documents keep their training index, so a
reader can resume at any document.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

Part = Literal["train", "heldout", "all"]

_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


class CorpusError(ValueError):
    """A corpus cannot be read (missing file, unknown dataset, no documents)."""


@dataclass(frozen=True)
class Corpus:
    """Where documents come from: files, or a hub dataset (exactly one of the two)."""

    files: tuple[Path, ...] = ()
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    text_field: str = "text"

    def __post_init__(self):
        if bool(self.files) == bool(self.dataset):
            raise CorpusError("a corpus is either a list of text files or a hub dataset id, not both or neither")
        for f in self.files:
            if Path(f).is_dir():
                raise CorpusError(f"corpus file {f} is a folder: list its text files, or give the folder as a "
                                  f"dataset (it is then read with `datasets`)")
            if not Path(f).is_file():
                raise CorpusError(f"corpus file {f} does not exist")

    def describe(self) -> str:
        if self.dataset:
            return f"hub dataset {self.dataset}" + (f" ({self.dataset_config})" if self.dataset_config else "") \
                + f", split {self.split}, field {self.text_field!r}"
        names = ", ".join(str(f) for f in self.files[:3])
        return names + (f" and {len(self.files) - 3} more" if len(self.files) > 3 else "")


def as_corpus(source: Corpus | str | Path | Sequence[str | Path]) -> Corpus:
    """A ``Corpus`` from a path, a list of paths, or a dataset: a hub id (a string naming no file) or a
    local folder of data files, both read with ``datasets``."""
    if isinstance(source, Corpus):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if path.is_dir():
            return Corpus(dataset=str(path))
        if path.exists() or isinstance(source, Path) or str(source).startswith((".", "/", "~")):
            return Corpus(files=(path,))
        return Corpus(dataset=str(source))
    return Corpus(files=tuple(Path(p).expanduser() for p in source))


def open_text(path: str | Path) -> IO[str]:
    """Open a text file for reading, decompressing ``.gz``/``.xz``/``.bz2`` by suffix.

    Undecodable bytes become U+FFFD rather than stopping a long run at one bad line.
    """
    path = Path(path)
    opener = _OPENERS.get(path.suffix.lower(), open)
    return opener(path, "rt", encoding="utf-8", errors="replace")


def _file_documents(files: Sequence[Path]) -> Iterator[str]:
    for path in files:
        try:
            with open_text(path) as handle:
                for line in handle:
                    line = line.strip()
                    if line:
                        yield line
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise CorpusError(f"corpus file {path}: cannot read it ({type(exc).__name__}: {exc})") from exc


def _dataset_documents(corpus: Corpus) -> Iterator[str]:
    try:
        import datasets
    except ImportError as exc:
        raise CorpusError("reading a hub dataset needs the optional `datasets` package: "
                          "pip install 'compresso[hub]'") from exc
    try:
        rows = datasets.load_dataset(corpus.dataset, corpus.dataset_config, split=corpus.split, streaming=True)
    except Exception as exc:  # network, auth, unknown id or split: all mean "cannot read this corpus"
        raise CorpusError(f"cannot open hub dataset {corpus.dataset!r} (split {corpus.split!r}): "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    for row in rows:
        if corpus.text_field not in row:
            raise CorpusError(f"hub dataset {corpus.dataset!r} has no field {corpus.text_field!r}; "
                              f"its fields are {', '.join(row)}")
        text = row[corpus.text_field]
        text = " ".join(text.split()) if isinstance(text, str) else ""
        if text:
            yield text


def raw_documents(source: Corpus | str | Path | Sequence[str | Path]) -> Iterator[str]:
    """Every non-empty document of the corpus, in order (held-out slice included)."""
    corpus = as_corpus(source)
    return _dataset_documents(corpus) if corpus.dataset else _file_documents(corpus.files)


def iter_indexed_documents(source: Corpus | str | Path | Sequence[str | Path], *, part: Part = "train",
                           heldout: int = 0, max_documents: int | None = None, rank: int = 0,
                           world_size: int = 1, start: int = 0) -> Iterator[tuple[int, str]]:
    """``(index, text)`` pairs of one part of the corpus.

    ``index`` counts documents within the part (for ``train``: after the held-out slice, before
    sharding), so it is the same on every rank and across runs. ``rank``/``world_size`` keep
    the training documents with ``index % world_size == rank``. ``start`` skips documents with a
    smaller index without tokenising them (resuming). ``max_documents`` caps the part's size.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    for position, text in enumerate(raw_documents(source)):
        if part == "heldout":
            if position >= heldout:
                return
            index = position
        elif part == "train":
            if position < heldout:
                continue
            index = position - heldout
        else:
            index = position
        if max_documents is not None and index >= max_documents:
            return
        if index < start or (part == "train" and index % world_size != rank):
            continue
        yield index, text


def iter_documents(source: Corpus | str | Path | Sequence[str | Path], *, part: Part = "train",
                   heldout: int = 0, max_documents: int | None = None, rank: int = 0,
                   world_size: int = 1) -> Iterator[str]:
    """The documents of one part of a corpus, streamed; see ``iter_indexed_documents``."""
    for _, text in iter_indexed_documents(source, part=part, heldout=heldout, max_documents=max_documents,
                                          rank=rank, world_size=world_size):
        yield text


UNDECODABLE_WARN = 0.001
"""Share of undecodable characters (U+FFFD after decoding) above which a corpus file gets a warning."""
UNDECODABLE_MAX = 0.05
"""Default share above which a corpus file is refused: text, not a binary file or another encoding."""
UNDECODABLE_SAMPLE = 1 << 20  # characters read from the start of each file for the check


def undecodable_fraction(path: str | Path) -> float:
    """Share of the first ``UNDECODABLE_SAMPLE`` characters of a file that are not valid UTF-8."""
    try:
        with open_text(path) as handle:
            text = handle.read(UNDECODABLE_SAMPLE)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise CorpusError(f"corpus file {path}: cannot read it ({type(exc).__name__}: {exc})") from exc
    return text.count("\ufffd") / max(len(text), 1)


def check_corpus(source: Corpus | str | Path | Sequence[str | Path], heldout: int = 0,
                 max_undecodable: float = UNDECODABLE_MAX) -> list[str]:
    """Raise ``CorpusError`` unless the corpus has at least one training document after the
    held-out slice, and unless every file's start (its first MiB) is UTF-8 text with at most
    ``max_undecodable`` of its characters undecodable. Returns warnings (files with more than
    ``UNDECODABLE_WARN`` undecodable). Reads only as far as that."""
    corpus = as_corpus(source)
    warnings = []
    for path in corpus.files:
        share = undecodable_fraction(path)
        if share > max_undecodable:
            raise CorpusError(f"corpus file {path}: {share:.1%} of its first characters are not valid UTF-8 "
                              f"(at most {max_undecodable:.1%} allowed): a binary file or another encoding? "
                              f"Convert it to UTF-8 text, one document per line")
        if share > UNDECODABLE_WARN:
            warnings.append(f"corpus file {path}: {share:.2%} of its first characters are not valid UTF-8 "
                            f"(they become U+FFFD)")
    for _ in iter_indexed_documents(corpus, part="train", heldout=heldout):
        return warnings
    seen = sum(1 for _ in zip(range(heldout + 1), raw_documents(corpus)))
    if seen == 0:
        raise CorpusError(f"the corpus ({corpus.describe()}) holds no documents (no non-blank lines)")
    raise CorpusError(f"the corpus ({corpus.describe()}) holds only {seen} documents, all of them in the "
                      f"held-out slice of {heldout}: nothing is left to train on")


__all__ = ["Corpus", "CorpusError", "as_corpus", "check_corpus", "iter_documents", "iter_indexed_documents",
           "open_text", "raw_documents"]
