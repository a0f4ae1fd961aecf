"""How many episodes fit a token window (the paper's ``find_max_examples_given_max_window.py``).

The worst-case prompt for ``n`` episodes uses the ``n`` longest inputs of the task (train and test, by tokens) as the
episodes, each with the longest label as its prediction (or gold answer, for ICL) and the longer feedback sentence,
then the next longest input as the query, plus the longest label and the end-of-turn token it will generate. We
search for the largest ``n`` whose token count fits the window. The paper used the same worst case but left out the
query and the answer, and its binary search returned one more than fits; here ``n`` fits and ``n + 1`` does not
(the tests check it by rendering both prompts).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from icrl_lib.engine.models import LanguageModel, ModelFacts, load_model
from icrl_lib.paper.prompts import Episode, build_messages, feedback_text, render_prompt, system_prompt
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.runs.durable import atomic_write_text, file_lock
from icrl_lib.runs.identity import digest
from icrl_lib.runs.store import CACHE_DIR
from icrl_lib.tasks.files import PACKAGE_TASKS
from icrl_lib.tasks.task import Task, TaskName, load_task

if TYPE_CHECKING:  # pandas is imported where a table is made: planning a run (or inspecting one) needs none
    import pandas as pd

log = logging.getLogger("icrl")

WINDOW_FRACTION = 0.95  # leave 5% of the model's window as headroom, as the paper did


def inputs_by_length(lm: ModelFacts, task: Task) -> list[str]:
    """Formatted inputs of every train and test row, longest first in tokens (ties keep data order)."""
    texts = [task.format_input(ex) for ex in task.train + task.test]
    lengths = [len(ids) for ids in lm.encode_batch(texts)]
    return [texts[i] for i in sorted(range(len(texts)), key=lambda i: -lengths[i])]


def worst_case_tokens(lm: ModelFacts, task: Task, n: int, *, icrl: bool = True, omit_feedback: bool = False,
                      template: str | None = None, extra_episodes: int = 0, inputs: list[str] | None = None) -> int:
    """Tokens of the worst-case prompt with ``n + extra_episodes`` episodes, its query and the generated answer.

    ``inputs`` is :func:`inputs_by_length` (computed when not given; pass it when calling repeatedly).
    """
    inputs = inputs if inputs is not None else inputs_by_length(lm, task)
    k = n + extra_episodes
    if k >= len(inputs):
        raise ValueError(f"n: {k} episodes plus a query need {k + 1} distinct rows; "
                         f"task {task.name!r} has {len(inputs)}")
    longest_label = max(task.labels, key=lambda s: len(lm.encode(" " + s)))
    # The feedback shown is whichever sentence is longer for that label (the negative one, in English).
    positive = len(lm.encode(feedback_text(longest_label, True))) >= len(lm.encode(feedback_text(longest_label, False)))
    episodes = [Episode(input=text, answer=longest_label, prediction=longest_label if icrl else None,
                        feedback=int(positive) if icrl else None) for text in inputs[:k]]
    messages = build_messages(
        system_prompt(icrl and n > 0, task.description, template), episodes, inputs[k], icrl=icrl,
        prediction_prefix=task.prediction_prefix, omit_feedback=omit_feedback, system_role=lm.system_role,
    )
    prompt = render_prompt(lm.tokenizer, messages, task.prediction_prefix)
    return len(lm.encode(prompt)) + len(lm.encode(" " + longest_label)) + 1  # + answer and end-of-turn


def max_examples_for_window(lm: ModelFacts, task: Task, window_tokens: int, **prompt_options) -> int:
    """Largest ``n`` whose worst-case prompt fits ``window_tokens`` (exponential then binary search)."""
    inputs = inputs_by_length(lm, task)
    limit = len(inputs) - 1 - prompt_options.get("extra_episodes", 0)  # every episode and the query distinct rows

    def fits(n: int) -> bool:
        return worst_case_tokens(lm, task, n, inputs=inputs, **prompt_options) <= window_tokens

    if not fits(0):
        raise ValueError(f"max_window_tokens={window_tokens}: not even a zero-shot prompt of task {task.name!r} fits")
    lo, hi = 0, 1  # invariant: lo fits; hi does not, or is past the last row
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def usable_window(lm: ModelFacts, max_window_tokens: int | None = None) -> int:
    """Tokens a prompt may use: 95% of the window (the model's, or ``max_window_tokens`` when smaller)."""
    window = min(max_window_tokens or lm.context_window, lm.context_window)
    return int(WINDOW_FRACTION * window)  # e.g. 0.95 x 8192 = 7782 tokens for SmolLM2


def cached_max_examples(cache_file: Path, key: str, compute) -> int:
    """Read ``key`` from a small JSON cache file shared by the runs of an output_dir, computing it when missing.

    Many processes may use one cache: the value is computed outside any lock, then merged into the file's current
    content under an exclusive lock and written atomically, so no writer drops another's key. A damaged cache is
    ignored with a warning and rebuilt (it only holds values that can be recomputed).
    """
    table = _read_cache(cache_file)
    if key in table:
        return table[key]
    value = int(compute())
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(cache_file.with_name(cache_file.name + ".lock")):
        table = _read_cache(cache_file)
        table[key] = value
        atomic_write_text(cache_file, json.dumps(table, indent=1, sort_keys=True))
    return value


def _read_cache(cache_file: Path) -> dict[str, int]:
    try:
        table = json.loads(cache_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("%s is damaged (%s); ignoring it, it will be rebuilt", cache_file, err)
        return {}
    if not isinstance(table, dict) or not all(isinstance(v, int) for v in table.values()):
        log.warning("%s is not a cache of max context examples; ignoring it, it will be rebuilt", cache_file)
        return {}
    return table


def episode_budget(config: ExperimentConfig, lm: ModelFacts, task: Task, exemplars: int) -> int:
    """Episodes a context may hold besides the exemplars.

    Given ``max_context_examples``, the exemplars count against it (the paper: ``max(0, M - len(exemplars))``);
    None: as many worst-case episodes as fit next to the exemplars (cached per model/task/window).
    """
    if config.max_context_examples is not None:
        return max(0, config.max_context_examples - exemplars)
    window = usable_window(lm, config.max_window_tokens)
    mode = "icrl" + ("_nofeedback" if config.icrl_omit_feedback else "") if config.icrl else "icl"
    # A task read from a user's file also keys on its labels, wording and rows: the file may be edited, or two files
    # share a name.
    key = f"{config.model_name}|{task.name}|{window}|{mode}|exemplars{exemplars}|{hash_text(config.system_prompt)}"
    if Path(task.spec.file).parent != PACKAGE_TASKS:
        key += "|" + hash_text(json.dumps([task.labels, task.spec.input_prefix, task.spec.prediction_prefix,
                                           task.description, sorted(ex.text for ex in task.train)]))
    return cached_max_examples(
        Path(config.output_dir) / CACHE_DIR / "max_context_examples.json", key,
        lambda: max_examples_for_window(lm, task, window, icrl=config.icrl, omit_feedback=config.icrl_omit_feedback,
                                        template=config.system_prompt, extra_episodes=exemplars),
    )


def hash_text(text: str | None) -> str:
    """Short stable hash of a custom system prompt (``default`` for the paper's), for cache keys."""
    return "default" if text is None else digest(text)[:8]


def find_max_context_examples(model_name: str, task_name: str | TaskName, max_window_tokens: int | None = None,
                              data_dir: str | None = None, icrl: bool = True, lm: LanguageModel | None = None) -> int:
    """The paper's tool: most episodes whose worst-case prompt fits 95% of ``max_window_tokens`` (``task_name``: as
    given, or parsed)."""
    task = load_task(task_name, data_dir)
    lm = lm or load_model(model_name)
    return max_examples_for_window(lm, task, usable_window(lm, max_window_tokens), icrl=icrl)


def max_context_table(model_name: str, task_names, max_window_tokens, data_dir: str | None = None) -> pd.DataFrame:
    """Max context examples per task and window (None = the model's own window), loading the model once."""
    import pandas as pd

    lm = load_model(model_name)
    rows = []
    for task in task_names:
        for window in max_window_tokens:
            n = find_max_context_examples(model_name, task, window, data_dir=data_dir, lm=lm)
            rows.append({"model_name": model_name, "task_name": task, "max_window_tokens": window,
                         "max_context_examples": n})
    return pd.DataFrame(rows)
