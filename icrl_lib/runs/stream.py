"""The data of one run: gold exemplars, the training stream and the test set, drawn with the paper's seeds, and the
fingerprint that ties a run folder to them (so a resume on other data is refused)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icrl_lib.errors import UserError
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.runs.store import DATA_FILE, RunStore, digest
from icrl_lib.tasks.task import Example, Task


@dataclass(frozen=True)
class RunData:
    """The rows one run uses: gold exemplars, the training stream and the test set."""

    exemplars: tuple[Example, ...]
    stream: tuple[Example, ...]
    test: tuple[Example, ...]


def sample_data(config: ExperimentConfig, task: Task) -> RunData:
    """Exemplars, training stream and test set of ``config``; UserError when a size exceeds the data."""
    if config.test_k is not None and config.test_k > len(task.test):
        raise UserError(f"test_k: {config.test_k} is more than the {len(task.test)} rows of the test split of "
                        f"{task.name}; allowed: 1..{len(task.test)}, or None for the whole split")
    train_k = 0 if config.zero_shot else config.train_k
    exemplars, stream = task.sample_train(train_k, config.training_seed,
                                          0 if config.zero_shot else config.exemplars_per_label)
    if len(stream) < train_k:
        left = f" left after {len(exemplars)} exemplars" if exemplars else ""
        raise UserError(f"train_k: {train_k} is more than the {len(stream)} training rows of {task.name}{left}; "
                        f"allowed: 1..{len(stream)}")
    return RunData(exemplars, stream, task.sample_test(config.test_k, config.test_seed))


def data_fingerprint(task: Task, data: RunData) -> dict[str, Any]:
    """Where the rows came from and a hash of each part actually used (training stream, exemplars, test set)."""
    def rows_digest(rows) -> str:
        return digest(json.dumps([[ex.text, task.answer(ex)] for ex in rows], ensure_ascii=False))

    return {"source": task.source, "train_steps": len(data.stream), "train": rows_digest(data.stream),
            "exemplars": rows_digest(data.exemplars), "test": rows_digest(data.test), "test_size": len(data.test)}


def check_data(store: RunStore, task: Task, data: RunData, new: dict[str, Any]) -> None:
    """Record the data fingerprint ``new`` of a new run; refuse to resume a run on other data (another data_dir, or
    an edited dataset). A longer stream (larger train_k) must begin with the logged one."""
    old = store.read_json(DATA_FILE)
    if old is not None and check_recorded_data(store.path, old, task, data) >= len(data.stream):
        return
    store.write_json(DATA_FILE, new)


def check_recorded_data(folder: Path, old: Any, task: Task, data: RunData) -> int:
    """The training steps that the data fingerprint ``old`` (``data.json`` of the run folder ``folder``) records;
    UserError when it is damaged or of other data than ``data`` (exemplars, test set, or a stream that does not
    begin with the recorded one)."""
    new = data_fingerprint(task, data)
    try:
        n = int(old["train_steps"])
        same_prefix = data_fingerprint(task, RunData((), data.stream[:n], ()))["train"] == old["train"]
        differ = [k for k in ("exemplars", "test") if old[k] != new[k]] + ([] if same_prefix else ["training stream"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{folder / DATA_FILE}: damaged; restore it, or remove the run folder to start over") from None
    if differ:
        raise UserError(f"data: {folder} was run on other data ({', '.join(differ)} differ): it used "
                        f"{old.get('source')}, this run reads {task.source}; use the same data_dir / ICRL_DATA_DIR, "
                        "or another output_dir")
    return n
