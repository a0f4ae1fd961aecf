"""Run folders, the one owner of their format: files, one process at a time, a crash-safe step log, side files
written atomically. No pickle.

``<output_dir>/<run_name>/`` holds ``config.yaml`` (no secrets), ``data.json`` (fingerprint of the data used),
``steps.jsonl`` (one JSON object per completed step, each written with a single write + flush + fsync),
``meta.json`` (the run's plan and model facts), ``debug_prompts.txt``, ``tables/*.parquet`` and ``figures/``. Beside
the run folders: ``_cache/`` (context capacities), ``_sweeps/`` and ``_analysis/``. The folder's name, and the
fingerprint ``data.json`` holds, are :mod:`icrl_lib.runs.identity`'s.

Guarantees: a process holds an exclusive lock on the folder (``.lock``, ``flock``) for the whole run, so a second
process is refused with the holder's PID; the kernel drops the lock when the holder dies, even by ``kill -9``.
Side files are written under a unique temporary name, fsynced, then renamed over the target, so a reader sees the
old or the new file, never half of one. One reader per file: :func:`read_log` (the step log), :func:`read_meta`
and :func:`read_data` (the side files).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from icrl_lib.errors import RunLockedError, UserError, os_error
from icrl_lib.runs.config import ExperimentConfig, load_config, read_yaml_mapping
from icrl_lib.runs.durable import atomic_write_text, file_lock
from icrl_lib.runs.identity import check_recorded_data, data_fingerprint, run_dir
from icrl_lib.runs.record import StepRecord
from icrl_lib.runs.stream import RunData
from icrl_lib.tasks.task import Task

log = logging.getLogger("icrl")
# The run folder's files, and the folders beside run folders in an output_dir.
CONFIG_FILE, LOG_FILE, META_FILE, DATA_FILE = "config.yaml", "steps.jsonl", "meta.json", "data.json"
DEBUG_FILE, LOCK_FILE, TABLES_DIR, FIGURES_DIR = "debug_prompts.txt", ".lock", "tables", "figures"
CACHE_DIR, SWEEPS_DIR, ANALYSIS_DIR = "_cache", "_sweeps", "_analysis"
DEBUG_SEPARATOR = "=" * 80 + "\n"  # between two prompts in debug_prompts.txt


def run_folders(output_dir: str | os.PathLike) -> list[Path]:
    """Every run folder under ``output_dir`` (those holding a config), sorted by name."""
    return sorted(cfg.parent for cfg in Path(output_dir).glob(f"*/{CONFIG_FILE}"))


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete record of a step log, in order: the one reader of ``steps.jsonl``.

    Policy: a last line without its newline was torn by a kill (or a full disk) in the middle of a write: it is
    dropped, and the step it belonged to is recomputed. Any other line that is not a JSON object is corruption:
    UserError naming the file and line. Record ``i`` is on line ``i + 1``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise os_error("reading", path, err) from None
    lines = data.split(b"\n")
    lines.pop()  # the text after the last newline: empty, or a torn line that is dropped
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            record, reason = None, str(err)
        else:
            reason = f"a JSON {type(record).__name__}, not an object"
        if not isinstance(record, dict):
            raise UserError(f"{path}: line {number} is corrupt ({reason}); it is not the last line, so the run cannot "
                            "be resumed or read safely: restore the file, or remove the run folder to start over")
        records.append(record)
    return records


def read_records(run_dir: str | os.PathLike) -> list[StepRecord]:
    """A run's step log as typed records (:func:`read_log`); a record of the wrong shape is refused with the file and
    line."""
    path = Path(run_dir) / LOG_FILE
    out = []
    for number, raw in enumerate(read_log(path), start=1):
        try:
            out.append(StepRecord.from_json(raw))
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{path}: line {number}: malformed record ({type(err).__name__}: {err}); restore the file, "
                            "or remove the run folder to start over") from None
    return out


def writable_run_dir(config: ExperimentConfig) -> Path:
    """:func:`run_dir` of ``config``, once its ``output_dir`` is created if needed and proved writable (before any
    model is loaded); UserError otherwise."""
    path = Path(config.output_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"output_dir: {path} is a file, not a folder; choose a folder for the run folders")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"icrl")
            probe.flush()
    except OSError as err:
        raise os_error("output_dir: writing in", path, err, "choose a writable folder") from None
    return run_dir(config)


def read_meta(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``meta.json`` of a run folder (its plan, model facts and where it ran; {} before the run wrote one): the one
    reader. UserError naming the file when it is damaged."""
    meta = _read_json(Path(run_dir) / META_FILE)
    if not isinstance(meta, (dict, type(None))):
        raise UserError(f"{Path(run_dir) / META_FILE}: unreadable (a JSON {type(meta).__name__}, not an object); "
                        "restore it, or remove the run folder to start over")
    return meta or {}


def read_data(run_dir: str | os.PathLike) -> Any:
    """``data.json`` of a run folder (:func:`data_fingerprint`; None before the run wrote one): the one reader."""
    return _read_json(Path(run_dir) / DATA_FILE)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err}); restore it, or remove the run folder to start over") from None


@dataclass
class RunStore:
    """One run folder, held exclusively by this process from :meth:`open` to :meth:`close`."""

    path: Path
    config: ExperimentConfig
    _lock: Any = field(default=None, repr=False)
    _lock_cm: Any = field(default=None, repr=False)

    @classmethod
    def open(cls, path: Path, config: ExperimentConfig) -> RunStore:
        """Create the run folder ``path`` of ``config`` (its plan's ``run_dir``) or reopen it to resume; refuse a
        folder held by another process or holding a different experiment. Use as a context manager (or call
        :meth:`close`) to release the lock."""
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise os_error("output_dir: creating", path, err) from None
        store = cls(path, config)
        store._acquire()
        try:
            store._check_config()
            store._drop_torn_tail()
        except BaseException:
            store.close()
            raise
        return store

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the folder's lock (idempotent); an empty lock file means nobody runs the folder."""
        if self._lock_cm is not None:
            try:
                self._lock.seek(0)
                self._lock.truncate()
            except OSError:
                pass  # the lock itself is released below all the same
            self._lock_cm.__exit__(None, None, None)
            self._lock_cm = self._lock = None

    def _acquire(self) -> None:
        lock_path = self.path / LOCK_FILE
        cm = file_lock(lock_path, blocking=False)
        try:
            fh = cm.__enter__()
        except BlockingIOError:
            raise RunLockedError(f"run folder {self.path} is in use by {_holder(lock_path)}; a second process would "
                                 "corrupt its log: wait for that one to finish (it resumes nothing twice), or stop it "
                                 "and rerun") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        self._lock_cm, self._lock = cm, fh

    def _check_config(self) -> None:
        saved = self.path / CONFIG_FILE
        if not saved.is_file():
            self._write(CONFIG_FILE, yaml.safe_dump(self.config.to_dict(), sort_keys=False))
            return
        try:
            old = load_config(read_yaml_mapping(saved))
        except ValueError as err:
            raise UserError(f"{saved}: not a valid run configuration ({err}); restore it, or remove the run folder "
                            "to start over") from None
        new_id, old_id = self.config.identity(), old.identity()
        differ = sorted(k for k in set(old_id) | set(new_id) if old_id.get(k) != new_id.get(k))
        if differ:
            raise UserError(f"{self.path} holds a different experiment (differs in: {', '.join(differ)}); "
                            "use another output_dir or remove that folder")
        if self.config.train_k < old.train_k:
            raise UserError(f"train_k: {self.path} holds a run of train_k={old.train_k}; train_k={self.config.train_k} "
                            f"would stop inside it: ask for train_k >= {old.train_k} (its tables hold every step), or "
                            "use another output_dir")
        if self.config.train_k > old.train_k:
            log.info("extending %s from train_k=%d to %d", self.path.name, old.train_k, self.config.train_k)
        if self.config.to_dict() != old.to_dict():
            self._write(CONFIG_FILE, yaml.safe_dump(self.config.to_dict(), sort_keys=False))

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    def _drop_torn_tail(self) -> None:
        """Truncate a last line that a kill left without its newline, so appends start on a clean line."""
        try:
            with open(self.log_path, "r+b") as fh:
                data = fh.read()
                end = data.rfind(b"\n") + 1
                if end != len(data):
                    fh.truncate(end)
                    fh.flush()
                    os.fsync(fh.fileno())
        except FileNotFoundError:
            return
        except OSError as err:
            raise os_error("repairing", self.log_path, err) from None

    def records(self) -> list[StepRecord]:
        """Every complete step record in order (see :func:`read_records`)."""
        return read_records(self.path)

    def append(self, record: StepRecord) -> None:
        """Append one step record durably (one write, flush, fsync)."""
        line = json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"
        try:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            raise os_error("appending to", self.log_path, err, "the steps logged before are kept: fix the cause and "
                           "rerun the same command to resume") from None

    def trim_debug_prompts(self, written: int) -> None:
        """Keep exactly the first ``written`` debug prompts (those of the replayed steps), so a resume repeats none."""
        path = self.path / DEBUG_FILE
        if path.is_file():
            entries = path.read_text(encoding="utf-8").split(DEBUG_SEPARATOR)
            if len(entries) - 1 > written:
                path.write_text("".join(e + DEBUG_SEPARATOR for e in entries[:written]), encoding="utf-8")

    def write_debug_prompt(self, prompt: str) -> None:
        """Append one full prompt to ``debug_prompts.txt``."""
        with open(self.path / DEBUG_FILE, "a", encoding="utf-8") as fh:
            fh.write(prompt + "\n" + DEBUG_SEPARATOR)

    def check_data(self, task: Task, data: RunData) -> None:
        """Record the data fingerprint of a new run; refuse to resume a run on other data (another data_dir, or an
        edited dataset). A longer stream (larger train_k) must begin with the logged one."""
        old = read_data(self.path)
        if old is None or check_recorded_data(self.path / DATA_FILE, old, task, data) < len(data.stream):
            self._write(DATA_FILE, _json_text(data_fingerprint(task, data)))

    def meta(self) -> dict[str, Any]:
        """The run's ``meta.json`` (:func:`read_meta`)."""
        return read_meta(self.path)

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Record the run's plan and where it runs (``meta.json``)."""
        self._write(META_FILE, _json_text(meta))

    def _write(self, name: str, text: str) -> None:
        """Every side file is written here: all or nothing (``durable.atomic_write_text``)."""
        atomic_write_text(self.path / name, text)


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)


def holder(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Who runs ``run_dir`` now, read without touching the lock: ``{"pid", "host", "since"}``, or None.

    A holder on this host is checked to be alive (a ``kill -9`` leaves its line behind); on another host (a
    cluster node) the line is believed while the step log changed in the last 15 minutes."""
    path = Path(run_dir) / LOCK_FILE
    try:
        parts = path.read_text(encoding="utf-8").split()
    except OSError:
        return None
    if len(parts) < 6 or parts[0] != "pid" or not parts[1].isdigit():
        return None
    who = {"pid": int(parts[1]), "host": parts[3], "since": " ".join(parts[5:])}
    if who["host"] == socket.gethostname():
        try:
            os.kill(who["pid"], 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by someone else
        return who
    log_file = Path(run_dir) / LOG_FILE
    recent = log_file.is_file() and time.time() - log_file.stat().st_mtime < 900
    return who if recent else None


def _holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text.replace("pid", "process", 1) if text.startswith("pid ") else "another process"
