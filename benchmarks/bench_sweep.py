"""Benchmark 4: sweeps. 8 tiny runs through the local launcher: one worker on one core, one worker on all cores, and
N workers (one core each): wall time, CPU use, the model load each worker pays before its first run, and the
throughput once models are loaded; then each launcher's overhead per run: from submission to the run starting in a
worker, and to its model being ready.

    python benchmarks/bench_sweep.py                       # local 1 vs 2 workers, then local / slurm / ray overhead
    python benchmarks/bench_sweep.py --runs 8 --train_k 20
"""
from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

from icrl_lib.sweeps.launchers import launch
from icrl_lib.sweeps.sweep import load_sweep


def sweep_of(out: str, runs: int, train_k: int, launcher: str, workers: int, threads: int | None = None):
    return load_sweep({"name": "bench", "launcher": launcher, "workers": workers, "threads": threads,
                       "base": {"task_name": "trec_coarse", "max_context_examples": 8, "train_k": train_k,
                                "test_every": train_k, "test_k": 10, "debug_k": 0, "output_dir": out},
                       "axes": {"seeds": list(range(1, runs + 1))}, "slurm": {"cluster": "local"}})


def timed(runs: int, train_k: int, launcher: str, workers: int, threads: int | None = None) -> dict:
    """Run a fresh sweep; wall time, CPU time of the workers (children), and per-run overheads."""
    with tempfile.TemporaryDirectory() as out:
        sweep = sweep_of(out, runs, train_k, launcher, workers, threads)
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.time()
        outcomes = launch(sweep, list(sweep.configs), lambda outcome: None)
        wall = time.time() - start
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert all(o["state"] == "done" for o in outcomes), outcomes
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    first = sorted(outcomes, key=lambda o: o["started"])[:workers]  # the runs each worker began with
    to_model = sum(o["model_ready"] - start for o in first) / len(first)
    return {"wall": wall, "cpu": cpu, "utilisation": cpu / (wall * (os.cpu_count() or 1)),
            "to_start": sum(o["started"] - start for o in first) / len(first), "to_model": to_model,
            "steady": runs / (wall - to_model)}  # runs per second once every worker has its model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--train_k", type=int, default=20)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"machine: {cores} cores; {args.runs} runs of trec_coarse, train_k {args.train_k}, 10 test queries")
    rows = {"1 worker, 1 thread": timed(args.runs, args.train_k, "local", 1, threads=1),
            f"1 worker, {cores} threads": timed(args.runs, args.train_k, "local", 1),
            f"{cores} workers, 1 thread each": timed(args.runs, args.train_k, "local", cores)}
    for name, r in rows.items():
        print(f"local, {name}: {r['wall']:.1f} s wall, model ready after {r['to_model']:.1f} s, then "
              f"{r['steady'] * 60:.1f} runs/min; CPU utilisation {r['utilisation']:.0%} (worker CPU {r['cpu']:.1f} s)")
    unit, whole, many = rows.values()
    print(f"{cores} workers vs one single-core worker: {unit['wall'] / many['wall']:.2f}x end to end, "
          f"{many['steady'] / unit['steady']:.2f}x once models are loaded (ideal {cores}x); vs one worker on all "
          f"{cores} cores: {whole['wall'] / many['wall']:.2f}x end to end, {many['steady'] / whole['steady']:.2f}x "
          f"once loaded; one worker's threads give it {unit['wall'] / whole['wall']:.2f}x")
    for launcher in ("local", "slurm", "ray"):
        r = timed(2, 2, launcher, 2)
        print(f"{launcher:6s} overhead per run: submit -> run starts in a worker {r['to_start']:.1f} s, "
              f"-> model ready {r['to_model']:.1f} s (2 runs, 2 workers)")


if __name__ == "__main__":
    main()
