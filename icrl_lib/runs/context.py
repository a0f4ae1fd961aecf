"""What a run shows the model: the history of episodes, the strategy's state, and the rendered context and prompts.

A :class:`ContextBuilder` is the one place where a step's context is drawn (``select``, seeded with ``seed + step``
as the paper's code) and turned into text (``context``, ``prompt``); the loop, the replay check and the benchmarks
use it. It needs the model's tokenizer (chat template), not its weights. The text is rendered incrementally
(:mod:`icrl_lib.runs.rendering`: a context that grew by an episode is not rendered again whole), identical to a whole
rendering; the template is checked on lists shaped as the run's before that is trusted.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from icrl_lib.paper.prompts import Episode, build_messages, check_prompt_messages, with_query
from icrl_lib.paper.strategies import Selection, make_strategy
from icrl_lib.runs.plan import RunPlan
from icrl_lib.runs.record import ContextRecord, StepRecord
from icrl_lib.runs.rendering import IncrementalRenderer


def flip_coin(seed: int, step: int) -> float:
    """The paper's coin for flipped feedback: the first uniform draw of default_rng(seed + step)."""
    return float(np.random.default_rng(seed + step).random())


def shown_feedback(plan: RunPlan, step: int, reward: int) -> tuple[int, bool]:
    """(feedback shown, flipped): the reward, inverted when ``icrl_flip_feedback`` and the step's coin says so."""
    c = plan.config
    flipped = bool(c.icrl_flip_feedback and flip_coin(c.seed, step) < c.icrl_flip_feedback_prob)
    return (1 - reward if flipped else reward), flipped


class ContextBuilder:
    """History, strategy state and rendering of one run."""

    def __init__(self, plan: RunPlan):
        c = plan.config
        self.plan = plan
        self.strategy = None if plan.budget == 0 else make_strategy(
            c.context_strategy_name, max_examples=plan.budget, p_keep=c.context_p_keep, max_contexts=c.max_contexts,
            sampling=c.approximate_context_sampling_method)
        self.state = self.strategy.initial_state() if self.strategy else None
        self.history: list[Episode] = []
        self._renderer: IncrementalRenderer | None = None  # made (and its template checked) at the first rendering
        self._last: tuple[tuple[Episode, ...], list[dict[str, str]]] | None = None  # the last context's messages

    def select(self, step: int) -> Selection | None:
        """The episodes of ``step``'s context (advances the strategy: call once per step, in order)."""
        if self.strategy is None:
            return None
        feedbacks = [e.feedback for e in self.history]
        selection, self.state = self.strategy.select(self.state, feedbacks, self.plan.config.seed + step)
        return selection

    def episodes(self, selection: Selection | None) -> list[Episode]:
        """The exemplars, then the selected past episodes."""
        return [*self.plan.exemplars, *([self.history[i] for i in selection.indices] if selection else [])]

    def record(self, selection: Selection | None, episodes: Sequence[Episode]) -> ContextRecord:
        """What the step's log line says of its context."""
        return ContextRecord(tuple(selection.indices) if selection else (),
                             selection.context_index if selection else None,
                             tuple(selection.context_lengths) if selection and selection.context_lengths else None,
                             len(episodes), sum(1 for e in episodes if e.feedback == 1))

    def _messages(self, episodes: Sequence[Episode], query: str | None,
                  system_role: bool | None = None) -> list[dict[str, str]]:
        c = self.plan.config
        return build_messages(self.plan.system, episodes, query, icrl=c.icrl,
                              prediction_prefix=self.plan.task.prediction_prefix, omit_feedback=c.icrl_omit_feedback,
                              system_role=self.plan.model.system_role if system_role is None else system_role)

    def chat(self, episodes: Sequence[Episode], query: str) -> list[dict[str, str]]:
        """The prompt for ``query`` as chat messages, for a server that applies its model's own chat template
        (hosted APIs all take a system instruction)."""
        return self._messages(episodes, query, system_role=True)

    def context(self, episodes: Sequence[Episode]) -> str:
        """The context's text alone: the prefix every prompt of this step shares (and the KV cache reuses); as
        ``paper.prompts.render_context`` renders it."""
        return self.renderer.render(self._context_messages(episodes))

    def prompt(self, episodes: Sequence[Episode], query: str) -> str:
        """The prompt for ``query`` on this context, ending with the prediction prefix; as
        ``paper.prompts.render_prompt`` renders it."""
        messages = with_query(self._context_messages(episodes), query)
        check_prompt_messages(messages)
        return self.renderer.render(messages, generation=True, remember=False) + self.plan.task.prediction_prefix

    def _context_messages(self, episodes: Sequence[Episode]) -> list[dict[str, str]]:
        # A step renders its context and then each prompt on it: its messages are built once (650 of them at 16K
        # tokens). Tuples compare their items by identity first, so the check costs little.
        key = tuple(episodes)
        if self._last is None or self._last[0] != key:
            self._last = (key, self._messages(episodes, None))
        return self._last[1]

    @property
    def renderer(self) -> IncrementalRenderer:
        """The run's renderer, its template checked on lists shaped as the run's (whole rendering if it fails)."""
        if self._renderer is None:
            c = self.plan.config
            self._renderer = IncrementalRenderer(self.plan.model.tokenizer, self._messages([], None)[0],
                                                 max_entries=max(4, (c.max_contexts or 0) + 2))
            self._renderer.verify(self._verification_cases())
        return self._renderer

    def _verification_cases(self) -> list[tuple[list[dict[str, str]], bool]]:
        """Contexts (exemplars, then 0 to 4 episodes of real inputs), then one that lost its first episode and one
        reordered, each followed by a prompt on it: the shapes a run renders, growing and not."""
        task, data, icrl = self.plan.task, self.plan.data, self.plan.config.icrl
        inputs = [task.format_input(ex) for ex in (*data.stream[:4], *data.test[:1])] or ["Probe input"]
        labels = list(task.labels)
        samples = [Episode(inputs[i % len(inputs)], labels[i % len(labels)],
                           labels[(3 * i + 1) % len(labels)] if icrl else None, (i + 1) % 2 if icrl else None)
                   for i in range(4)]
        shown = [samples[:k] for k in range(5)] + [samples[1:], [samples[3], samples[0], samples[2]]]
        cases = []
        for episodes in shown:
            episodes = [*self.plan.exemplars, *episodes]
            cases += [(self._messages(episodes, None), False), (self._messages(episodes, inputs[-1]), True)]
        return cases

    def remember(self, record: StepRecord) -> None:
        """Add the step's training episode (with the feedback it showed) to the history."""
        if record.train is not None:
            t = record.train
            self.history.append(Episode(t.input, t.answer, t.prediction, t.feedback))
