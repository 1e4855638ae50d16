"""The contract between the engine and every compression strategy.

A strategy is a class with a name, a pydantic parameter schema and one method,
``apply(bundle, ctx) -> bundle``. The engine validates parameters before anything runs,
calls ``preflight`` for cheap static checks (files exist, backends importable), then
``apply`` stage by stage, and persists what comes back through ``save``/``load``.
Strategies never see the CLI or the recipe file; everything they need is in
``RunContext``.
"""

from __future__ import annotations

import json
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Mapping

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

BUNDLE_META = "compresso.json"


class StrategyParams(BaseModel):
    """Base class for a strategy's parameter schema: unknown keys and non-finite numbers
    (``.inf``, ``.nan``) are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


def _must_exist(path: Path) -> Path:
    try:
        found = path.expanduser().exists()
    except (OSError, ValueError) as exc:  # a name too long for the file system, say
        raise ValueError(f"{str(path)[:80]}... cannot be a file name here: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    if not found:
        raise ValueError(f"file or folder {path} does not exist (relative paths are read from "
                         f"the current directory, {Path.cwd()})")
    return path


InputPath = Annotated[Path, AfterValidator(_must_exist)]
"""Use in a parameter schema for a file the stage reads: a missing file is a recipe error."""


class StrategyError(Exception):
    """A strategy refused its input (bad parameter value, unsupported model, missing data).

    Raised before any expensive work where possible; the CLI prints the message and exits 2.
    """


class StageFailure(Exception):
    """A stage failed while doing its work, although its input was fine (e.g. the training loss
    became non-finite). The CLI prints the message and exits 1; run.json says ``failed`` and the
    stage's checkpoints stay in ``work_dir``."""


@dataclass
class ModelBundle:
    """What flows from stage to stage: a model, its tokenizer, and where it came from.

    ``format`` names who can persist the model: ``"transformers"`` for anything
    ``save_pretrained`` describes, otherwise the name of the strategy whose ``save``/``load``
    handle it (e.g. an INT8 graph). ``lineage`` is a list of ``{"stage", "strategy", "params",
    ...}`` records, oldest first.
    """

    model: torch.nn.Module
    tokenizer: Any
    lineage: list[dict] = field(default_factory=list)
    format: str = "transformers"

    def meta(self) -> dict:
        meta = {"format": self.format, "lineage": self.lineage}
        task = getattr(getattr(self.model, "config", None), "compresso_task", None)
        if task is not None:  # a task model: what its head was trained for, beside where it came from
            meta["task"] = task
        return meta


class TeacherRef:
    """A teacher named in the recipe, loaded on first use and then cached. ``stage`` names the stage
    folder whose output the teacher is (``model`` is then that folder), None for a hub id or folder."""

    def __init__(self, name: str, model: str, revision: str | None, trust_remote_code: bool,
                 stage: str | None = None):
        self.name = name
        self.model = model
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        self.stage = stage
        self._bundle: ModelBundle | None = None

    def load(self) -> ModelBundle:
        if self._bundle is None:
            from compresso.models import load_bundle

            self._bundle = load_bundle(self.model, revision=self.revision,
                                       trust_remote_code=self.trust_remote_code)
        return self._bundle

    def __repr__(self) -> str:
        return f"TeacherRef({self.name!r}, {self.model!r})"


@dataclass
class RunContext:
    """Everything a strategy may use while it runs."""

    stage_dir: Path
    """Where the stage writes its extra files (reports, plots). A temporary directory that the
    engine renames into place only when the stage has succeeded."""
    work_dir: Path
    """Survives interruptions: checkpoints go here so that a killed run resumes."""
    device: torch.device
    seed: int
    teachers: Mapping[str, TeacherRef]
    base_dir: Path
    """Relative paths in parameters are resolved against this (the recipe's directory)."""
    console: Console = field(default_factory=lambda: Console(log_path=False))
    metrics: dict[str, Any] = field(default_factory=dict)
    """Numbers the strategy wants recorded in ``stage.json``."""
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def resolve_path(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def progress(self, *extra_columns) -> Progress:
        """A rich progress display in the house style; use as a context manager."""
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            *extra_columns,
            console=self.console,
            disable=not self.is_main,
        )

    def log(self, message: str) -> None:
        """A timestamped line; a plugin's lines are labelled with its module (``[my_plugin]``),
        so that a reader knows whose message it is."""
        if self.is_main:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller and caller.split(".")[0] != "compresso":
                self.console.log(f"[dim]\\[{escape(caller)}][/dim] {message}")
            else:
                self.console.log(message)


class CompressionStrategy(ABC):
    """Base class for every compression step, built-in or third-party.

    Subclasses set ``name``, ``summary`` and ``Params`` and implement ``apply``. They join the
    registry through the ``compresso.strategies`` entry-point group.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Params: ClassVar[type[StrategyParams]] = StrategyParams
    accepts_formats: ClassVar[frozenset[str] | None] = None
    """The ``ModelBundle.format`` values this strategy takes as input; None takes any. Checked along
    the recipe's stage chain when the recipe is validated, before anything runs."""
    reapply_after_finetune: ClassVar[bool] = False
    """True for steps that must follow task fine-tuning to be scored (INT8 quantization): the
    evaluation suite fine-tunes this stage's *input* on a task, then calls ``apply`` on the
    fine-tuned model with the same parameters."""

    def __init__(self, params: StrategyParams | None = None):
        self.params = params if params is not None else self.Params()

    def output_format(self, input_format: str) -> str:
        """The ``ModelBundle.format`` that ``apply`` returns for an input of ``input_format``
        (known from the parameters alone, so that validation can check the stage chain)."""
        return "transformers"

    def preflight(self, ctx: RunContext) -> None:
        """Cheap checks run for every stage before the first stage starts.

        Raise ``StrategyError`` for input that would fail later (missing corpus, missing backend).
        """

    @abstractmethod
    def apply(self, bundle: ModelBundle, ctx: RunContext) -> ModelBundle:
        """Return a new, compressed bundle. May modify ``bundle.model`` in place."""

    # Persistence. The default handles every model ``save_pretrained`` can describe; strategies
    # that produce something else (a quantized graph, irregular shapes) override both.
    @classmethod
    def save(cls, bundle: ModelBundle, path: Path) -> None:
        from compresso.models import save_bundle

        save_bundle(bundle, path)

    @classmethod
    def load(cls, path: Path, model_class: type | None = None, **model_kwargs) -> ModelBundle:
        """Load what ``save`` wrote. ``model_class`` (a transformers auto class such as
        ``AutoModelForTokenClassification``) and ``model_kwargs`` (``num_labels=...``) ask for the
        same backbone with another head, as task fine-tuning needs; None keeps the saved head."""
        raise NotImplementedError(f"strategy {cls.name!r} does not define a saved format")


def check_text_source(corpus, ctx: RunContext, who: str, heldout: int = 0,
                      max_undecodable: float | None = None) -> None:
    """The one check every strategy makes of the text it reads (training, calibration or importance
    text), in its ``preflight``: text files must be UTF-8 text (not a binary file) holding a document
    beyond the held-out slice; a hub dataset needs ``datasets``. Warnings are logged; a refusal is a
    ``StrategyError`` that starts with ``who``."""
    from compresso.corpus import UNDECODABLE_MAX, CorpusError, check_corpus

    if corpus.files:
        try:
            for warning in check_corpus(corpus, heldout, UNDECODABLE_MAX if max_undecodable is None
                                        else max_undecodable):
                ctx.log(f"[yellow]{escape(who)}: {escape(warning)}[/yellow]")
        except CorpusError as exc:
            raise StrategyError(f"{who}: {exc}") from None
    else:
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise StrategyError(f"{who}: `dataset` needs the optional `datasets` package: "
                                f"pip install 'compresso[hub]'") from None


def write_json(path: Path, data: Any) -> None:
    """Write JSON via a temporary file so that a reader never sees half a file (its folder is made
    if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except BaseException:
        try:  # a full disk must not leave an empty or half-written .tmp behind
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
