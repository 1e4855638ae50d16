"""Strategy discovery through the ``compresso.strategies`` entry-point group.

Built-in strategies are registered in compresso's own ``pyproject.toml`` the same way a
third-party plugin registers its own, so there is one lookup path. A strategy that fails to
import is kept with its error, so that listing shows it and the others still work.
"""

from __future__ import annotations

import hashlib
import sys
import traceback
from dataclasses import dataclass
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
    for name, field in params.model_fields.items():
        annotation = field.annotation
        kind = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
        kind = _readable_type(kind or str(annotation))
        constraints = [_readable_constraint(m) for m in field.metadata]
        if constraints:
            kind += f" ({', '.join(constraints)})"
        if field.is_required():
            default = "(required)"
        elif field.default is not PydanticUndefined:
            default = repr(field.default)
        else:
            default = repr(field.get_default(call_default_factory=True))
        rows.append((name, kind, default, field.description or ""))
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
