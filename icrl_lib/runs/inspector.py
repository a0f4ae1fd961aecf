"""The step inspector: what the model saw at one logged step of a run, rebuilt from the run folder without weights.

A step's prompt is a function of what the run folder records. The plan is prepared again from the recorded config
and ``meta.json`` (:func:`~icrl_lib.runs.plan.recorded_plan`: data, exemplars, system prompt, context budget), the
logged steps before it are replayed and checked (:func:`~icrl_lib.runs.replay.replay`), which brings a
:class:`~icrl_lib.runs.context.ContextBuilder` to the step, and its strategy draws the step's context as the run
did. The prompt is rendered by the same builder the loop renders with, so it is the prompt the run sent
(``tests/runs/test_inspector.py`` checks every model call of short runs of each kind). The folder's lock is not
taken: a run can be inspected while it runs.

Only the tokenizer is loaded (:func:`~icrl_lib.engine.models.load_tokenizer`, without torch where it can); the
label distribution (``probs=True``) loads the model and scores every label on the rebuilt prompt.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from icrl_lib.engine.models import LanguageModel, ModelFacts, find_eot_id, load_tokenizer, model_facts, resolve_model
from icrl_lib.errors import UserError
from icrl_lib.paper.methods import name_run
from icrl_lib.paper.prompts import Episode, feedback_text, supports_system_role
from icrl_lib.runs.config import ExperimentConfig, load_config, with_paths_resolved
from icrl_lib.runs.context import ContextBuilder
from icrl_lib.runs.identity import check_recorded_data
from icrl_lib.runs.plan import Provenance, RunPlan, recorded_plan
from icrl_lib.runs.record import StepRecord
from icrl_lib.runs.replay import check_drawn, replay
from icrl_lib.runs.store import CONFIG_FILE, DATA_FILE, LOG_FILE, read_data, read_meta, read_records


@dataclass(frozen=True)
class ContextEpisode:
    """One episode of the step's context, in prompt order."""

    index: int | None  # position in the history = the training step it came from; None: a gold exemplar
    input: str
    answer: str  # gold label
    prediction: str | None  # the model's label (ICRL); None for ICL episodes and exemplars shown as ICL
    reward: int | None  # the true reward (None: ICL, or an exemplar)
    feedback: int | None  # the reward shown (after any flip); None for ICL
    flipped: bool = False


@dataclass(frozen=True)
class StepView:
    """One model call of a run (or, for ICL's training steps, the step without one), as the run made it."""

    run_dir: Path
    step: int
    steps_logged: int
    kind: str  # "train" (the step's training query) | "test" (one query of the step's test set)
    query: int | None  # test query index (kind "test")
    queries: int  # test queries at this step (0: no test)
    method: str  # e.g. "explorative ICRL", from the config (paper.methods.name_run)
    temperature: float
    seed: int  # seed + step: the strategy's and the sampler's seed at this step
    episodes: tuple[ContextEpisode, ...]  # exemplars first, then the kept episodes in chronological order
    added: tuple[int, ...]  # history indices in this context and not in the previous step's
    dropped: tuple[int, ...]  # in the previous step's context and not in this one
    context_index: int | None  # approximate ICRL: which of the K contexts was sampled
    context_lengths: tuple[int, ...] | None  # approximate ICRL: every context's length after this step's update
    contexts: tuple[tuple[int, ...], ...] | None  # approximate ICRL: every context's history indices
    model_call: bool  # False: an ICL training step (the gold label joins the history; nothing is predicted)
    prompt: str | None  # the exact prompt text (a chat backend: its messages as the debug file writes them)
    token_ids: tuple[int, ...] | None  # the prompt under the run's tokenizer (None: a server tokenizes messages)
    input: str
    prediction: str | None
    answer: str
    reward: int | None
    feedback: int | None  # the reward shown to later steps (training queries only)
    flipped: bool
    feedback_text: str | None  # the sentence later contexts show after this episode (None: none is shown)
    logprob: float | None  # the drawn label's log-probability as the run logged it (training queries)
    logged_prompt_tokens: int | None  # prompt tokens the run counted for this call (training queries)
    probabilities: tuple[tuple[str, float], ...] | None = None  # the law it was drawn from, most likely first

    @property
    def token_count(self) -> int | None:
        """Tokens of the prompt (None: not tokenized here)."""
        return None if self.token_ids is None else len(self.token_ids)

    @property
    def rank(self) -> int | None:
        """1-based rank of the prediction in :attr:`probabilities` (None without them)."""
        if self.probabilities is None or self.prediction is None:
            return None
        return 1 + [label for label, _ in self.probabilities].index(self.prediction)


@dataclass(frozen=True)
class StepInspector:
    """A run folder prepared once (plan, records); :meth:`view` rebuilds any logged step."""

    plan: RunPlan
    records: tuple[StepRecord, ...]
    log_path: Path

    @classmethod
    def open(cls, run_dir: str | os.PathLike) -> StepInspector:
        """Read the run folder ``run_dir`` (no lock, nothing written); UserError naming the folder when it is not a
        run folder, or its files disagree with its data or its tokenizer."""
        folder = Path(run_dir).expanduser().absolute()
        if not (folder / CONFIG_FILE).is_file():
            raise UserError(f"run folder: {folder} is not a run folder (no {CONFIG_FILE}); give a folder that a run "
                            "made under its output_dir")
        config = replace(with_paths_resolved(load_config(folder / CONFIG_FILE)), output_dir=str(folder.parent))
        meta = read_meta(folder)
        budget = meta.get("max_context_examples") if config.max_context_examples is None else None
        plan = recorded_plan(config, folder, recorded_facts(config, meta), budget, _provenance(meta))
        fingerprint = read_data(folder)
        if fingerprint is not None:
            check_recorded_data(folder / DATA_FILE, fingerprint, plan.task, plan.data)
        return cls(plan, tuple(read_records(folder)), folder / LOG_FILE)

    @property
    def test_steps(self) -> tuple[int, ...]:
        """The logged steps that tested."""
        return tuple(r.step for r in self.records if r.test is not None)

    def view(self, step: int, query: int | None = None, *, probs: bool = False,
             lm: LanguageModel | None = None) -> StepView:
        """Step ``step``'s training query, or its test query ``query`` (a zero-shot run has no training query: its
        first test query). ``probs``: the label distribution, on ``lm`` or the run's model loaded now."""
        rec, query = self._checked(step, query)
        plan = self.plan
        builder = ContextBuilder(plan)
        replay(plan, self.records[:step], builder, self.log_path)
        selection = builder.select(step)
        try:
            problem = (f"expected step {step}, found {rec.step!r}" if rec.step != step
                       else check_drawn(plan, step, rec, selection, plan.test_answers))
        except (KeyError, TypeError, IndexError, AttributeError) as err:
            problem = f"malformed record ({type(err).__name__}: {err})"
        if problem:
            raise UserError(f"{self.log_path}: line {step + 1}: {problem}")
        episodes = builder.episodes(selection)
        previous = set(self.records[step - 1].context.indices) if step else set()
        current = set(rec.context.indices)
        contexts = getattr(builder.state, "contexts", None)
        view = StepView(
            run_dir=plan.run_dir, step=step, steps_logged=len(self.records), kind="train" if query is None else "test",
            query=query, queries=len(rec.test.predictions) if rec.test else 0, method=name_run(plan.config.to_dict()),
            temperature=plan.config.temperature, seed=plan.config.seed + step,
            episodes=self._episodes(episodes, rec), added=tuple(sorted(current - previous)),
            dropped=tuple(sorted(previous - current)), context_index=rec.context.context_index,
            context_lengths=rec.context.context_lengths,
            contexts=tuple(tuple(c) for c in contexts) if contexts is not None else None,
            **self._call(builder, episodes, rec, query))
        return with_probabilities(view, plan, lm) if probs else view

    def _checked(self, step: int, query: int | None) -> tuple[StepRecord, int | None]:
        n = len(self.records)
        if n == 0:
            raise UserError(f"step: {self.plan.run_dir} has no logged step yet")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < n:
            raise UserError(f"step: {step} is not a logged step of {self.plan.run_dir.name}; allowed: 0..{n - 1} "
                            f"({n} of {self.plan.schedule.steps} steps logged)")
        rec = self.records[step]
        if query is None and rec.train is None:
            query = 0  # zero-shot: the step is its test set
        if query is not None:
            if rec.test is None:
                raise UserError(f"query: step {step} has no test; test steps: "
                                f"{', '.join(map(str, self.test_steps)) or 'none logged'}")
            m = len(rec.test.predictions)
            if isinstance(query, bool) or not isinstance(query, int) or not 0 <= query < m:
                raise UserError(f"query: {query} is not a test query of step {step}; allowed: 0..{m - 1}")
        return rec, query

    def _episodes(self, episodes: list[Episode], rec: StepRecord) -> tuple[ContextEpisode, ...]:
        exemplars = len(self.plan.exemplars)
        out = [ContextEpisode(None, e.input, e.answer, e.prediction, None, e.feedback) for e in episodes[:exemplars]]
        for index, e in zip(rec.context.indices, episodes[exemplars:]):
            train = self.records[index].train  # history index i is step i's training episode
            out.append(ContextEpisode(index, e.input, e.answer, e.prediction, train.reward, e.feedback,
                                      train.flipped))
        return tuple(out)

    def _call(self, builder: ContextBuilder, episodes: list[Episode], rec: StepRecord,
              query: int | None) -> dict[str, Any]:
        """The fields of the model call: prompt, tokens, input, prediction, answer, reward, feedback."""
        plan, config = self.plan, self.plan.config
        if query is None:
            t = rec.train
            shown = config.icrl and not config.icrl_omit_feedback
            out = dict(model_call=config.icrl, input=t.input, prediction=t.prediction, answer=t.answer,
                       reward=t.reward, feedback=t.feedback, flipped=t.flipped, logprob=t.logprob,
                       feedback_text=feedback_text(t.prediction, t.feedback == 1) if shown else None,
                       logged_prompt_tokens=rec.train_tokens.get("prompt") if config.icrl else None)
        else:
            prediction, answer = rec.test.predictions[query], rec.test.answers[query]
            out = dict(model_call=True, input=plan.task.format_input(plan.data.test[query]), prediction=prediction,
                       answer=answer, reward=int(prediction == answer), feedback=None, flipped=False, logprob=None,
                       feedback_text=None, logged_prompt_tokens=None)
        prompt = ids = None
        if out["model_call"] and config.backend_entry.chat:  # as the run's debug file writes a message list
            prompt = json.dumps(builder.chat(episodes, out["input"]), indent=1, ensure_ascii=False)
        elif out["model_call"]:
            prompt = builder.prompt(episodes, out["input"])
            ids = tuple(plan.model.encode(prompt))
        return {**out, "prompt": prompt, "token_ids": ids}


def inspect_step(run_dir: str | os.PathLike, step: int, query: int | None = None, *, probs: bool = False,
                 lm: LanguageModel | None = None) -> StepView:
    """One step of one run folder (:meth:`StepInspector.view`); open a :class:`StepInspector` to see many."""
    return StepInspector.open(run_dir).view(step, query, probs=probs, lm=lm)


def recorded_facts(config: ExperimentConfig, meta: dict[str, Any]) -> ModelFacts:
    """The model's facts as the run recorded them (``meta.json``), with its tokenizer loaded without weights; the
    tokenizer must still give the recorded end-of-turn token and system-role support. Without a record: read as
    :func:`~icrl_lib.runs.plan.prepare` reads them."""
    source = resolve_model(config.model_name, config.hf_token)
    recorded = meta.get("model") or {}
    if not isinstance(recorded.get("context_window"), int):
        return model_facts(config.model_name, source, config.trust_remote_code, config.hf_token, config.yarn_factor)
    tokenizer = load_tokenizer(config.model_name, source, config.trust_remote_code, config.hf_token)
    facts = ModelFacts(config.model_name, tokenizer, find_eot_id(tokenizer), recorded["context_window"],
                       supports_system_role(tokenizer), config.yarn_factor)
    for key in ("eot_id", "system_role"):
        if key in recorded and recorded[key] != getattr(facts, key):
            raise UserError(f"model_name: the tokenizer of {config.model_name} gives {key}={getattr(facts, key)!r}, "
                            f"the run recorded {recorded[key]!r}; it is not the tokenizer the run used")
    return facts


def _provenance(meta: dict[str, Any]) -> Provenance:
    recorded = meta.get("provenance") or {}
    return Provenance(**{f.name: recorded.get(f.name) for f in fields(Provenance)})


def with_probabilities(view: StepView, plan: RunPlan, lm: LanguageModel | None = None) -> StepView:
    """``view`` with the distribution over labels its prediction was drawn from (the paper's law at the run's
    temperature), computed on ``lm`` or on the run's model loaded now. UserError where there is no such call."""
    if not view.model_call:
        raise UserError(f"probs: step {view.step} of an ICL run makes no training prediction; ask for a query of a "
                        f"test step (test steps: {', '.join(map(str, plan.schedule.test_steps))})")
    if view.token_ids is None:
        raise UserError(f"probs: backend {plan.config.backend} sends messages that the server tokenizes with its "
                        "own model; the label distribution cannot be computed here")
    from icrl_lib.engine.generation import label_logprobs
    from icrl_lib.engine.models import load_model

    c = plan.config
    if lm is None:
        lm = load_model(c.model_name, c.device, c.trust_remote_code, c.hf_token,
                        source=resolve_model(c.model_name, c.hf_token), facts=plan.model, yarn_factor=c.yarn_factor,
                        dtype=c.dtype)
    logprobs = label_logprobs(lm, plan.trie, view.token_ids, c.temperature)
    ranked = sorted(((label, math.exp(lp)) for label, lp in logprobs.items()), key=lambda lp: -lp[1])
    return replace(view, probabilities=tuple(ranked))


def render_step(view: StepView, top: int = 10, width: int = 100) -> str:
    """The view as text (what ``icrl inspect`` prints): the step, its context, the call and its outcome, the prompt,
    then the label distribution (``top`` labels and the drawn one) when computed."""
    lines = [f"run: {view.run_dir}",
             f"step {view.step} ({view.steps_logged} step{'s' if view.steps_logged != 1 else ''} logged), seed "
             f"{view.seed}: "
             + ("training query" if view.kind == "train" else f"test query {view.query} of {view.queries}")
             + f"; {view.method}, temperature {view.temperature:g}"]
    history = [e for e in view.episodes if e.index is not None]
    exemplars = len(view.episodes) - len(history)
    context = f"context: {len(history)} episode(s)" + (f" after {exemplars} exemplar(s)" if exemplars else "")
    if view.context_index is not None:
        context += (f"; approximate context {view.context_index} of {len(view.context_lengths or ())} "
                    f"(lengths {', '.join(map(str, view.context_lengths or ()))})")
    lines.append(context)
    lines.append(f"  since step {view.step - 1}: added {_ids(view.added)}, dropped {_ids(view.dropped)}"
                 if view.step else "  step 0: the first context")
    if view.contexts is not None and view.step:
        newest = view.step - 1
        kept = [str(k) for k, c in enumerate(view.contexts) if newest in c]
        lines.append(f"  episode [{newest}] kept by context(s): {', '.join(kept) or 'none'}")
    for e in view.episodes:
        lines.append("  " + _episode_line(e, width))
    lines.append(f"input: {view.input}")
    if view.kind == "train" and not view.model_call:
        lines.append(f"no model call: ICL shows the gold label '{view.answer}' (ask a test step's query to see a "
                     "prompt)")
    else:
        outcome = f"prediction: '{view.prediction}'   gold: '{view.answer}'   reward {view.reward}"
        if view.feedback is not None:
            outcome += f"   feedback shown {view.feedback}" + (" (flipped)" if view.flipped else "")
        lines.append(outcome)
        if view.feedback_text is not None:
            lines.append(f"feedback text: {view.feedback_text}")
        elif view.kind == "train":
            lines.append("feedback text: none shown (icrl_omit_feedback)")
        if view.logprob is not None:
            lines.append(f"drawn with probability {math.exp(view.logprob):.4f} (log-probability {view.logprob:.4f}, "
                         "as logged)")
        tokens = "not counted here (the server tokenizes)" if view.token_count is None else f"{view.token_count}"
        if view.logged_prompt_tokens is not None:
            tokens += f" (the run counted {view.logged_prompt_tokens})"
        lines += [f"prompt tokens: {tokens}", "----- prompt -----", view.prompt or "", "----- end of prompt -----"]
    if view.probabilities is not None:
        lines.append(f"label distribution at temperature {view.temperature:g} (the drawn label ranks {view.rank} of "
                     f"{len(view.probabilities)}):")
        for i, (label, p) in enumerate(view.probabilities, start=1):
            if i <= top or label == view.prediction:
                lines.append(f"  {i:4d}. {p:8.4f}  {label}" + ("   <- drawn" if label == view.prediction else ""))
    return "\n".join(lines)


def _ids(indices: tuple[int, ...]) -> str:
    return " ".join(f"[{i}]" for i in indices) if indices else "none"


def _episode_line(e: ContextEpisode, width: int) -> str:
    text = " ".join(e.input.split())
    text = text if len(text) <= width // 2 else text[: width // 2 - 3] + "..."
    if e.index is None:
        return f"[exemplar] {text} -> '{e.answer}'"
    if e.prediction is None:
        return f"[{e.index}] {text} -> '{e.answer}' (gold)"
    flip = " (flipped)" if e.flipped else ""
    return (f"[{e.index}] {text} -> '{e.prediction}' (gold '{e.answer}'), reward {e.reward}, "
            f"feedback shown {e.feedback}{flip}")
