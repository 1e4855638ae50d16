"""Reading a plain-text corpus: one document per line, optionally gzip- or xz-compressed.

Only the standard library is used, so the plugin adds no dependency. Progress is measured in
bytes of the files on disk (compressed bytes for .gz/.xz), which is known before reading starts.
"""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path
from typing import BinaryIO, Iterator

SUFFIXES = (".txt", ".gz", ".xz")


class CorpusError(Exception):
    """A corpus file could not be read; the message names the file (and line)."""


def check_suffix(path: Path) -> Path:
    """Pydantic validator: a readable file with a suffix we can decode."""
    if not path.expanduser().is_file():
        raise ValueError(f"{path} is not a file")
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: expected a .txt, .gz or .xz file (one document per line)")
    return path


def _decompressed(path: Path, raw: BinaryIO) -> BinaryIO:
    if path.suffix == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if path.suffix == ".xz":
        return lzma.LZMAFile(raw, mode="rb")
    return raw


class CorpusReader:
    """Iterate the non-blank lines of several files, tracking how many file bytes were read."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.total_bytes = sum(p.stat().st_size for p in paths)
        self._done_bytes = 0
        self._current: BinaryIO | None = None

    @property
    def bytes_read(self) -> int:
        current = self._current.tell() if self._current is not None and not self._current.closed else 0
        return self._done_bytes + current

    def documents(self) -> Iterator[str]:
        for path in self.paths:
            with open(path, "rb") as raw:
                self._current = raw
                stream = _decompressed(path, raw)
                lineno = 0
                try:
                    for lineno, line in enumerate(stream, start=1):
                        text = line.decode("utf-8").strip()
                        if text:
                            yield text
                except UnicodeDecodeError as exc:
                    raise CorpusError(f"{path}: line {lineno} is not valid UTF-8 ({exc.reason} at byte "
                                      f"{exc.start})") from None
                except (OSError, EOFError, lzma.LZMAError) as exc:
                    raise CorpusError(f"{path}: cannot be read as {path.suffix} after line {lineno}: "
                                      f"{exc}") from None
                self._current = None
            self._done_bytes += path.stat().st_size


def check_readable(path: Path) -> None:
    """Read the first line, so that a corrupt or mislabelled archive fails before a long run."""
    try:
        with open(path, "rb") as raw:
            _decompressed(path, raw).readline()
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise CorpusError(f"{path}: cannot be read as {path.suffix}: {exc}") from None
