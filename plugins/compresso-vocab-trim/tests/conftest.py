"""Fixtures for the plugin's own tests: tiny models and tokenizers built here, nothing downloaded.

The tests run against the installed distribution (``pip install -e plugins/compresso-vocab-trim``);
from a bare checkout the ``src`` folder is put on ``sys.path`` instead, so they also run inside
compresso's own suite.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if importlib.util.find_spec("compresso_vocab_trim") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pytest  # noqa: E402

from vocab_trim_fixtures import ROMANIAN, make_context  # noqa: E402


@pytest.fixture
def ctx(tmp_path):
    return make_context(tmp_path)


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    path = tmp_path / "romanian.txt"
    path.write_text("\n".join(ROMANIAN) + "\n\n")  # the blank line must be skipped
    return path

