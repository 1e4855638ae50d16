"""Shared test fixtures. Tests never touch a hub: HF_HUB_OFFLINE is forced on."""

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared fixtures beside the checkout (teachers, data, corpus), or a skip."""
    if not (SHARED / "teachers").is_dir():
        pytest.skip(f"../shared fixtures not found at {SHARED}: teachers, data and corpus live beside "
                    f"the checkout on the project's machines")
    return SHARED


@pytest.fixture(autouse=True)
def one_thread():
    """The suite's models are tiny: one intra-op thread is fastest, and on a busy 2-core machine
    two threads waiting on each other were measured 10-70x slower. Tests that time real kernels
    set their own count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
