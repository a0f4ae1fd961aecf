"""Benchmark 7: the local model in float32 against bfloat16 (the ``dtype`` field), side by side in one process.

Loads the model twice (``--dtype`` types, default float32 and bfloat16) and times, alternating between the two so
that a shared machine's load falls on both alike. Each time is also given as the CPU seconds of this process divided by
its torch threads ("CPU-time"): it counts only this process's work, so it moves less than the wall time when other jobs
share the cores (it undercounts single-threaded Python, and OpenMP threads spinning while they wait inflate it):

1. the prefill of one real ICRL context (Banking77, ~2,048 tokens, as benchmark 1): tokens/s, best of ``--rounds``;
2. benchmark 1's fast path (cached context, packed queries) on ``--queries`` test queries: seconds, and how many
   sampled labels differ from the first type's (same seed: only the numerics differ);
3. with ``--quickstart-steps N``: the quickstart (``params/quickstart.yaml``, approximate ICRL on CLINIC150) cut to
   N steps, run once per type: wall time, test accuracies, and how many predictions differ.

Whether bf16 pays on a CPU depends on AMX (``amx_bf16`` in /proc/cpuinfo's flags): the machine line says which
flags this CPU has.

    python benchmarks/bench_dtype.py                          # parts 1-2, ~5 min on 2 shared cores
    python benchmarks/bench_dtype.py --quickstart-steps 150   # and part 3
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import forward_timer, icrl_renderer, machine, parser

from icrl_lib.engine.generation import LabelPredictor
from icrl_lib.engine.models import load_model
from icrl_lib.paper.prompts import Episode
from icrl_lib.tasks.task import load_task
from icrl_lib.tasks.trie import LabelTrie

QUICKSTART = Path(__file__).resolve().parents[1] / "params" / "quickstart.yaml"


def cpu_flags() -> str:
    """The CPU's bf16-relevant flags (AMX tiles, AVX-512 bf16), or that it has none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "flags unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    found = [f for f in flags if f.startswith("amx") or f in ("avx512_bf16", "avx512f")]
    return "flags: " + (" ".join(found) if found else "no AVX-512 or AMX")


def main() -> None:
    ap = parser(__doc__, "banking77")
    ap.add_argument("--types", default="float32,bfloat16", help="the two dtypes compared (the first is the reference)")
    ap.add_argument("--context-tokens", type=int, default=2048)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the prefill (best one counted)")
    ap.add_argument("--quickstart-steps", type=int, default=0, help="also run the quickstart cut to this many steps")
    args = ap.parse_args()
    types = args.types.split(",")
    models = {t: load_model(args.model_name, dtype=t) for t in types}
    ref = models[types[0]]
    print(f"machine: {machine()}; {cpu_flags()}")

    task = load_task(args.task_name, args.data_dir)
    episodes: list[Episode] = []
    render = icrl_renderer(ref, task, episodes)

    for i, ex in enumerate(task.sample_train(2000, seed=1)[1]):  # a real ICRL context, as benchmark 1's
        if len(ref.encode(render(None))) >= args.context_tokens:
            break
        episodes.append(Episode(task.format_input(ex), task.answer(ex), task.answer(ex), i % 2))
    context = render(None)
    ids = torch.tensor([ref.encode(context)[:args.context_tokens]])
    print(f"context: {len(episodes)} episodes, {ids.shape[1]} tokens; {args.queries} queries")

    # 1. prefill
    seconds: dict[str, list[float]] = {t: [] for t in types}
    cpu: dict[str, list[float]] = {t: [] for t in types}
    with torch.inference_mode():
        for t in types:  # warm-up at the timed shape (oneDNN builds its bf16 kernels per shape on first use)
            models[t].model(ids, logits_to_keep=1)
        for _ in range(args.rounds):
            for t in types:
                start, start_cpu = time.perf_counter(), time.process_time()
                models[t].model(ids, logits_to_keep=1)
                seconds[t].append(time.perf_counter() - start)
                cpu[t].append((time.process_time() - start_cpu) / torch.get_num_threads())
    rate = {t: ids.shape[1] / min(s) for t, s in seconds.items()}
    cpu_rate = {t: ids.shape[1] / statistics.median(s) for t, s in cpu.items()}
    for t in types:
        print(f"prefill {models[t].dtype_name}: {rate[t]:.0f} tokens/s wall (best of {args.rounds}; median "
              f"{ids.shape[1] / statistics.median(seconds[t]):.0f}); {cpu_rate[t]:.0f} tokens/s CPU-time (median)")
    print(f"prefill {types[1]} / {types[0]}: {rate[types[1]] / rate[types[0]]:.2f}x the speed wall, "
          f"{cpu_rate[types[1]] / cpu_rate[types[0]]:.2f}x CPU-time")

    # 2. benchmark 1's fast path
    prompts = [render(task.format_input(ex)) for ex in task.sample_test(args.queries, seed=2)]
    trie = LabelTrie.build(task.labels, ref.encode, ref.eot_id)
    fast = {}
    for t in types:
        LabelPredictor(models[t], trie, temperature=1.0, fast=True).predict(prompts[-2:], seed=7, stream=1,
                                                                           context=context)  # warm-up
        predictor = LabelPredictor(models[t], trie, temperature=1.0, fast=True)
        with forward_timer(models[t].model) as spent:
            start, start_cpu = time.perf_counter(), time.process_time()
            preds = predictor.predict(prompts, seed=100, stream=1, context=context)
            fast[t] = (time.perf_counter() - start, preds, spent["tokens"],
                       (time.process_time() - start_cpu) / torch.get_num_threads())
    base_s, base_preds, _, base_cpu = fast[types[0]]
    for t in types:
        s, preds, tokens, cpu_s = fast[t]
        same = sum(a.label == b.label for a, b in zip(base_preds, preds))
        gap = max(abs(a.logprob - b.logprob) for a, b in zip(base_preds, preds))
        print(f"fast path {t}: {s:.1f} s wall, {cpu_s:.1f} s CPU-time for {len(prompts)} queries ({tokens} tokens "
              f"computed); {len(prompts) - same} labels differ from {types[0]}; largest log-probability difference "
              f"{gap:.2f}")
    print(f"fast path {types[1]} / {types[0]}: {base_s / fast[types[1]][0]:.2f}x the speed wall, "
          f"{base_cpu / fast[types[1]][3]:.2f}x CPU-time")

    if args.quickstart_steps:
        quickstart(models, types, args.quickstart_steps, args.data_dir)


def quickstart(models: dict, types: list[str], steps: int, data_dir: str | None) -> None:
    """The quickstart cut to ``steps`` steps, once per type (reference first), in a temporary output folder."""
    from icrl_lib.runs.config import load_config
    from icrl_lib.runs.loop import run_experiment

    results = {}
    with tempfile.TemporaryDirectory() as out:
        for t in types:
            config = load_config(QUICKSTART, train_k=steps, output_dir=out, data_dir=data_dir, dtype=t, debug_k=0)
            start, start_cpu = time.perf_counter(), time.process_time()
            result = run_experiment(config, progress=False, lm=models[t])
            results[t] = (time.perf_counter() - start, result.records,
                          (time.process_time() - start_cpu) / torch.get_num_threads())
    base_s, base, base_cpu = results[types[0]]
    for t in types:
        s, records, cpu_s = results[t]
        tests = [(r.step, r.test) for r in records if r.test is not None]
        base_tests = {r.step: r.test for r in base if r.test is not None}
        changed = [sum(a != b for a, b in zip(base_tests[step].predictions, test.predictions))
                   for step, test in tests]
        train = [r.train for r in records if r.train is not None]
        first = next((r.step for r, b in zip(records, base) if r.train and b.train
                      and r.train.prediction != b.train.prediction), None)
        print(f"quickstart {t} ({steps} steps): {s:.0f} s wall, {cpu_s:.0f} s CPU-time; test accuracy "
              + ", ".join(f"{test.accuracy:.3f} at step {step}" for step, test in tests)
              + f"; training accuracy {sum(x.reward for x in train) / len(train):.3f}; test predictions differing "
              f"from {types[0]}: " + ", ".join(f"{c} of {len(test.predictions)} at step {step}"
                                                for c, (step, test) in zip(changed, tests))
              + (f"; first training prediction that differs: step {first}" if t != types[0] else ""))
    print(f"quickstart {types[1]} / {types[0]}: {base_s / results[types[1]][0]:.2f}x the speed wall, "
          f"{base_cpu / results[types[1]][2]:.2f}x CPU-time")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
