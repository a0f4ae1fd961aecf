"""The ICRL experiment loop (the paper's ``run_experiment.py``), resumable step by step.

Each step: the strategy builds the context from past episodes (seeded with ``seed + step``); ICRL predicts the
next training input, gets reward 1/0 and shows it (possibly flipped) as feedback; ICL records the gold label.
At step 0, at every step with ``(step + 1) % test_every == 0`` and at the last step, the whole test set is
predicted on that same context. Every completed step is one fsynced line in ``steps.jsonl``; a rerun replays the
logged steps (checking each record against the data stream and the strategy) and continues after the last one.

Order of work, so that a mistake costs nothing: config, output_dir, model name and data are checked before the run
folder is locked, and the folder is locked before the model is loaded.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import ExperimentConfig
from .errors import RunInterrupted, UserError
from .generation import LabelPredictor
from .models import LanguageModel, ModelSource, encode, find_eot_id, load_model, load_tokenizer, resolve_model
from .prompts import Episode, build_messages, render_context, render_prompt, system_prompt
from .results import COLLAPSE_WINDOW, format_duration, steps_table, tests_table, write_tables
from .storage import RunStore, check_output_dir
from .strategies import make_strategy
from .stream import RunData, check_data, sample_data
from .tasks import Task, check_label_tokens, load_task
from .window import episode_budget

log = logging.getLogger("icrl")
DEBUG_SEPARATOR = "=" * 80 + "\n"


@dataclass(frozen=True)
class RunResult:
    """What a finished (or resumed-and-finished) run leaves behind."""

    run_dir: Path
    records: list[dict]
    max_context_examples: int  # episodes a context may hold besides the exemplars

    @property
    def steps(self):
        """The steps table (``results.steps_table``)."""
        return steps_table(self.records)

    @property
    def tests(self):
        """The tests table (``results.tests_table``)."""
        return tests_table(self.records)


def test_schedule(steps: int, test_every: int) -> list[int]:
    """The test steps: step 0, every step with (step + 1) % test_every == 0, and the last step (sorted, unique)."""
    return sorted({0, steps - 1} | {s for s in range(steps) if (s + 1) % test_every == 0})


test_schedule.__test__ = False  # a library function, not a test, when a test module imports it


def flip_coin(seed: int, step: int) -> float:
    """The paper's coin for flipped feedback: the first uniform draw of default_rng(seed + step)."""
    return float(np.random.default_rng(seed + step).random())


def preflight(config: ExperimentConfig, model: bool = True, lm: LanguageModel | None = None
              ) -> tuple[ModelSource | None, Task, RunData, Any]:
    """Everything a user can get wrong, checked before a run folder is locked or a model loads: the config, that
    output_dir is writable, that ``model_name`` resolves (skipped with ``model=False``), the task file, the data and
    its sizes, and that the labels tokenize apart (with the tokenizer alone, or ``lm``'s). Raises UserError (one
    line naming the parameter or file). Returns (model source, task, sampled data, tokenizer or None)."""
    config.validate()
    check_output_dir(config.output_dir)
    if config.hf_token:
        os.environ["HF_TOKEN"] = config.hf_token  # for this process only; never written anywhere
    source = resolve_model(config.model_name, config.hf_token) if model and lm is None else None
    task = load_task(config.task_name, config.data_dir)
    data = sample_data(config, task)
    tokenizer = lm.tokenizer if lm is not None else (
        load_tokenizer(config.model_name, source, config.trust_remote_code, config.hf_token) if source else None)
    if tokenizer is not None:
        check_label_tokens(task, lambda text: encode(tokenizer, text), find_eot_id(tokenizer), config.model_name)
    return source, task, data, tokenizer


def run_experiment(config: ExperimentConfig, progress: bool | None = True, lm: LanguageModel | None = None) -> RunResult:
    """Run (or resume, or extend) one experiment; ``progress`` True = tqdm bar, False = a line every ``log_every``
    steps. Everything a user can get wrong is checked before the model loads (see :func:`preflight`)."""
    _show_verbose_logs(config)
    source, task, data, tokenizer = preflight(config, lm=lm)
    with RunStore.open(config) as store:
        check_data(store, task, data)
        records = store.records()
        print(f"[icrl] run folder: {store.path} ({len(records)} steps logged)", flush=True)
        lm = lm or load_model(config.model_name, config.device, config.trust_remote_code, source=source,
                             tokenizer=tokenizer)
        budget = 0 if config.zero_shot else episode_budget(config, lm, task, len(data.exemplars))
        steps = 1 if config.zero_shot else len(data.stream)
        to_test = test_schedule(steps, config.test_every)
        if not config.icrl and not config.zero_shot:  # ICL: the context is full once `budget` gold pairs exist
            steps = min([s for s in to_test if s >= budget], default=steps - 1) + 1
            to_test = [s for s in to_test if s < steps]
        loop = _Loop(config, task, lm, store, data, budget, steps, set(to_test))
        pool = loop.predictor.pool
        store.write_json("meta.json", {
            "max_context_examples": budget, "steps": steps, "test_steps": to_test, "train_size": len(data.stream),
            "test_size": len(data.test), "exemplars": len(data.exemplars), "kv_cache": {
                "budget_tokens": pool.budget_tokens, "max_entries": pool.max_entries,
                "bytes_per_token": lm.kv_bytes_per_token}, "model": {
                "name": lm.name, "context_window": lm.context_window, "eot_id": lm.eot_id, "device": lm.device,
                "system_role": lm.system_role}})
        loop.replay(records)
        loop.run(progress)
        return RunResult(store.path, loop.records, budget)


def _show_verbose_logs(config: ExperimentConfig) -> None:
    if config.verbose and not logging.getLogger().handlers and not log.handlers:
        # In a notebook nothing configures logging, and INFO records would vanish: show them on stderr.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


class _Loop:
    """State of one run: history of episodes, strategy state, predictor, progress reporting."""

    def __init__(self, config: ExperimentConfig, task: Task, lm: LanguageModel, store: RunStore, data: RunData,
                 budget: int, steps: int, to_test: set[int]):
        self.config, self.task, self.lm, self.store = config, task, lm, store
        self.stream, self.test, self.steps, self.to_test = data.stream, data.test, steps, to_test
        self.zero_shot = config.zero_shot
        self.icrl = config.icrl  # zero-shot with icrl: the ICRL prompt with no episodes (the paper's step 0)
        self.strategy = None if budget == 0 else make_strategy(
            config.context_strategy_name, max_examples=budget, p_keep=config.context_p_keep,
            max_contexts=config.max_contexts, sampling=config.approximate_context_sampling_method)
        self.state = self.strategy.initial_state() if self.strategy else None
        self.exemplars = [Episode(task.format_input(e), task.answer(e), task.answer(e) if self.icrl else None,
                                  1 if self.icrl else None) for e in data.exemplars]
        self.history: list[Episode] = []
        self.system = system_prompt(self.icrl, task.description, config.system_prompt)
        # One cache entry per approximate context (they only grow, so each is extended in place) plus one spare.
        self.predictor = LabelPredictor(lm, task.labels, config.temperature, fast=config.fast,
                                        batch_size=config.batch_size,
                                        max_cached_contexts=max(9, (config.max_contexts or 0) + 1))
        self.test_answers = [task.answer(ex) for ex in self.test]
        self.debug_left = config.debug_k
        self.records: list[dict] = []
        self.rewards: list[int] = []
        self.recent: deque[str] = deque(maxlen=COLLAPSE_WINDOW)  # latest training predictions
        self.last_test: float | None = None

    def _flipped(self, step: int) -> bool:
        """Whether the feedback shown at ``step`` is inverted (the paper's coin, with icrl_flip_feedback)."""
        return bool(self.config.icrl_flip_feedback
                    and flip_coin(self.config.seed, step) < self.config.icrl_flip_feedback_prob)

    def _select(self, step: int):
        if self.strategy is None:
            return None
        feedbacks = [e.feedback for e in self.history]
        selection, self.state = self.strategy.select(self.state, feedbacks, self.config.seed + step)
        return selection

    def replay(self, records: list[dict]) -> None:
        """Rebuild history and strategy state from logged steps, checking every record: its step, the data it
        logged (input, answer, test answers), the values it holds (labels, rewards, feedback) and its context."""
        if len(records) > self.steps:
            raise UserError(f"{self.store.log_path}: holds {len(records)} steps but this run has {self.steps}")
        for step, rec in enumerate(records):
            where = f"{self.store.log_path}: line {step + 1}"
            try:
                problem = self._check_record(step, rec)
            except (KeyError, TypeError, IndexError, AttributeError) as err:
                problem = f"malformed record ({type(err).__name__}: {err})"
            if problem:
                raise UserError(f"{where}: {problem}; restore the file, or remove the run folder to start over")
            self._remember(rec)
        self._trim_debug_prompts(records)

    def _check_record(self, step: int, rec: dict) -> str | None:
        """What is wrong with a logged record, or None. Also advances the strategy (its draws must be replayed)."""
        if rec["step"] != step:
            return f"expected step {step}, found {rec['step']!r}"
        selection = self._select(step)
        logged = rec["context"]["indices"] if rec.get("context") else []
        if list(selection.indices if selection else []) != list(logged):
            return "the context differs from what the strategy draws: the run was made by different code or settings"
        train = rec["train"]
        if self.zero_shot:
            if train is not None:
                return "a zero-shot step has no training episode"
        else:
            ex = self.stream[step]
            if train["input"] != self.task.format_input(ex) or train["answer"] != self.task.answer(ex):
                return "the logged training input differs from the data stream (was the data changed?)"
            if self.icrl:
                prediction, reward = train["prediction"], train["reward"]
                if prediction not in self.task.labels:
                    return f"prediction {prediction!r} is not a label of {self.task.name}"
                if reward != int(prediction == train["answer"]):
                    return f"reward {reward!r} does not match prediction and answer"
                flipped = self._flipped(step)
                if train["flipped"] != flipped or train["feedback"] != (1 - reward if flipped else reward):
                    return "feedback does not follow from the reward and the flip coin"
            elif train["prediction"] is not None or train["reward"] is not None:
                return "an ICL step has no prediction or reward"
        test = rec["test"]
        if test is None:
            return "no test results at a test step" if step in self.to_test else None
        if list(test["answers"]) != self.test_answers:
            return "the logged test answers differ from the test set (was the data changed?)"
        wrong = [p for p in test["predictions"] if p not in self.task.labels]
        if wrong or len(test["predictions"]) != len(self.test_answers):
            return f"test predictions hold non-labels {wrong[:3]!r} or a wrong count"
        return None

    def _remember(self, rec: dict) -> None:
        self.records.append(rec)
        if rec.get("test"):
            self.last_test = rec["test"]["accuracy"]
        train = rec.get("train")
        if train is None:
            return
        self.history.append(Episode(train["input"], train["answer"], train["prediction"], train["feedback"]))
        if train["reward"] is not None:
            self.rewards.append(train["reward"])
            self.recent.append(train["prediction"])

    def _prompt(self, episodes: list[Episode], query: str | None) -> str:
        messages = build_messages(self.system, episodes, query, icrl=self.icrl, prediction_prefix=self.task.prediction_prefix,
                                  omit_feedback=self.config.icrl_omit_feedback, system_role=self.lm.system_role)
        if query is None:
            return render_context(self.lm.tokenizer, messages)
        return render_prompt(self.lm.tokenizer, messages, self.task.prediction_prefix)

    def _trim_debug_prompts(self, records: list[dict]) -> None:
        """Keep exactly the debug prompts of the replayed steps' model calls, so a resume never repeats them."""
        calls = sum(int(bool(r["train"] and r["train"]["prediction"] is not None)) + int(bool(r["test"]))
                    for r in records)
        written = min(calls, self.config.debug_k)
        self.debug_left = self.config.debug_k - written
        path = self.store.path / "debug_prompts.txt"
        if path.is_file():
            entries = path.read_text(encoding="utf-8").split(DEBUG_SEPARATOR)
            if len(entries) - 1 > written:
                path.write_text("".join(e + DEBUG_SEPARATOR for e in entries[:written]), encoding="utf-8")

    def _debug(self, prompts: list[str]) -> None:
        for prompt in prompts[: max(self.debug_left, 0)]:
            log.info("model call prompt:\n%s", prompt)
            with open(self.store.path / "debug_prompts.txt", "a", encoding="utf-8") as fh:
                fh.write(prompt + "\n" + DEBUG_SEPARATOR)
            self.debug_left -= 1

    def step(self, step: int) -> dict[str, Any]:
        started = time.perf_counter()
        selection = self._select(step)
        episodes = self.exemplars + ([self.history[i] for i in selection.indices] if selection else [])
        context = self._prompt(episodes, None)
        train = None
        if not self.zero_shot:
            ex = self.stream[step]
            query, answer = self.task.format_input(ex), self.task.answer(ex)
            train = {"example": step, "input": query, "answer": answer, "prediction": None, "reward": None,
                     "feedback": None, "flipped": False, "logprob": None}
            if self.icrl:
                prompt = self._prompt(episodes, query)
                self._debug([prompt])
                pred = self.predictor.predict([prompt], self.config.seed + step, stream=0, context=context)[0]
                reward = int(pred.label == answer)
                flipped = self._flipped(step)
                train.update(prediction=pred.label, reward=reward, feedback=1 - reward if flipped else reward,
                             flipped=flipped, logprob=pred.logprob)
        train_tokens = self.predictor.tokens.take()  # the training prompt alone: the paper's compute measure
        test = None
        if step in self.to_test:
            prompts = [self._prompt(episodes, self.task.format_input(ex)) for ex in self.test]
            self._debug(prompts[:1])
            preds = self.predictor.predict(prompts, self.config.seed + step, stream=1, context=context)
            labels = [p.label for p in preds]
            test = {"predictions": labels, "answers": self.test_answers,
                    "accuracy": float(np.mean([p == a for p, a in zip(labels, self.test_answers)]))}
        ctx = {"indices": list(selection.indices) if selection else [],
               "context_index": getattr(selection, "context_index", None),
               "context_lengths": list(selection.context_lengths) if selection and selection.context_lengths else None,
               "size": len(episodes), "positive": sum(1 for e in episodes if e.feedback == 1)}
        test_tokens = self.predictor.tokens.take()
        tokens = {k: train_tokens[k] + test_tokens[k] for k in train_tokens}
        return {"step": step, "context": ctx, "train": train, "test": test, "tokens": tokens,
                "train_tokens": train_tokens, "cache": self.predictor.pool.report(),
                "seconds": round(time.perf_counter() - started, 4)}

    def run(self, progress: bool | None) -> None:
        """Compute the steps not yet logged; tables are rewritten at every test step and at the end, so a long or
        killed run can be analysed while it runs. Ctrl-C ends with :class:`RunInterrupted` (resumable)."""
        start = len(self.records)
        if start >= self.steps:
            write_tables(self.store.path, self.records)
            return
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.steps, initial=start, desc=f"{self.task.name} {self.config.context_strategy_name}",
                       unit="step")
        began = time.perf_counter()
        step = start
        try:
            for step in range(start, self.steps):
                rec = self.step(step)
                self.store.append(rec)
                self._remember(rec)
                if rec["test"]:
                    write_tables(self.store.path, self.records)
                self._report(step, rec, bar, (step + 1 - start) / max(time.perf_counter() - began, 1e-9))
        except KeyboardInterrupt:
            raise RunInterrupted(f"interrupted at step {step} of {self.steps}: {len(self.records)} steps are logged "
                                 f"in {self.store.log_path}; rerun the same command to resume") from None
        finally:
            if bar is not None:
                bar.close()

    def _report(self, step: int, rec: dict, bar, rate: float) -> None:
        running = float(np.mean(self.rewards)) if self.rewards else float("nan")
        test = "-" if self.last_test is None else f"{self.last_test:.3f}"
        labels = len(set(self.recent))
        if bar is not None:
            bar.set_postfix(running_acc=f"{running:.3f}", test_acc=test, labels=labels, refresh=False)
            bar.update(1)
        elif (step + 1) % self.config.log_every == 0 or rec["test"] or step == self.steps - 1:
            # Headless (papermill, batch logs): one coarse line instead of a bar that never refreshes.
            left = (self.steps - step - 1) / rate
            speed = f"{rate:.2f} steps/s" if rate >= 1 else f"{1 / rate:.1f} s/step"
            print(f"[icrl] step {step + 1}/{self.steps} ({(step + 1) / self.steps:.0%}) {speed}, ETA "
                  f"{format_duration(left)} | running_acc={running:.3f} test_acc={test} labels(last "
                  f"{len(self.recent)})={labels} context={rec['context']['size']} "
                  f"tokens={rec['tokens']['computed']}/{rec['tokens']['prompt']}", flush=True)
        if self.config.verbose:
            log.info("step %d: %s", step, {k: rec[k] for k in ("context", "train", "tokens")})
