"""Benchmark 5: paper-scale contexts. Explorative vs approximate (K=8) ICRL steps on contexts of the sizes asked,
with the runner's own strategies, rendering, predictor and KV-cache pool.

The history starts full (real Banking77 episodes, all rewarded, so that positive-only contexts reach the size asked
from the first step; the approximate strategy is fed it one episode at a time, as in a run, and its K contexts are
in the cache when the timed steps begin, as a run that grew them would have them, unless the pool must evict).
Per method and size: steps/s, tokens computed per step, the KV cache held (tokens and GiB) and its evictions, the
time of one test evaluation on the last context, the efficiency (time in forwards / step time), the renderings that
reused a remembered prefix (incremental rendering, checked against whole rendering after the timed steps) and a
digest of the predicted labels (a code change that keeps the digests changed no prediction). Per size: the
prefill's model FLOPs utilisation (MFU) against the device's peak (a GPU's bf16 datasheet figure; on a CPU, the
measured rate of a large fp32 matrix product), and the cost model against the paper's Table 3 (tokens processed,
explorative / approximate).

    python benchmarks/bench_long_context.py        # GPU: random-llama-3.1-8b at 32K and 128K tokens
    python benchmarks/bench_long_context.py        # CPU: random-llama-scaled at 4K and 16K tokens (said so)
"""
from __future__ import annotations

import hashlib
import math
import time

import torch
from common import RANDOM_LLAMA, RANDOM_SCALED, forward_flops, forward_timer, load_bench_model, machine, parser

from icrl_lib.engine.generation import LabelPredictor
from icrl_lib.engine.kvcache import extend_cache, new_cache
from icrl_lib.paper.prompts import Episode, build_messages, render_context, render_prompt, system_prompt, with_query
from icrl_lib.paper.strategies import make_strategy
from icrl_lib.runs.rendering import IncrementalRenderer
from icrl_lib.tasks.task import load_task
from icrl_lib.tasks.trie import LabelTrie

GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense tensor-core FLOP/s, NVIDIA datasheets
PAPER_TABLE3 = (102_282_989, 539_367)  # Llama-3.1-8B, Banking77: tokens processed, explorative / approximate


def peak_flops() -> tuple[float, str]:
    """The device's peak FLOP/s and where the figure comes from."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        for key, value in GPU_PEAK_BF16.items():
            if key in name:
                return value, f"{name} bf16 datasheet"
    a = torch.randn(2048, 2048, device="cuda" if torch.cuda.is_available() else "cpu")
    a @ a
    start = time.perf_counter()
    for _ in range(5):
        a @ a
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return 5 * 2 * 2048**3 / (time.perf_counter() - start), "measured fp32 2048x2048 matrix product"


class Bench:
    """One model, one task: renders contexts and prompts as the runner does (incrementally, as
    ``runs.context.ContextBuilder``: :meth:`start` gives each method a fresh renderer, its template verified)."""

    def __init__(self, lm, task):
        self.lm, self.task = lm, task
        self.system = system_prompt(True, task.description)
        self.trie = LabelTrie.build(task.labels, lm.encode, lm.eot_id)
        self.renderer, self.last = None, None

    def messages(self, episodes, query=None):
        return build_messages(self.system, episodes, query, icrl=True, prediction_prefix=self.task.prediction_prefix,
                              system_role=self.lm.system_role)

    def start(self, samples: list[Episode], query: str) -> None:
        """A fresh incremental renderer, verified on contexts of 0 to 4 of ``samples`` and prompts on them."""
        self.renderer = IncrementalRenderer(self.lm.tokenizer, self.messages([])[0], max_entries=10)
        cases = [(m, g) for k in range(5) for m, g in ((self.messages(samples[:k]), False),
                                                         (self.messages(samples[:k], query), True))]
        assert self.renderer.verify(cases), "the chat template is not additive: contexts would be rendered whole"

    def context_messages(self, episodes):
        """The context's messages, built once per step for the context and its prompts (as ContextBuilder)."""
        if self.last is None or self.last[0] != tuple(episodes):
            self.last = (tuple(episodes), self.messages(episodes))
        return self.last[1]

    def context(self, episodes):
        if self.renderer is None:
            return render_context(self.lm.tokenizer, self.messages(episodes))
        return self.renderer.render(self.context_messages(episodes))

    def prompt(self, episodes, query):
        if self.renderer is None:
            return render_prompt(self.lm.tokenizer, self.messages(episodes, query), self.task.prediction_prefix)
        return self.renderer.render(with_query(self.context_messages(episodes), query), generation=True,
                                    remember=False) + self.task.prediction_prefix

    def whole(self, episodes, query=None):
        """The whole rendering (to check the incremental one outside the timed steps)."""
        if query is None:
            return render_context(self.lm.tokenizer, self.messages(episodes))
        return render_prompt(self.lm.tokenizer, self.messages(episodes, query), self.task.prediction_prefix)

    def episodes_for(self, tokens: int, pool) -> int:
        """How many episodes make a context of about ``tokens`` tokens."""
        sample = pool[:64]
        per = (len(self.lm.encode(self.context(sample))) - len(self.lm.encode(self.context([])))) / len(sample)
        return max(1, int((tokens - len(self.lm.encode(self.context([])))) / per))


def run_method(bench: Bench, name: str, history: list[Episode], stream, max_examples: int, p_keep: float,
               steps: int, queries, budget: int | None) -> dict:
    lm = bench.lm
    kw = dict(max_examples=max_examples, p_keep=p_keep)
    strategy = (make_strategy("random_unbiased_only_positive", **kw) if name == "explorative" else
                make_strategy("approximate_only_positive", **kw, max_contexts=8, sampling="uniform"))
    history = list(history)
    state = strategy.initial_state()
    if name == "approximate":  # fed one episode at a time, as a run's steps would have
        for n in range(1, len(history) + 1):
            _, state = strategy.select(state, [1] * n, seed=n)
    predictor = LabelPredictor(lm, bench.trie, temperature=1.0, max_cached_contexts=9, cache_budget_tokens=budget)
    bench.start(history[:4], bench.task.format_input(stream[-1]))
    if name == "approximate":  # a run grows its K contexts one episode at a time: they are cached when steps begin
        warm_query = bench.task.format_input(stream[-1])
        for indices in state.contexts:
            episodes = [history[i] for i in indices]
            predictor.predict([bench.prompt(episodes, warm_query)], seed=1, context=bench.context(episodes))
        predictor.tokens.take()
        predictor.cache_report()
    computed, held, evictions, labels = [], [], 0, []
    with forward_timer(lm.model) as spent:  # time inside the raw forwards, for the efficiency
        start = time.perf_counter()
        for step in range(steps):
            selection, state = strategy.select(state, [1] * len(history), seed=100 + step)
            episodes = [history[i] for i in selection.indices]
            ex = stream[step]
            query = bench.task.format_input(ex)
            pred = predictor.predict([bench.prompt(episodes, query)], seed=100 + step, context=bench.context(episodes))
            history.append(Episode(query, bench.task.answer(ex), pred[0].label, 1))
            labels.append(pred[0].label)
            computed.append(predictor.tokens.take()["computed"])
            report = predictor.cache_report()
            held.append(report["tokens"])
            evictions += report["evictions"]
        seconds = time.perf_counter() - start
    assert bench.context(episodes) == bench.whole(episodes), "incremental rendering differs from whole rendering"
    assert bench.prompt(episodes, query) == bench.whole(episodes, query), "incremental prompt differs"
    reused = bench.renderer.reused
    context = bench.context(episodes)
    prompts = [bench.prompt(episodes, bench.task.format_input(ex)) for ex in queries]
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    labels += [p.label for p in predictor.predict(prompts, seed=7, stream=1, context=context)]
    sync()
    test_s = time.perf_counter() - start
    return dict(steps_per_s=steps / seconds, computed=sum(computed) / steps, late=sum(computed[steps // 2:]) / max(
        1, steps - steps // 2), held=max(held), evictions=evictions, test_s=test_s, context=len(episodes),
        budget=predictor.pool.budget_tokens, efficiency=spent["seconds"] / seconds, reused=reused,
        predictions=hashlib.sha256("\n".join(labels).encode()).hexdigest()[:12])


def main() -> None:
    ap = parser(__doc__, "banking77")
    ap.set_defaults(model_name=RANDOM_LLAMA if torch.cuda.is_available() else RANDOM_SCALED)
    ap.add_argument("--context-tokens", type=int, nargs="+", default=None,
                    help="context sizes (default: 32768 131072 on a GPU, 4096 16384 on a CPU)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--queries", type=int, default=32, help="test queries of the one test evaluation")
    ap.add_argument("--cache-budget-tokens", type=int, default=None,
                    help="the KV-cache pool's budget (default: 25%% of free GPU memory, 3 GiB of RAM on a CPU)")
    ap.add_argument("--p_keep", type=float, default=0.5, help="0.5 (paper: 0.1) so the train split fills 128K")
    args = ap.parse_args()
    sizes = args.context_tokens or ([32768, 131072] if torch.cuda.is_available() else [4096, 16384])
    lm = load_bench_model(args.model_name, args.layers, args.tokenizer, args.dtype)
    task = load_task(args.task_name, args.data_dir)
    bench = Bench(lm, task)
    peak, peak_source = peak_flops()
    train = task.sample_train(len(task.train), seed=1)[1]
    pool = [Episode(task.format_input(ex), task.answer(ex), task.answer(ex), 1) for ex in train]
    cfg = lm.model.config
    print(f"machine: {machine()}")
    print(f"model: {lm.name} ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
          f"{cfg.num_attention_heads}/{cfg.num_key_value_heads} heads; KV cache {lm.kv_bytes_per_token} bytes/token)"
          f"{'' if lm.name == RANDOM_LLAMA else ' -- a CPU-scaled shape, not the paper models'}; peak {peak / 1e12:.1f}"
          f" TFLOP/s ({peak_source})")
    for size in sizes:
        m = bench.episodes_for(size, pool)
        need = math.ceil(m / args.p_keep * 1.2)
        history = [pool[i % len(pool)] for i in range(need)]
        stream = task.sample_train(args.steps + 1, seed=2)[1]
        ids = lm.encode(bench.context(history[:m]))
        cache = new_cache(lm)
        extend_cache(lm, cache, ids[:256])  # warm-up
        cache = new_cache(lm)
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        start = time.perf_counter()
        extend_cache(lm, cache, ids)
        sync()
        prefill = time.perf_counter() - start
        del cache
        mfu = forward_flops(lm.model, len(ids), (len(ids) + 1) / 2, logits=1) / prefill / peak
        print(f"\n{len(ids)}-token context ({m} episodes): prefill {prefill:.2f} s, {len(ids) / prefill:.0f} tok/s, "
              f"MFU {mfu:.0%} of the peak")
        rows = {}
        for name in ("explorative", "approximate"):
            r = rows[name] = run_method(bench, name, history, stream, m, args.p_keep, args.steps,
                                        task.test[:args.queries], args.cache_budget_tokens)
            gib = r["held"] * lm.kv_bytes_per_token / 2**30
            print(f"  {name:11s} {r['steps_per_s']:.3f} steps/s; tokens computed/step {r['computed']:.0f} (last half "
                  f"{r['late']:.0f}); KV cache held {r['held']} tokens = {gib:.2f} GiB (budget {r['budget']} "
                  f"tokens), {r['evictions']} evictions; test evaluation of "
                  f"{args.queries} queries {r['test_s']:.2f} s; context {r['context']} episodes; efficiency "
                  f"{r['efficiency']:.3f}; {r['reused']} renderings reused a prefix; predictions {r['predictions']}")
        e, a = rows["explorative"]["late"], rows["approximate"]["late"]
        print(f"  cost model: explorative / approximate tokens computed per step {e:.0f} / {a:.0f} = "
              f"{e / max(a, 1):.0f}x here; the paper's Table 3 (Llama-3.1-8B, Banking77, whole runs): "
              f"{PAPER_TABLE3[0] / PAPER_TABLE3[1]:.0f}x")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
