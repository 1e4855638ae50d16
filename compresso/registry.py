"""Strategy discovery through the ``compresso.strategies`` entry-point group.

Built-in strategies are registered in compresso's own ``pyproject.toml`` the same way a
third-party plugin registers its own, so there is one lookup path. A strategy that fails to
import is kept with its error, so that listing shows it and the others still work.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points

from compresso.strategy import CompressionStrategy

GROUP = "compresso.strategies"


@dataclass
class StrategyEntry:
    name: str
    target: str
    distribution: str
    version: str
    cls: type[CompressionStrategy] | None = None
    error: str | None = None

    @property
    def summary(self) -> str:
        return self.cls.summary if self.cls else ""


class UnknownStrategy(KeyError):
    def __init__(self, name: str, available: list[str]):
        self.name, self.available = name, available
        super().__init__(name)

    def __str__(self) -> str:
        return f"unknown strategy {self.name!r}; available: {', '.join(self.available) or 'none'}"


class StrategyImportError(ImportError):
    pass


@lru_cache(maxsize=1)
def discover() -> dict[str, StrategyEntry]:
    found: dict[str, StrategyEntry] = {}
    for ep in entry_points(group=GROUP):
        dist = ep.dist
        entry = StrategyEntry(
            name=ep.name, target=ep.value,
            distribution=dist.metadata["Name"] if dist else "?",
            version=dist.version if dist else "?",
        )
        if ep.name in found:
            entry.error = (f"name clash: also registered by {found[ep.name].distribution} "
                           f"({found[ep.name].target})")
            found[f"{ep.name}@{entry.distribution}"] = entry
            continue
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, CompressionStrategy)):
                raise TypeError(f"{ep.value} is not a CompressionStrategy subclass")
            if getattr(cls, "name", None) != ep.name:
                raise TypeError(f"{ep.value}.name is {getattr(cls, 'name', None)!r}, "
                                f"but it is registered as {ep.name!r}")
            entry.cls = cls
        except Exception as exc:
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
            where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
            entry.error = f"{type(exc).__name__}: {exc}{where}"
        found[ep.name] = entry
    return found


def available() -> list[str]:
    return sorted(name for name, e in discover().items() if e.cls is not None)


def get(name: str) -> type[CompressionStrategy]:
    entry = discover().get(name)
    if entry is None:
        raise UnknownStrategy(name, available())
    if entry.cls is None:
        raise StrategyImportError(f"strategy {name!r} ({entry.distribution}) failed to load: {entry.error}")
    return entry.cls
