"""Run folders: resolved config, an append-only crash-safe step log, small JSON side files. No pickle.

``<output_dir>/<run_name>/`` holds ``config.yaml`` (no secrets), ``steps.jsonl`` (one JSON object per completed
step, each written with a single write + flush + fsync, so a kill at any moment leaves at most a torn last line,
which is dropped on reopen), ``meta.json`` and ``tables/*.parquet``. The run name is readable and stable: the main
parameters plus a hash of every result-affecting field, so the same config always finds its own folder.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import ExperimentConfig, load_config


def run_name(config: ExperimentConfig) -> str:
    """Readable, stable folder name, e.g. ``trec_coarse__smollm2-135m-instruct__random_unbiased_only_positive_p0.1
    __icrl__t1.0__seed100-100-100__1a2b3c4d``."""
    c = config
    strategy = f"{c.context_strategy_name}_p{c.context_p_keep:g}"
    if c.context_strategy_name.startswith("approximate"):
        strategy += f"_{c.approximate_context_sampling_method}{c.max_contexts}"
    mode = "icrl" if c.icrl else "icl"
    if c.max_context_examples == 0:
        mode = "zeroshot"
    digest = hashlib.sha256(json.dumps(c.result_fields(), sort_keys=True).encode()).hexdigest()[:8]
    parts = [c.task_name, c.model_name.strip("/").replace("/", "--"), strategy, mode, f"t{c.temperature:g}",
             f"seed{c.seed}-{c.training_seed}-{c.test_seed}", digest]
    return "__".join(parts)


def _fsync_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class RunStore:
    """One run folder; ``open`` creates it or reopens it for resuming."""

    path: Path
    config: ExperimentConfig

    @classmethod
    def open(cls, config: ExperimentConfig) -> "RunStore":
        """Create the folder for ``config`` or reopen it; refuse a folder that holds a different experiment."""
        path = Path(config.output_dir) / run_name(config)
        saved = path / "config.yaml"
        if saved.is_file():
            old = load_config(yaml.safe_load(saved.read_text(encoding="utf-8")) or {}).result_fields()
            new = config.result_fields()
            differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if differ:
                raise ValueError(f"{path} holds a different experiment (differs in: {', '.join(differ)}); "
                                 "use another output_dir or remove that folder")
        else:
            path.mkdir(parents=True, exist_ok=True)
            _fsync_write(saved, yaml.safe_dump(config.to_dict(), sort_keys=False))
        store = cls(path, config)
        store._drop_torn_tail()
        return store

    @property
    def log_path(self) -> Path:
        return self.path / "steps.jsonl"

    def _drop_torn_tail(self) -> None:
        """Truncate a last line that a kill left unfinished or unparsable, so appends start on a clean line."""
        if not self.log_path.is_file():
            return
        data = self.log_path.read_bytes()
        end = len(data)
        if data and not data.endswith(b"\n"):
            end = data.rfind(b"\n") + 1
        else:
            last_start = data.rfind(b"\n", 0, max(0, end - 1)) + 1
            if end and not _parses(data[last_start:end]):
                end = last_start
        if end != len(data):
            with open(self.log_path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())

    def records(self) -> list[dict[str, Any]]:
        """Every complete step record in order; a torn last line is ignored, a corrupt earlier line raises."""
        if not self.log_path.is_file():
            return []
        lines = self.log_path.read_bytes().split(b"\n")
        out = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                if i >= len(lines) - 2 and not any(x.strip() for x in lines[i + 1:]):
                    break  # torn last line: the step it belonged to will be recomputed
                raise ValueError(f"{self.log_path}: line {i + 1} is corrupt ({err}); it is not the last line, so "
                                 "the log cannot be resumed safely") from err
        return out

    def append(self, record: dict[str, Any]) -> None:
        """Append one step record durably (one write, flush, fsync)."""
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def write_json(self, name: str, obj: Any) -> Path:
        """Write a small JSON side file atomically."""
        target = self.path / name
        _fsync_write(target, json.dumps(obj, indent=1, sort_keys=True))
        return target

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))


def _parses(line: bytes) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False
