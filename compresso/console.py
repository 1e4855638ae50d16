"""How compresso writes to the terminal: one pair of consoles, verbosity, and known import noise.

Imports nothing heavy (no torch, no transformers), so ``compresso --help`` stays fast.
"""

from __future__ import annotations

import logging
import os

from rich.console import Console

PIPED_WIDTH = 200
"""Width when output goes to a file or a pipe: rich would otherwise wrap at 80 columns, and
progress bars would shrink to ``distilling ━ 4… … 0…``."""

class SafeConsole(Console):
    """A rich console that never fails on text: compresso's own messages use markup (``[dim]``),
    and user text is escaped where it is inserted; should a bracket still slip through (a plugin's
    log line naming a file ``a[/b]``), the line is printed as plain text instead of raising."""

    def print(self, *objects, **kwargs):
        from rich.errors import MarkupError

        try:
            return super().print(*objects, **kwargs)
        except MarkupError:
            return super().print(*objects, **{**kwargs, "markup": False})

    def log(self, *objects, **kwargs):
        from rich.errors import MarkupError

        try:
            return super().log(*objects, **kwargs)
        except MarkupError:
            return super().log(*objects, **{**kwargs, "markup": False})


# Log lines carry a time but no ``file:line`` suffix: the suffix named compresso's own file even for
# a plugin's message, and it halved the room left for the message itself.
console = SafeConsole(log_path=False)
err_console = SafeConsole(stderr=True, log_path=False)


def print_error(message: str, label: str = "error:", style: str = "bold red", target: Console | None = None) -> None:
    """``error: <message>`` on stderr. The message is plain text (user text may hold ``[brackets]``,
    which rich would read as markup) and is never wrapped: wrapped at some width, a message
    reaches a pipe or a log file split mid-phrase, and a script or a test matching it fails."""
    from rich.text import Text

    text = Text.assemble((label, style), " ", message) if label else Text(message, style=style)
    (target or err_console).print(text, soft_wrap=True, highlight=False)

VERBOSITY = 0
"""-1 quiet (-q), 0 normal, 1 verbose (-v)."""

# Messages that third-party packages emit on import and that say nothing about the user's run:
# (logger name, text the message contains). torchao is imported by transformers whenever a model
# is loaded, even by recipes that never quantize; on a CPU machine it cannot load its CUDA kernels
# and says so, and it registers enums in a way torch now deprecates.
KNOWN_IMPORT_NOISE: tuple[tuple[str, str], ...] = (
    ("torchao", "Failed to load"),
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported"),
    ("torchao.kernel.intmm", "Detected no triton"),  # triton is a GPU compiler; CPU runs never need it
)


class _DropKnownNoise(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return self.text not in record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True


def silence_known_import_noise() -> None:
    """Drop only the messages listed in ``KNOWN_IMPORT_NOISE``; everything else still shows.
    Idempotent; installs logging filters without importing the packages concerned."""
    for name, text in KNOWN_IMPORT_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNoise) and f.text == text for f in logger.filters):
            logger.addFilter(_DropKnownNoise(text))


def configure(verbosity: int = 0, consoles: tuple[Console, ...] | None = None) -> None:
    """Set up output for a command: width when piped, quiet/verbose, Python logging, import noise.

    - piped (not a terminal, no ``COLUMNS``): lines up to ``PIPED_WIDTH`` columns instead of 80;
    - ``verbosity < 0`` (``-q``): progress and log lines off, errors and the final result stay;
    - ``verbosity > 0`` (``-v``): Python ``logging`` records at INFO from every logger (plugins'
      included, labelled with the logger's name), and transformers' own warnings.
    """
    global VERBOSITY
    VERBOSITY = verbosity
    for c in consoles or (console, err_console):
        if not c.is_terminal and not os.environ.get("COLUMNS") and c.width < PIPED_WIDTH:
            c.width = PIPED_WIDTH  # widen only: a width set on purpose (wider) stays
    console.quiet = verbosity < 0
    silence_known_import_noise()
    from rich.logging import RichHandler

    root = logging.getLogger()
    if not any(getattr(h, "_compresso", False) for h in root.handlers):
        handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False, markup=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        handler._compresso = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbosity > 0 else logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if verbosity <= 0:
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def quiet_hub_progress() -> None:
    """compresso draws its own progress bars; transformers' per-file loading bars only add noise."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if VERBOSITY > 0:
        hf_logging.set_verbosity_warning()
