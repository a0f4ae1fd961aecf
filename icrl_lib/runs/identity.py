"""What a run is: its folder's name and the fingerprint of its data, which a resume must match.

The name is readable and stable: the main parameters plus a hash of the config's
:meth:`~icrl_lib.runs.config.ExperimentConfig.identity`, so the same experiment always finds its folder
(:func:`run_dir` is the one rule). The fingerprint (the folder's ``data.json``, written and read by
:mod:`icrl_lib.runs.store`) ties the folder to the rows it used, so a resume on other data is refused."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from icrl_lib.errors import UserError
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.runs.stream import RunData
from icrl_lib.tasks.task import Task


def digest(text: str) -> str:
    """SHA-256 of ``text`` in hex: the one hash of run names, data fingerprints and cache keys."""
    return hashlib.sha256(text.encode()).hexdigest()


def model_label(model_name: str) -> str:
    """A model name as part of a file name (hub ids and folders: ``/`` becomes ``--``)."""
    return model_name.strip("/").replace("/", "--")


def run_name(config: ExperimentConfig) -> str:
    """Readable, stable folder name, e.g. ``trec_coarse__smollm2-135m-instruct__random_unbiased_only_positive_p0.1
    __icrl__t1__seed100-100-100__1a2b3c4d`` (zero-shot: ``...__zeroshot__t1__seed100-100__<hash>``); a server
    backend follows the model: ``smollm2-135m-instruct@llamacpp``."""
    c = config
    model = model_label(c.model_tag)
    identity = digest(json.dumps(c.identity(), sort_keys=True))[:8]
    if c.zero_shot:
        parts = [c.task.label, model, "zeroshot" if c.icrl else "zeroshot-icl", f"t{c.temperature:g}",
                 f"seed{c.seed}-{c.test_seed}", identity]
    else:
        parts = [c.task.label, model, _strategy_label(c), "icrl" if c.icrl else "icl", f"t{c.temperature:g}",
                 f"seed{c.seed}-{c.training_seed}-{c.test_seed}", identity]
    return "__".join(parts)


def run_dir(config: ExperimentConfig) -> Path:
    """``<output_dir>/<run_name>``: where the run of ``config`` lives (the one rule)."""
    return Path(config.output_dir) / run_name(config)


def _strategy_label(c: ExperimentConfig) -> str:
    label = f"{c.context_strategy_name}_p{c.context_p_keep:g}"
    if c.context_strategy_name.startswith("approximate"):
        label += f"_{c.approximate_context_sampling_method}{c.max_contexts}"
    return label


def data_fingerprint(task: Task, data: RunData) -> dict[str, Any]:
    """``data.json``: where the rows came from and a hash of each part used (training stream, exemplars, test set)."""
    def rows_digest(rows) -> str:
        return digest(json.dumps([[ex.text, task.answer(ex)] for ex in rows], ensure_ascii=False))

    return {"source": task.source, "train_steps": len(data.stream), "train": rows_digest(data.stream),
            "exemplars": rows_digest(data.exemplars), "test": rows_digest(data.test), "test_size": len(data.test)}


def check_recorded_data(path: Path, old: Any, task: Task, data: RunData) -> int:
    """The training steps that the data fingerprint ``old`` (read from ``path``, a run folder's ``data.json``) records;
    UserError when it is damaged or of other data than ``data`` (exemplars, test set, or a stream that does not
    begin with the recorded one)."""
    new = data_fingerprint(task, data)
    try:
        n = int(old["train_steps"])
        same_prefix = data_fingerprint(task, RunData((), data.stream[:n], ()))["train"] == old["train"]
        differ = [k for k in ("exemplars", "test") if old[k] != new[k]] + ([] if same_prefix else ["training stream"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: damaged; restore it, or remove the run folder to start over") from None
    if differ:
        raise UserError(f"data: {path.parent} was run on other data ({', '.join(differ)} differ): it used "
                        f"{old.get('source')}, this run reads {task.source}; use the same data_dir / ICRL_DATA_DIR, "
                        "or another output_dir")
    return n
