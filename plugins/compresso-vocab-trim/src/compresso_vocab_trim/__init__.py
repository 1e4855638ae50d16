"""compresso-vocab-trim: a compresso strategy plugin, and a template for writing your own.

compresso finds ``VocabTrimStrategy`` through the ``compresso.strategies`` entry point declared
in this distribution's ``pyproject.toml``; nothing else registers it.
"""

from importlib.metadata import PackageNotFoundError, version

from compresso_vocab_trim.strategy import VocabTrimParams, VocabTrimStrategy

try:
    __version__ = version("compresso-vocab-trim")
except PackageNotFoundError:  # imported from a source checkout without installing
    __version__ = "0+unknown"

__all__ = ["VocabTrimStrategy", "VocabTrimParams", "__version__"]
