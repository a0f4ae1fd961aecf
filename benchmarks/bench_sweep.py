"""Benchmark 4: sweeps. 8 tiny runs with one worker vs the local launcher with 2 workers (wall time, CPU use), and
each launcher's overhead per run: from submission to the run starting in a worker, and to its model being ready.

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
from icrl_lib.sweeps.spec import load_sweep


def sweep_of(out: str, runs: int, train_k: int, launcher: str, workers: int):
    return load_sweep({"name": "bench", "launcher": launcher, "workers": workers,
                       "base": {"task_name": "trec_coarse", "max_context_examples": 8, "train_k": train_k,
                                "test_every": train_k, "test_k": 10, "debug_k": 0, "output_dir": out},
                       "axes": {"seeds": list(range(1, runs + 1))}, "slurm": {"cluster": "local"}})


def timed(runs: int, train_k: int, launcher: str, workers: int) -> dict:
    """Run a fresh sweep; wall time, CPU time of the workers (children), and per-run overheads."""
    with tempfile.TemporaryDirectory() as out:
        sweep = sweep_of(out, runs, train_k, launcher, workers)
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.time()
        outcomes = launch(sweep, list(sweep.configs), lambda outcome: None)
        wall = time.time() - start
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert all(o["state"] == "done" for o in outcomes), outcomes
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    first = sorted(outcomes, key=lambda o: o["started"])[:workers]  # the runs each worker began with
    return {"wall": wall, "cpu": cpu, "utilisation": cpu / (wall * (os.cpu_count() or 1)),
            "to_start": sum(o["started"] - start for o in first) / len(first),
            "to_model": sum(o["model_ready"] - start for o in first) / len(first)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--train_k", type=int, default=20)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; {args.runs} runs of trec_coarse, train_k {args.train_k}, 10 test queries")
    one = timed(args.runs, args.train_k, "local", 1)
    two = timed(args.runs, args.train_k, "local", 2)
    for name, r in (("1 worker", one), ("2 workers", two)):
        print(f"local, {name}: {r['wall']:.1f} s wall, CPU utilisation {r['utilisation']:.0%} "
              f"(worker CPU time {r['cpu']:.1f} s)")
    print(f"2 workers vs 1: {one['wall'] / two['wall']:.2f}x faster")
    for launcher in ("local", "slurm", "ray"):
        r = timed(2, 2, launcher, 2)
        print(f"{launcher:6s} overhead per run: submit -> run starts in a worker {r['to_start']:.1f} s, "
              f"-> model ready {r['to_model']:.1f} s (2 runs, 2 workers)")


if __name__ == "__main__":
    main()
