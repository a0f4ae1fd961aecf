"""Sweeps: many runs at once over methods, tasks, models and seeds, each one resumable run folder as ever.

A sweep is a base config (fields, and/or config YAML files) times axes (lists of values), expanded into
:class:`~icrl_lib.runs.config.ExperimentConfig` values. It is data: a YAML file under ``params/sweeps/`` or a dict::

    name: demo                       # default: the file's stem
    launcher: local                  # local | slurm | ray (see icrl_lib.sweeps.launchers)
    workers: 2                       # runs at once (local: processes; slurm: array parallelism; ray: tasks)
    threads: 1                       # local on CPU: torch threads per worker (default: the cores / workers)
    configs: [params/grid/*/*.yaml]  # optional config files (globs, relative to the checkout), each a base
    base: {task_name: trec_coarse, train_k: 50}   # fields for every run (after the files)
    axes:                            # every combination, applied in this order
      method: [explorative, approximate]          # keys of icrl_lib.paper.methods: the method's fields
      task_name: [trec_coarse, clinic150]         # any config field
      seeds: [100, 101, [102, 7, 7]]              # seed, training_seed, test_seed (an int sets all three)
      task: [{task_name: nlu, train_k: 8000}]     # a mapping of fields per value
    slurm: {partition: gpu, timeout_min: 720}     # submitit parameters (cluster: local runs them locally)
    ray: {address: auto, num_gpus: 1}             # ray.init address and per-run resources

A finished run is skipped, a half-done one resumes, a run held by another process is reported and not computed
twice (the run folder lock). :func:`status` tells done / running / failed / pending per run at any time, also while
another process runs the sweep.
"""
from __future__ import annotations

import glob
import itertools
import json
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd
import yaml

from icrl_lib.errors import UserError
from icrl_lib.paper.methods import BY_KEY, config_fields, name_run
from icrl_lib.paths import project_root
from icrl_lib.runs.config import ExperimentConfig, read_yaml_mapping, with_paths_resolved
from icrl_lib.runs.identity import run_dir, run_name
from icrl_lib.runs.plan import Schedule
from icrl_lib.runs.store import LOG_FILE, SWEEPS_DIR, TABLES_DIR, holder, read_meta

LAUNCHERS = ("local", "slurm", "ray")
SWEEP_KEYS = ("name", "launcher", "workers", "threads", "configs", "base", "axes", "slurm", "ray")
STATES = ("done", "running", "failed", "pending")


@dataclass(frozen=True)
class Sweep:
    """An expanded sweep: its runs and how to launch them."""

    name: str
    configs: tuple[ExperimentConfig, ...]
    _: KW_ONLY  # the settings by name: a new one never shifts the others
    launcher: str = "local"
    workers: int = 1
    threads: int | None = None  # local launcher on CPU: torch threads per worker (None: the cores / workers)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per launcher: slurm / ray settings

    @property
    def folder(self) -> Path:
        """``<output_dir>/_sweeps/<name>/``: failure records and per-run logs (of the first run's output_dir)."""
        return Path(self.configs[0].output_dir) / SWEEPS_DIR / self.name


def load_sweep(source: str | Path | Mapping[str, Any], root: str | Path | None = None, **overrides: Any) -> Sweep:
    """A sweep from a YAML file or a mapping (``overrides`` replace top-level keys, e.g. ``workers=2``).

    Relative paths (config files, output_dir) are resolved against ``root`` (default: the checkout). UserError
    names the file and key on any mistake, before anything runs."""
    label = str(source) if isinstance(source, (str, Path)) else "sweep"
    spec = dict(read_yaml_mapping(source) if isinstance(source, (str, Path)) else source)
    spec.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise UserError(f"{label}: unknown key(s) {unknown}; allowed: {', '.join(SWEEP_KEYS)}")
    root = Path(root) if root else project_root()
    name = spec.get("name") or (Path(source).stem if isinstance(source, (str, Path)) else "sweep")
    launcher, workers = spec.get("launcher", "local"), spec.get("workers", 1)
    if launcher not in LAUNCHERS:
        raise UserError(f"{label}: launcher: got {launcher!r}; allowed: {', '.join(LAUNCHERS)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"{label}: workers: must be an integer >= 1, got {workers!r}")
    threads = spec.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UserError(f"{label}: threads: must be an integer >= 1 (torch threads per local worker), got {threads!r}")
    bases = [dict(spec.get("base") or {})]
    if spec.get("configs"):
        files = sorted({f for pattern in _as_list(spec["configs"])
                        for f in glob.glob(str(root / pattern), recursive=True)})
        if not files:
            raise UserError(f"{label}: configs: no file matches {spec['configs']!r} under {root}")
        bases = [{**read_yaml_mapping(f), **bases[0]} for f in files]
    configs = expand(bases, spec.get("axes") or {}, label)
    configs = [with_paths_resolved(c) for c in configs]
    options = {k: MappingProxyType(dict(spec.get(k) or {})) for k in ("slurm", "ray")}
    return Sweep(str(name), tuple(configs), launcher=launcher, workers=workers, threads=threads,
                 options=MappingProxyType(options))


def expand(bases: list[Mapping[str, Any]], axes: Mapping[str, list], label: str = "sweep") -> list[ExperimentConfig]:
    """Every base times every combination of axis values, as validated configs, duplicates (same run folder) once."""
    axes = dict(axes)
    for axis, values in axes.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{label}: axes.{axis}: expected a non-empty list of values, got {values!r}")
    out: dict[tuple, ExperimentConfig] = {}
    for base in bases:
        for combo in itertools.product(*axes.values()):
            fields = dict(base)
            for axis, value in zip(axes, combo):
                fields.update(_axis_fields(axis, value, label))
            try:
                config = ExperimentConfig.from_dict(fields)
            except ValueError as err:
                raise UserError(f"{label}: {err} (in the run {dict(zip(axes, combo))})") from None
            out.setdefault((config.output_dir, run_name(config)), config)
    return list(out.values())


def _axis_fields(axis: str, value: Any, label: str) -> dict[str, Any]:
    if axis == "method":
        if value not in BY_KEY:
            raise UserError(f"{label}: axes.method: unknown method {value!r}; allowed: {', '.join(BY_KEY)}")
        return config_fields(value)
    if axis == "seeds":
        triple = [value] * 3 if isinstance(value, int) else value
        if not (isinstance(triple, list) and len(triple) == 3):
            raise UserError(f"{label}: axes.seeds: each value is an int or [seed, training_seed, test_seed], got "
                            f"{value!r}")
        return dict(zip(("seed", "training_seed", "test_seed"), triple))
    if isinstance(value, dict):
        return value
    if axis not in ExperimentConfig.__dataclass_fields__:
        raise UserError(f"{label}: axes.{axis}: not a config field; an axis is a field, 'method', 'seeds', or any name "
                        "whose values are mappings of fields")
    return {axis: value}


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def filtered(sweep: Sweep, where: list[str]) -> Sweep:
    """The runs of ``sweep`` whose fields match every ``FIELD=VALUE`` (values compared as YAML scalars)."""
    configs = list(sweep.configs)
    for condition in where:
        key, sep, text = condition.partition("=")
        if not sep or key not in ExperimentConfig.__dataclass_fields__:
            raise UserError(f"--where: expected FIELD=VALUE with a config field, got {condition!r}")
        value = yaml.safe_load(text)
        configs = [c for c in configs if getattr(c, key) == value or str(getattr(c, key)) == text]
    if not configs:
        raise UserError(f"--where: no run of {sweep.name} matches {' and '.join(where)}")
    return replace(sweep, configs=tuple(configs))


def failure_path(sweep_folder: str | Path, config: ExperimentConfig) -> Path:
    """Where a failed run's error is recorded (removed when the run later finishes)."""
    return Path(sweep_folder) / "failures" / f"{run_name(config)}.json"


def status(sweep: Sweep) -> pd.DataFrame:
    """One row per run: state (done / running / failed / pending), steps logged / planned, error, run folder.

    Reads only the run folders and the sweep's failure records, so it works while another process runs the sweep."""
    rows = []
    for config in sweep.configs:
        folder = run_dir(config)
        meta = _meta(folder)  # the run's plan, as its runner recorded it
        done_steps = _lines(folder / LOG_FILE)
        planned = meta.get("steps") if meta.get("train_size") == (0 if config.zero_shot else config.train_k) else None
        failure = _json(failure_path(sweep.folder, config))
        if holder(folder) is not None:
            state = "running"
        elif planned is not None and done_steps >= planned:
            state = "done"
        elif failure is not None:
            state = "failed"
        else:
            state = "pending"
        rows.append({"run": folder.name, "method": name_run(config.to_dict()), "task_name": config.task_name,
                     "model_name": config.model_name, "seed": config.seed, "state": state, "steps_done": done_steps,
                     "steps": planned if planned is not None else (1 if config.zero_shot else config.train_k),
                     "error": (failure or {}).get("error") if state == "failed" else None, "run_dir": str(folder)})
    return pd.DataFrame(rows, columns=["run", "method", "task_name", "model_name", "seed", "state", "steps_done",
                                       "steps", "error", "run_dir"])


def time_left(sweep: Sweep, table: pd.DataFrame) -> float | None:
    """Seconds until the sweep's unfinished runs are done, from the steps its runs have logged: a training step and a
    test step (the whole test set) are timed apart, and runs go ``workers`` at a time. None before any training
    step has been timed (a zero-shot run's one test step says nothing of a 150-step run)."""
    train, tests = [], []
    for folder in table["run_dir"]:
        try:
            logged = pd.read_parquet(Path(folder) / TABLES_DIR / "steps.parquet", columns=["seconds", "tested"])
        except (OSError, ValueError):
            continue  # no test step written yet
        train += logged.loc[~logged["tested"], "seconds"].tolist()
        tests += logged.loc[logged["tested"], "seconds"].tolist()
    if not train:
        return None
    per_train = float(pd.Series(train).mean())
    per_test = max(float(pd.Series(tests).mean()) - per_train, 0.0) if tests else 0.0
    left, runs = 0.0, 0
    for config, row in zip(sweep.configs, table.to_dict("records")):
        if row["state"] == "done":
            continue
        schedule = Schedule.of(config, budget=config.train_k)  # ICL: at most train_k steps
        tests_left = sum(1 for s in schedule.test_steps if s >= row["steps_done"])
        left += max(row["steps"] - row["steps_done"], 0) * per_train + tests_left * per_test
        runs += 1
    return left / max(1, min(sweep.workers, runs)) if runs else 0.0


def summary(table: pd.DataFrame) -> str:
    """``12 runs: 7 done, 2 running, 1 failed, 2 pending``."""
    counts = table["state"].value_counts()
    return f"{len(table)} runs: " + ", ".join(f"{int(counts.get(s, 0))} {s}" for s in STATES)


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def _meta(folder: Path) -> dict[str, Any]:
    """The run's ``meta.json``; a damaged one reads as none (the status is read while runs go on)."""
    try:
        return read_meta(folder)
    except UserError:
        return {}


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
