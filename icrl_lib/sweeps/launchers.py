"""Launchers: one interface, three engines, for the runs of a :class:`~icrl_lib.sweeps.sweep.Sweep`.

- ``local``: N worker processes on this machine (``concurrent.futures`` with spawn). On a host with GPUs each worker
  owns one GPU (``CUDA_VISIBLE_DEVICES`` set before torch loads, so an 8B model never spreads over all GPUs); on
  CPU the cores are split between workers (torch threads), so N workers do not oversubscribe. Workers die with the
  launcher (Linux ``PR_SET_PDEATHSIG``), so a killed sweep leaves no orphan holding a run.
- ``slurm``: submitit job arrays (``pip install -e ".[slurm]"``); a preempted or timed-out job is requeued and
  resumes from its step log. ``slurm: {cluster: local}`` runs the same code path without Slurm.
- ``ray``: Ray tasks with a CPU/GPU request per run (``pip install -e ".[ray]"``), on a local ``ray.init`` or a
  cluster (``ray: {address: auto}``).

Every engine calls :func:`run_one` per run: it loads each model once per worker process, runs (or resumes) the
run, and turns any failure into a record instead of stopping the sweep. A run held by another process is skipped.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

import pandas as pd

from icrl_lib.errors import RunLockedError, UserError
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.runs.durable import atomic_write_text
from icrl_lib.runs.identity import run_name
from icrl_lib.runs.progress import format_duration
from icrl_lib.sweeps.sweep import Sweep, failure_path, status, summary, time_left

_MODELS: dict[tuple, Any] = {}  # per worker process: loaded models, reused by the runs it is given


def run_one(config_fields: dict[str, Any], sweep_folder: str) -> dict[str, Any]:
    """Run (or resume) one config in this process; never raises. Returns ``{"run", "state", "error", ...}``.

    Progress lines go to ``<sweep folder>/logs/<run>.log``; a failure is recorded in ``failures/<run>.json`` (and
    removed once the run finishes)."""
    started = time.time()
    config = ExperimentConfig.from_dict(config_fields)
    name = run_name(config)
    folder = Path(sweep_folder)
    failure = failure_path(folder, config)
    out: dict[str, Any] = {"run": name, "started": started, "pid": os.getpid(), "host": socket.gethostname()}
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    try:
        with open(folder / "logs" / f"{name}.log", "a", encoding="utf-8") as log, \
                contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            from icrl_lib.runs.loop import run_experiment

            lm = _model(config) if config.backend_entry.in_process else None  # a server loads none here
            out["model_ready"] = time.time()
            result = run_experiment(config, progress=False, lm=lm)
        failure.unlink(missing_ok=True)
        return {**out, "state": "done", "steps": len(result.records), "error": None, "ended": time.time()}
    except RunLockedError as err:
        return {**out, "state": "skipped", "error": str(err), "ended": time.time()}
    except Exception as err:  # noqa: BLE001 - one run's failure must not stop the sweep
        message = str(err) if isinstance(err, (UserError, ValueError, OSError)) else f"{type(err).__name__}: {err}"
        failure.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(failure, json.dumps({"run": name, "error": message.splitlines()[0] if message else repr(err),
                                               "traceback": traceback.format_exc(), "host": out["host"],
                                               "pid": out["pid"], "when": time.strftime("%Y-%m-%d %H:%M:%S")}))
        return {**out, "state": "failed", "error": message, "ended": time.time()}


def _model(config: ExperimentConfig):
    """This worker's copy of ``config``'s model (loaded on first use; one per name, device, remote-code flag, YaRN
    factor and dtype)."""
    from icrl_lib.engine.models import load_model

    key = (config.model_name, config.device, config.trust_remote_code, config.yarn_factor, config.dtype)
    if key not in _MODELS:
        _MODELS.clear()  # one model at a time per worker: memory, not speed, is the constraint on GPUs
        _MODELS[key] = load_model(config.model_name, config.device, config.trust_remote_code,
                                  yarn_factor=config.yarn_factor, dtype=config.dtype)
    return _MODELS[key]


def run_sweep(sweep: Sweep, report: Callable[[str], None] = print, poll_seconds: float = 60) -> pd.DataFrame:
    """Run every run of ``sweep`` not done yet (failed ones are retried) and return its status table.

    Runs held by another process are reported and left to it. ``report`` gets one line per event, and every
    ``poll_seconds`` one line per running run with its step (from the run folders, whatever the launcher)."""
    table = status(sweep)
    todo = [c for c, state in zip(sweep.configs, table["state"]) if state in ("pending", "failed")]
    held = table[table["state"] == "running"]
    report(f"[sweep] {sweep.name}: {summary(table)}; launching {len(todo)} with {sweep.launcher} "
           f"(workers={sweep.workers}); logs in {sweep.folder / 'logs'}")
    for run in held["run"]:
        report(f"[sweep] {run}: held by another process, left to it")
    finished = 0

    def progress(outcome: dict) -> None:
        nonlocal finished
        finished += 1
        seconds = time_left(sweep, status(sweep)) if finished < len(todo) else None
        left = f", ETA {format_duration(seconds)}" if seconds is not None else ""
        error = f": {outcome['error']}" if outcome.get("error") else ""
        report(f"[sweep] {finished}/{len(todo)}{left} | {outcome['state']} {outcome['run']}{error}")

    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(poll_seconds):
            running = status(sweep)
            for row in running[running["state"] == "running"].to_dict("records"):
                report(f"[sweep] running: {row['method']}, {row['task_name']}, seed {row['seed']}: step "
                       f"{row['steps_done']}/{row['steps']}")

    if todo:
        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        try:
            launch(sweep, todo, progress)
        finally:
            stop.set()
    table = status(sweep)
    report(f"[sweep] {sweep.name}: {summary(table)}")
    return table


def launch(sweep: Sweep, configs: list[ExperimentConfig], report: Callable[[dict], None]) -> list[dict]:
    """Run ``configs`` of ``sweep`` with its launcher; ``report`` is called with each outcome as it arrives."""
    folder = str(sweep.folder)
    jobs = [(c.to_dict(), folder) for c in configs]  # no token: workers read HF_TOKEN from their environment
    engine = {"local": _local, "slurm": _slurm, "ray": _ray}[sweep.launcher]
    outcomes = []
    for outcome in engine(sweep, jobs):
        outcomes.append(outcome)
        report(outcome)
    return outcomes


def _local(sweep: Sweep, jobs: list[tuple]):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    gpus = _gpu_count()
    workers = min(sweep.workers, len(jobs), gpus) if gpus else min(sweep.workers, len(jobs))
    threads = sweep.threads or max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: CUDA_VISIBLE_DEVICES applies before torch loads
    devices = ctx.Queue()
    for gpu in range(gpus):
        devices.put(str(gpu))
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(devices, threads, os.getpid(), bool(gpus))) as pool:
        futures = [pool.submit(run_one, *job) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def _init_worker(devices, threads: int, parent: int, gpus: bool) -> None:
    """Worker start: die with the launcher, own one GPU (or a share of the cores), before torch is imported."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(1)
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices.get()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _gpu_count() -> int:
    """GPUs this launcher may hand out (CUDA_VISIBLE_DEVICES respected); 0 on a CPU machine."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class _SlurmJob:
    """A picklable callable that submitit requeues on preemption: the run resumes from its step log."""

    def __call__(self, config_fields: dict[str, Any], sweep_folder: str) -> dict[str, Any]:
        return run_one(config_fields, sweep_folder)

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _slurm(sweep: Sweep, jobs: list[tuple]):
    submitit = _optional("submitit", "slurm")
    options = dict(sweep.options.get("slurm", {}))
    cluster = options.pop("cluster", None)
    executor = submitit.AutoExecutor(folder=sweep.folder / "submitit" / "%j", cluster=cluster)
    executor.update_parameters(**{"name": f"icrl-{sweep.name}", "timeout_min": 24 * 60,
                                  "slurm_array_parallelism": sweep.workers, **options})
    submitted = executor.map_array(_SlurmJob(), [j[0] for j in jobs], [j[1] for j in jobs])
    for job in submitit.helpers.as_completed(submitted):
        try:
            yield job.result()
        except Exception as err:  # noqa: BLE001 - the job itself died (node failure, time limit)
            yield {"run": "?", "state": "failed", "error": f"slurm job {job.job_id}: {str(err).splitlines()[-1]}"}


def _ray(sweep: Sweep, jobs: list[tuple]):
    ray = _optional("ray", "ray")
    options = dict(sweep.options.get("ray", {}))
    resources = {"num_cpus": options.pop("num_cpus", 1), "num_gpus": options.pop("num_gpus", 0)}
    started = not ray.is_initialized()
    if started:
        local = options.get("address") is None
        ray.init(**({"num_cpus": sweep.workers * resources["num_cpus"]} if local else {}),
                 include_dashboard=False, log_to_driver=False, **options)
    try:
        remote = ray.remote(**resources)(run_one)
        pending = [remote.remote(*job) for job in jobs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started:
            ray.shutdown()


def _optional(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"launcher: {extra!r} needs the package {module!r}: pip install -e \".[{extra}]\"") from None
