"""How long a run will take, said before its first step: a range of tokens to compute, times this machine's rate.

The paper's sizes (10,000 steps, a test of 500 queries every 500 steps) take hours to days on a CPU; a notebook's
Run All must not start one silently. Before the first step the run prints the tokens it will compute (a range: the
context stays empty when nothing is rewarded, and fills to its budget when everything is) and, on the model's own
prefill rate measured here with one forward, the time that range means. On a CPU, over an hour's upper end is a
warning that names the quickstart. The range is rough on purpose: the KV cache, long-context attention and the
accuracy the run reaches move the real cost inside it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from icrl_lib.runs.plan import RunPlan
from icrl_lib.runs.progress import format_duration

WARN_SECONDS = 3600  # on a CPU, an upper end beyond this is a warning
CALIBRATION_TOKENS = 512  # one forward of this many tokens measures the prefill rate (about 1 s for 135M on a CPU)
FORWARDS_PER_LABEL = 4  # a prediction's forwards: the prompt, then a few label-trie levels (engine.generation)
MESSAGE_TOKENS = 5  # a chat template's tokens around one message (ChatML: <|im_start|>role\n ... <|im_end|>\n)
FEEDBACK_TOKENS = 12  # the paper's feedback sentence ("'x' is the correct answer! Good job!") without the label
PACKED_TOKENS = 1024  # query tokens a test packs into one forward (engine.generation's row size)


@dataclass(frozen=True)
class Estimate:
    """The tokens a run's remaining steps compute, at the least and at the most."""

    steps: int  # training steps left
    tests: int  # test evaluations left
    queries: int  # test queries per evaluation
    low_tokens: int
    high_tokens: int
    forwards: int  # model calls: each costs a short forward's latency besides its tokens

    def seconds(self, tokens_per_second: float, latency: float = 0.0) -> tuple[float, float]:
        """The range in seconds at ``tokens_per_second``, each forward adding ``latency`` seconds."""
        fixed = self.forwards * latency
        return fixed + self.low_tokens / tokens_per_second, fixed + self.high_tokens / tokens_per_second

    def line(self, tokens_per_second: float, device: str, latency: float = 0.0) -> str:
        """The line printed before the first step (a warning on a CPU past :data:`WARN_SECONDS`)."""
        low, high = self.seconds(tokens_per_second, latency)
        low_text, high_text = (format_duration(seconds) for seconds in (low, high))
        span = low_text if low_text == high_text else f"{low_text} to {high_text}"
        text = (f"{self.steps:,} steps and {self.tests} tests of {self.queries} queries left: "
                f"{_tokens(self.low_tokens)} to {_tokens(self.high_tokens)} tokens to compute, at "
                f"{tokens_per_second:,.0f} tokens/s measured here ({device}) roughly {span}")
        if device == "cpu" and high > WARN_SECONDS:
            return (f"[icrl] warning: {text}. For a first result in minutes run params/quickstart.yaml, or set "
                    "train_k, test_k and test_every smaller")
        return f"[icrl] estimate: {text}"


def _tokens(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K" if n >= 1e3 else str(n)


def estimate(plan: RunPlan, start: int, query_tokens: int, episode_tokens: int, head_tokens: int) -> Estimate:
    """Tokens the steps from ``start`` compute. A training step computes its query, plus (strategies that draw a new
    context each step) the whole context, or (approximate strategies, which extend cached contexts) one episode;
    a test computes the context once and every query. The context at step s holds between no episode and
    min(budget, p_keep x s) of them (every past episode kept, all rewarded)."""
    c, schedule = plan.config, plan.schedule
    p_keep = c.context_p_keep
    approximate = c.context_strategy_name.startswith("approximate")
    queries = len(plan.data.test)
    low = high = forwards = 0
    for step in range(start, schedule.steps):
        context = head_tokens + min(plan.budget, int(p_keep * step)) * episode_tokens
        tested = step in schedule.test_steps
        if not c.zero_shot and c.icrl:  # an ICL training step calls no model
            forwards += FORWARDS_PER_LABEL
            low += query_tokens
            high += query_tokens + (episode_tokens if approximate else context)
        if tested:
            forwards += FORWARDS_PER_LABEL * -(-queries * query_tokens // PACKED_TOKENS)
            low += head_tokens + queries * query_tokens
            high += context + queries * query_tokens
    return Estimate(schedule.steps - start if not c.zero_shot else 0,
                    sum(1 for s in schedule.test_steps if s >= start), queries, low, high, forwards)


def prompt_sizes(plan: RunPlan) -> tuple[int, int, int]:
    """(query, episode, head) token counts of this run's prompts, from its own rows' texts and a chat template's
    usual cost per message (:data:`MESSAGE_TOKENS`). Nothing is rendered: the run's renderer meets its prompts first,
    in order (it checks its first renderings whole)."""
    task, data, encode = plan.task, plan.data, plan.model.encode
    example = (data.stream or data.test)[0]
    query = len(encode(task.format_input(data.test[0]))) + len(encode(task.prediction_prefix)) + 2 * MESSAGE_TOKENS
    answer = len(encode(f"{task.prediction_prefix} {task.answer(example)}"))
    feedback = FEEDBACK_TOKENS + MESSAGE_TOKENS if plan.config.icrl and not plan.config.icrl_omit_feedback else 0
    episode = len(encode(task.format_input(example))) + answer + 2 * MESSAGE_TOKENS + feedback
    return query, episode, len(encode(plan.system)) + MESSAGE_TOKENS


def measure_speed(lm: Any, tokens: int = CALIBRATION_TOKENS) -> tuple[float, float]:
    """(tokens per second of one forward over ``tokens`` tokens, seconds of a forward over 8) on ``lm``: the rate
    and a forward's latency, after a warm-up forward."""
    import torch

    ids = torch.full((1, tokens), int(lm.eot_id), dtype=torch.long, device=lm.device)

    def timed(n: int) -> float:
        began = time.perf_counter()
        lm.model(input_ids=ids[:, :n])
        if lm.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - began

    with torch.inference_mode():
        timed(8)
        latency = min(timed(8), timed(8))
        return tokens / max(timed(tokens) - latency, 1e-6), latency


def announce(plan: RunPlan, predictor: Any, start: int) -> Estimate | None:
    """Print the estimate of the steps from ``start`` (local models only: a server's rate is not measured here)."""
    lm = getattr(predictor, "lm", None)
    if lm is None or getattr(lm, "model", None) is None or start >= plan.schedule.steps:
        return None
    guess = estimate(plan, start, *prompt_sizes(plan))
    rate, latency = measure_speed(lm)
    print(guess.line(rate, lm.device, latency), flush=True)
    return guess
