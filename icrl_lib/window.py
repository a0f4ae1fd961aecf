"""How many episodes fit a token window (the paper's ``find_max_examples_given_max_window.py``).

We build the worst-case prompt for ``n`` episodes — every episode with the task's longest input, its longest label
as the prediction and the longer feedback sentence, then a query with the longest input and the longest label
continuation — and binary-search the largest ``n`` whose token count fits the window. (The paper's search returned
one more than fits; here ``n`` fits and ``n + 1`` does not, which the tests check by rendering both.)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .models import LanguageModel
from .prompts import Episode, build_messages, feedback_text, render_prompt, system_prompt
from .tasks import Task

WINDOW_FRACTION = 0.95  # leave 5% of the model's window as headroom, as the paper did


def worst_case_tokens(lm: LanguageModel, task: Task, n: int, *, icrl: bool = True, omit_feedback: bool = False,
                      template: str | None = None, extra_episodes: int = 0) -> int:
    """Tokens of a prompt with ``n + extra_episodes`` worst-case episodes plus a worst-case query and answer."""
    examples = task.train + task.test
    longest_input = max((task.format_input(ex) for ex in examples), key=lambda s: len(lm.encode(s)))
    longest_label = max(task.labels, key=lambda s: len(lm.encode(" " + s)))
    # Feedback shown is whichever sentence is longer for the longest label (the negative one, in English).
    positive = len(lm.encode(feedback_text(longest_label, True))) >= len(lm.encode(feedback_text(longest_label, False)))
    episode = Episode(input=longest_input, answer=longest_label, prediction=longest_label if icrl else None,
                      feedback=int(positive) if icrl else None)
    messages = build_messages(
        system_prompt(icrl and n > 0, task.description, template),
        [episode] * (n + extra_episodes), longest_input, icrl=icrl, prediction_prefix=task.prediction_prefix,
        omit_feedback=omit_feedback, system_role=lm.system_role,
    )
    prompt = render_prompt(lm.tokenizer, messages, task.prediction_prefix)
    return len(lm.encode(prompt)) + len(lm.encode(" " + longest_label)) + 1  # + answer and end-of-turn


def max_examples_for_window(lm: LanguageModel, task: Task, window_tokens: int, **prompt_options) -> int:
    """Largest ``n`` whose worst-case prompt fits ``window_tokens`` (exponential then binary search)."""
    if worst_case_tokens(lm, task, 0, **prompt_options) > window_tokens:
        raise ValueError(f"max_window_tokens={window_tokens}: not even a zero-shot prompt of task {task.name!r} fits")
    lo, hi = 0, 1  # invariant: lo fits
    while worst_case_tokens(lm, task, hi, **prompt_options) <= window_tokens:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # lo fits, hi does not
        mid = (lo + hi) // 2
        if worst_case_tokens(lm, task, mid, **prompt_options) <= window_tokens:
            lo = mid
        else:
            hi = mid
    return lo


def usable_window(lm: LanguageModel, max_window_tokens: int | None = None) -> int:
    """Tokens a prompt may use: 95% of the window (the model's, or ``max_window_tokens`` when smaller)."""
    window = min(max_window_tokens or lm.context_window, lm.context_window)
    return int(WINDOW_FRACTION * window)  # e.g. 0.95 x 8192 = 7782 tokens for SmolLM2


def cached_max_examples(cache_file: Path, key: str, compute) -> int:
    """Read ``key`` from a small JSON cache file, computing and storing it (atomically) when missing."""
    table = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    if key not in table:
        table[key] = int(compute())
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        os.replace(tmp, cache_file)
    return table[key]
