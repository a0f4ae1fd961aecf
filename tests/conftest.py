"""Shared fixtures: the real offline datasets beside the checkout (../shared/data) or ICRL_DATA_DIR."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _default_data_dir() -> Path:
    env = os.environ.get("ICRL_DATA_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder of JSON Lines mirrors of the paper's datasets; the tests need the real data."""
    path = _default_data_dir()
    if not (path / "banking77" / "train.jsonl").is_file():
        pytest.fail(f"offline data not found at {path}; set ICRL_DATA_DIR to a folder laid out like ../shared/data")
    return path


@pytest.fixture(scope="session")
def lm():
    """The real embedded model (SmolLM2-135M-Instruct), loaded once per test session."""
    import torch

    from icrl_lib.models import load_model

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_model()
