"""Shared helpers for the benchmarks: machine description and time spent inside the model's forward."""
from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager

import torch


def machine() -> str:
    """One line describing where the numbers were measured."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    return f"{device}; torch {torch.__version__}; python {platform.python_version()}"


@contextmanager
def forward_timer(model):
    """Accumulate wall time spent inside ``model.forward`` (the raw forward passes) while the block runs."""
    spent = {"seconds": 0.0, "calls": 0, "tokens": 0}
    original = model.forward

    def timed(*args, **kwargs):
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        start = time.perf_counter()
        out = original(*args, **kwargs)
        sync()
        spent["seconds"] += time.perf_counter() - start
        spent["calls"] += 1
        ids = kwargs.get("input_ids")
        spent["tokens"] += int(ids.numel()) if ids is not None else 0
        return out

    model.forward = timed  # nn.Module.__call__ dispatches to the instance attribute
    try:
        yield spent
    finally:
        del model.forward
