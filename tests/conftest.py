"""Shared fixtures: the real offline datasets beside the checkout (../shared/data) or ICRL_DATA_DIR."""
from __future__ import annotations

import pytest

from icrl_lib.tasks.task import SHARED_DATA, resolve_data_dir


@pytest.fixture(scope="session")
def data_dir():
    """Folder of JSON Lines mirrors of the paper's datasets, found as the library finds it; the tests need real data."""
    path = resolve_data_dir()
    if path is None or not (path / "banking77" / "train.jsonl").is_file():
        pytest.fail(f"offline data not found at {path or SHARED_DATA}; set ICRL_DATA_DIR to a folder laid out like "
                    "../shared/data")
    return path


@pytest.fixture(scope="session")
def lm():
    """The real embedded model (SmolLM2-135M-Instruct), loaded once per test session."""
    import torch

    from icrl_lib.engine.models import load_model

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_model()


@pytest.fixture(autouse=True)
def _model_marker_is_honest(request, monkeypatch):
    """`make test-fast` deselects `model` tests: a test that loads the model without the marker fails here."""
    if request.node.get_closest_marker("model") is not None:
        return
    message = f"{request.node.nodeid} loads the embedded model: mark it @pytest.mark.model"
    assert "lm" not in request.fixturenames, message

    def refuse(*args, **kwargs):
        raise AssertionError(message)

    from icrl_lib.engine import models

    from icrl_lib.runs import loop as runner

    from icrl_lib.runs import window

    for module in (models, runner, window):
        monkeypatch.setattr(module, "load_model", refuse)
