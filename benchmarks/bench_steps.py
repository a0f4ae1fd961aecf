"""Benchmark 2 (+3): end-to-end ICRL steps per second, explorative vs approximate (K=8), same task and seeds.

Reports steps/s and tokens computed per step (overall and over the last half of the run, when contexts are
long), and the efficiency: time inside raw model forwards / end-to-end time. An untimed warm-up run first fills the
output folder's context-capacity cache (how many episodes fit the model's window: computed once per model, task and
window, then read from ``<output_dir>/_cache``) and the device's kernels; its time is printed as a one-off.

    python benchmarks/bench_steps.py --task_name trec_coarse --train_k 300 --p_keep 0.3
"""
from __future__ import annotations

import tempfile
import time

from common import forward_timer, load_bench_model, machine, parser

from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.runs.loop import run_experiment

METHODS = {
    "explorative": dict(context_strategy_name="random_unbiased_only_positive"),
    "approximate": dict(context_strategy_name="approximate_only_positive", max_contexts=8,
                        approximate_context_sampling_method="uniform"),
}


def main() -> None:
    ap = parser(__doc__, "trec_coarse")
    ap.add_argument("--train_k", type=int, default=300)
    ap.add_argument("--p_keep", type=float, default=0.3, help="0.3 (paper: 0.1) so contexts grow long in a few "
                    "hundred steps")
    ap.add_argument("--max_context_examples", type=int, default=None)
    args = ap.parse_args()
    lm = load_bench_model(args.model_name, args.layers, args.tokenizer, args.dtype)
    print(f"machine: {machine()}")
    rows = {}
    with tempfile.TemporaryDirectory() as out:
        def config(train_k: int, **kw) -> ExperimentConfig:
            return ExperimentConfig.from_dict(dict(
                model_name=args.model_name, task_name=args.task_name, context_p_keep=args.p_keep, train_k=train_k,
                test_every=10**6, test_k=1, max_context_examples=args.max_context_examples, debug_k=0,
                data_dir=args.data_dir, output_dir=out, dtype=args.dtype or "auto", **kw))

        # One-off per model, task and window in a real output folder (cached there): not part of a step's cost.
        start = time.perf_counter()
        run_experiment(config(2, **METHODS["explorative"]), progress=False, lm=lm)
        print(f"one-off (context capacity for the window, device warm-up): {time.perf_counter() - start:.1f} s")
        for name, kw in METHODS.items():
            with forward_timer(lm.model) as spent:
                start = time.perf_counter()
                result = run_experiment(config(args.train_k, **kw), progress=False, lm=lm)
                seconds = time.perf_counter() - start
            steps = result.steps
            late = steps[steps["step"] >= len(steps) // 2]
            rows[name] = dict(
                steps_per_s=len(steps) / seconds, computed=steps["computed_tokens"].mean(),
                computed_late=late["computed_tokens"].mean(), prompt_late=late["prompt_tokens"].mean(),
                context_late=late["context_size"].mean(), accuracy=steps["reward"].mean(),
                evictions=int(steps["cache_evictions"].sum()), cached=int(steps["cached_tokens"].max()),
                efficiency=spent["seconds"] / seconds)
    for name, r in rows.items():
        print(f"{name:12s} {r['steps_per_s']:.2f} steps/s; tokens computed/step {r['computed']:.0f} (last half "
              f"{r['computed_late']:.0f} of {r['prompt_late']:.0f} prompt tokens, context {r['context_late']:.1f} "
              f"episodes); training accuracy {r['accuracy']:.3f}; efficiency {r['efficiency']:.3f}; KV cache peak "
              f"{r['cached']} tokens, {r['evictions']} evictions")
    e, a = rows["explorative"], rows["approximate"]
    print(f"approximate vs explorative: {e['computed_late'] / a['computed_late']:.1f}x fewer tokens computed per step "
          f"(last half), {a['steps_per_s'] / e['steps_per_s']:.1f}x steps/s")


if __name__ == "__main__":
    main()
