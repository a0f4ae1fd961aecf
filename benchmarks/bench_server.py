"""Benchmark 4: the same run on the local backend and on a llama.cpp server (llama-cpp-python) serving the same
embedded model on 127.0.0.1, side by side in one process: steps per second, test seconds, and how often the two
backends' first test (same prompts, T=0) agree.

The server is started here on a free port with as many threads as the local backend uses; both runs are the
quickstart's configuration (approximate ICRL, K=8, CLINIC150), shortened.

    python benchmarks/bench_server.py --train_k 60 --test_k 30
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from icrl_lib.engine.models import load_model
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.runs.loop import run_experiment
from icrl_lib.serving.local_server import LocalLlamaServer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train_k", type=int, default=60)
    ap.add_argument("--test_every", type=int, default=30)
    ap.add_argument("--test_k", type=int, default=30)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--data_dir", default=None)
    args = ap.parse_args()
    threads = torch.get_num_threads()
    lm = load_model()
    server = LocalLlamaServer(threads=threads).start()  # as many threads as the local backend uses
    url = server.url
    rows = {}
    try:
        with tempfile.TemporaryDirectory() as out:
            def config(**kw) -> ExperimentConfig:
                return ExperimentConfig.from_dict({**dict(
                    task_name="clinic150", context_strategy_name="approximate_only_positive", max_contexts=8,
                    approximate_context_sampling_method="uniform", context_p_keep=0.5, max_context_examples=64,
                    temperature=args.temperature, train_k=args.train_k, test_every=args.test_every,
                    test_k=args.test_k, debug_k=0, data_dir=args.data_dir, output_dir=out), **kw})

            run_experiment(config(train_k=2), progress=False, lm=lm)  # context-capacity cache, kernels: one-off
            for name, kw in {"local": {}, "llamacpp": dict(backend="llamacpp", server_url=url)}.items():
                start = time.perf_counter()
                result = run_experiment(config(**kw), progress=False, lm=lm if name == "local" else None)
                seconds = time.perf_counter() - start
                steps = result.steps
                rows[name] = dict(seconds=seconds, steps_per_s=len(steps) / seconds,
                                  test_s=steps.loc[steps["tested"], "seconds"].mean(),
                                  train_s=steps.loc[~steps["tested"], "seconds"].mean(),
                                  first_test=result.records[0].test.predictions)
    finally:
        server.stop()
    print(f"{threads} threads each; quickstart config, train_k={args.train_k}, test_k={args.test_k}, "
          f"T={args.temperature:g}")
    for name, r in rows.items():
        print(f"{name:9s} {r['seconds']:7.1f} s  {r['steps_per_s']:5.2f} steps/s  train step {r['train_s']:.3f} s  "
              f"test step {r['test_s']:.2f} s")
    a, b = rows["local"], rows["llamacpp"]
    same = sum(x == y for x, y in zip(a["first_test"], b["first_test"]))
    print(f"ratio llamacpp/local: steps/s {b['steps_per_s'] / a['steps_per_s']:.2f}x, "
          f"test step {b['test_s'] / a['test_s']:.2f}x time; step-0 test predictions equal: "
          f"{same}/{len(a['first_test'])}")


if __name__ == "__main__":
    main()
