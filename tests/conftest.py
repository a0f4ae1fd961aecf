"""Shared fixtures: the real offline datasets (../shared/data or ICRL_DATA_DIR), the real embedded model, and the
tiny random-weight model that carries the mechanics tests; markers keep `make test-fast` honest."""
from __future__ import annotations

import pytest

from icrl_lib.tasks.sources import SHARED_DATA, resolve_data_dir
from tests.helpers import save_tiny_model, small

MARKERS = {"lm": "model", "tiny": "tiny", "tiny_reference": "tiny", "data_dir": "data"}  # fixture -> its marker


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


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The tiny model, saved once per session as a local model folder and loaded once: ``tiny.name`` is the folder
    (a ``model_name`` subprocesses can load), ``tiny`` the loaded model (in-process runs reuse it)."""
    from icrl_lib.engine.models import load_model

    folder = save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
    return load_model(str(folder), device="cpu")


@pytest.fixture(scope="session")
def tiny_reference(tiny, tmp_path_factory):
    """The one shared reference run of the mechanics tests (kill, Ctrl-C, lock, full disk, launchers compare
    against it): 30 explorative steps on the committed support-tickets task."""
    from icrl_lib.runs.loop import run_experiment

    config = small(tmp_path_factory.mktemp("reference"), model_name=tiny.name)
    return run_experiment(config, progress=False, lm=tiny)


@pytest.fixture(autouse=True)
def _markers_are_honest(request, monkeypatch):
    """`make test-fast` deselects `model`, `tiny` and `data` tests: a test that uses one of their fixtures without the
    marker, or loads the real model unmarked, fails here."""
    for fixture, marker in MARKERS.items():
        if fixture in request.fixturenames:
            assert request.node.get_closest_marker(marker) is not None, \
                f"{request.node.nodeid} uses {fixture}: mark it @pytest.mark.{marker}"
    if request.node.get_closest_marker("model") is not None or request.node.get_closest_marker("tiny") is not None:
        return
    message = f"{request.node.nodeid} loads a model: mark it @pytest.mark.model (or tiny)"

    def refuse(*args, **kwargs):
        raise AssertionError(message)

    from icrl_lib.engine import models
    from icrl_lib.runs import window

    for module in (models, window):
        monkeypatch.setattr(module, "load_model", refuse)
