"""Strategy discovery through the ``compresso.strategies`` entry-point group.

Built-in strategies are registered in compresso's own ``pyproject.toml`` the same way a
third-party plugin registers its own, so there is one lookup path. A strategy that fails to
import is kept with its error, so that listing shows it and the others still work.
"""

from __future__ import annotations

import hashlib
import os
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path

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
    clashes: list[str] = field(default_factory=list)
    """Qualified names (``name@distribution``) of every registration of this name, when there
    are several: then the plain name is ambiguous and a recipe must pick one."""

    @property
    def summary(self) -> str:
        summary = getattr(self.cls, "summary", "") if self.cls else ""
        return summary if isinstance(summary, str) else ""


class UnknownStrategy(KeyError):
    def __init__(self, name: str, available: list[str]):
        self.name, self.available = name, available
        super().__init__(name)

    def __str__(self) -> str:
        return f"unknown strategy {self.name!r}; available: {', '.join(self.available) or 'none'}"


class StrategyImportError(ImportError):
    pass


class AmbiguousStrategy(UnknownStrategy):
    """Two distributions register one strategy name: the recipe must say which it means."""

    def __init__(self, name: str, choices: list[str]):
        super().__init__(name, available())
        self.choices = choices

    def __str__(self) -> str:
        return (f"strategy {self.name!r} is registered by more than one installed distribution; write "
                f"{' or '.join(repr(c) for c in self.choices)} to pick one, or uninstall the one you do not want")


class PluginExited(BaseException):
    """A plugin called ``os._exit`` while being imported: it would have ended compresso on the
    spot, with its exit code and nothing printed."""


@contextmanager
def _no_process_exit(what: str):
    """While a third-party module is imported, ``os._exit`` (which skips every ``finally`` and
    ``atexit`` handler) raises ``PluginExited`` in this process instead, so that discovery can
    report the plugin; a process forked meanwhile keeps the real one."""
    real_exit, pid = os._exit, os.getpid()

    def refuse(code=0):
        if os.getpid() != pid:
            real_exit(code)
        raise PluginExited(f"{what} called os._exit({code}) while being imported")

    os._exit = refuse
    try:
        yield
    finally:
        os._exit = real_exit


def _load_class(ep) -> type[CompressionStrategy]:
    from compresso.strategy import StrategyParams

    with _no_process_exit(ep.value):
        cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, CompressionStrategy)):
        raise TypeError(f"{ep.value} is not a CompressionStrategy subclass")
    if getattr(cls, "name", None) != ep.name:
        raise TypeError(f"{ep.value}.name is {getattr(cls, 'name', None)!r}, but it is registered as {ep.name!r}")
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and issubclass(params, StrategyParams)):
        raise TypeError(f"{ep.value}.Params is {params!r}; it must be a StrategyParams subclass")
    if not isinstance(getattr(cls, "summary", ""), str):
        raise TypeError(f"{ep.value}.summary must be a string, not {type(cls.summary).__name__}")
    return cls


@lru_cache(maxsize=1)
def discover() -> dict[str, StrategyEntry]:
    """Every registration by name. A name registered by several distributions appears under each
    qualified name ``name@distribution``, and under its plain name as an entry listing the clash."""
    registrations: dict[str, list[StrategyEntry]] = {}
    for ep in entry_points(group=GROUP):
        dist = ep.dist
        entry = StrategyEntry(name=ep.name, target=ep.value,
                              distribution=dist.metadata["Name"] if dist else "?",
                              version=dist.version if dist else "?")
        try:
            entry.cls = _load_class(ep)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a plugin calling sys.exit() at import must not stop compresso
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
            where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
            entry.error = f"{type(exc).__name__}: {exc}{where}"
        registrations.setdefault(ep.name, []).append(entry)
    found: dict[str, StrategyEntry] = {}
    for name, entries in registrations.items():
        if len(entries) == 1:
            found[name] = entries[0]
            continue
        qualified = [f"{name}@{e.distribution}" for e in entries]
        for q, e in zip(qualified, entries):
            found[q] = e
        found[name] = StrategyEntry(name=name, target=", ".join(e.target for e in entries),
                                    distribution=", ".join(e.distribution for e in entries), version="?",
                                    error=f"name clash: registered by {', '.join(e.distribution for e in entries)}; "
                                          f"recipes must name one of {', '.join(qualified)}",
                                    clashes=qualified)
    return found


def broken() -> list[StrategyEntry]:
    """Registrations whose module failed to load (name clashes aside)."""
    return [e for e in discover().values() if e.cls is None and not e.clashes]


def available() -> list[str]:
    return sorted(name for name, e in discover().items() if e.cls is not None)


def entry(name: str) -> StrategyEntry:
    """The registration ``name`` (plain or ``name@distribution``) refers to, loaded."""
    found = discover().get(name)
    if found is None:
        raise UnknownStrategy(name, available())
    if found.clashes:
        raise AmbiguousStrategy(name, found.clashes)
    if found.cls is None:
        raise StrategyImportError(f"strategy {name!r} ({found.distribution}) failed to load: {found.error}")
    return found


def get(name: str) -> type[CompressionStrategy]:
    return entry(name).cls


def source_file(cls: type) -> str | None:
    module = sys.modules.get(cls.__module__)
    return getattr(module, "__file__", None)


def source_files(cls: type) -> list[Path]:
    """The source files a strategy's behaviour comes from: for a plugin, every ``.py`` file of its
    top-level package (or its module, when it is a single module); for a built-in strategy, its
    own module, or its own sub-package (``compresso/strategies/distill/``)."""
    module_name = cls.__module__
    file = source_file(cls)
    if file is None:
        return []
    top = module_name.split(".")[0]
    if top == "compresso":
        root = Path(file).parent if len(module_name.split(".")) > 3 else None
    else:
        top_file = getattr(sys.modules.get(top), "__file__", None)
        root = Path(top_file).parent if top_file and Path(top_file).name == "__init__.py" else None
    if root is None:
        return [Path(file)]
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def source_fingerprint(cls: type) -> str | None:
    """A hash of the strategy's source files (``source_files``): part of every stage's content key,
    so that a plugin edited without a version bump does not silently reuse a stale stage."""
    files = source_files(cls)
    if not files:
        return None
    digest = hashlib.sha256()
    root = files[0].parent
    for f in files:
        try:
            digest.update(str(f.relative_to(root) if f.is_relative_to(root) else f.name).encode())
            digest.update(f.read_bytes())
        except OSError:
            continue
    return digest.hexdigest()[:16]


def parameter_rows(params: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) of every field of a parameter schema."""
    from pydantic_core import PydanticUndefined

    rows = []
    for name, info in params.model_fields.items():
        annotation = info.annotation
        kind = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
        kind = _readable_type(kind or str(annotation))
        constraints = [_readable_constraint(m) for m in info.metadata]
        if constraints:
            kind += f" ({', '.join(constraints)})"
        if info.is_required():
            default = "(required)"
        elif info.default is not PydanticUndefined:
            default = repr(info.default)
        else:
            default = repr(info.get_default(call_default_factory=True))
        rows.append((name, kind, default, info.description or ""))
    return rows


_OPERATORS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "min length", "max_length": "max length"}


def _readable_type(text: str) -> str:
    """``list[Annotated[Path, AfterValidator(...)]]`` → ``list[Path]``; ``Optional`` spelt ``| None``."""
    text = text.replace("typing.", "").replace("pathlib.", "").replace("NoneType", "None")
    while "Annotated[" in text:
        start = text.index("Annotated[")
        depth, i = 0, start + len("Annotated[")
        inner_end = None
        for i in range(start + len("Annotated["), len(text)):
            if text[i] in "[(":
                depth += 1
            elif text[i] in "])":
                if depth == 0:
                    break
                depth -= 1
            elif text[i] == "," and depth == 0 and inner_end is None:
                inner_end = i
        base = text[start + len("Annotated["):inner_end or i]
        text = text[:start] + base + text[i + 1:]
    return text


def _readable_constraint(meta) -> str:
    for attr, op in _OPERATORS.items():
        value = getattr(meta, attr, None)
        if value is not None:
            return f"{op} {value}"
    return str(meta)
