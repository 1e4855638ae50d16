"""Shared test fixtures. Tests never touch a hub: HF_HUB_OFFLINE is forced on."""

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared fixtures beside the checkout (teachers, data, corpus), or a skip."""
    if not (SHARED / "teachers").is_dir():
        pytest.skip(f"../shared fixtures not found at {SHARED}: teachers, data and corpus live beside "
                    f"the checkout on the project's machines")
    return SHARED
