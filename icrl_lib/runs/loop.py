"""The ICRL experiment loop (the paper's ``run_experiment.py``), resumable step by step: prepare once, then loop.

:func:`run_experiment` prepares the run's plan (:mod:`icrl_lib.runs.plan`: everything a user can get wrong fails
there, before any folder is locked or weight read), locks the run folder, checks the logged steps against the plan
(:mod:`icrl_lib.runs.replay`), loads the model and computes the steps not yet logged. Each step: the strategy draws
the context (seeded with ``seed + step``); ICRL predicts the next training input, gets reward 1/0 and shows it
(possibly flipped) as feedback; ICL records the gold label. At the plan's test steps the whole test set is
predicted on that same context. Every completed step is one fsynced line in ``steps.jsonl``.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icrl_lib.engine.draws import Predictor
from icrl_lib.engine.models import LanguageModel
from icrl_lib.errors import RunInterrupted, ServerError, ServerRefused
from icrl_lib.runs.backend import open_backend
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.runs.context import ContextBuilder, shown_feedback
from icrl_lib.runs.estimate import announce
from icrl_lib.runs.plan import RunPlan, prepare
from icrl_lib.runs.progress import Progress
from icrl_lib.runs.record import StepRecord, TestRecord, TrainRecord
from icrl_lib.runs.replay import replay
from icrl_lib.runs.store import RunStore
from icrl_lib.runs.tables import steps_table, tests_table, write_tables

log = logging.getLogger("icrl")


@dataclass(frozen=True)
class RunResult:
    """What a finished (or resumed-and-finished) run leaves behind."""

    run_dir: Path
    records: list[StepRecord]
    max_context_examples: int  # episodes a context may hold besides the exemplars

    @property
    def steps(self):
        """The steps table (``runs.tables.steps_table``)."""
        return steps_table(self.records)

    @property
    def tests(self):
        """The tests table (``runs.tables.tests_table``)."""
        return tests_table(self.records)


def run_experiment(config: ExperimentConfig, progress: bool | None = True,
                   lm: LanguageModel | None = None) -> RunResult:
    """Run (or resume, or extend) one experiment; ``progress`` True = tqdm bar, False = a line every ``log_every``
    steps. ``lm``: a model already loaded in this process (sweep workers reuse one)."""
    return run(prepare(config, lm), progress, lm)


def run(plan: RunPlan, progress: bool | None = True, lm: LanguageModel | None = None) -> RunResult:
    """Run the steps of ``plan`` that its run folder does not hold yet."""
    _show_verbose_logs(plan.config)
    builder = ContextBuilder(plan)
    route = open_backend(plan, builder)  # a server backend is probed before the run folder is locked
    with RunStore.open(plan.run_dir, plan.config) as store:
        store.check_data(plan.task, plan.data)
        records = store.records()
        route.check_resume(store.meta())
        print(f"[icrl] run folder: {store.path} ({len(records)} steps logged)", flush=True)
        replay(plan, records, builder, store.log_path)
        store.trim_debug_prompts(min(sum(r.model_calls for r in records), plan.config.debug_k))
        if len(records) >= plan.schedule.steps:
            write_tables(store.path, records)
            return RunResult(store.path, records, plan.budget)
        predictor = route.predictor(lm)
        announce(plan, predictor, len(records))
        stepper = Stepper(plan, predictor, builder, store,
                          debug_left=plan.config.debug_k - sum(r.model_calls for r in records))
        store.write_meta({**plan.summary(), **route.record()})
        return RunResult(store.path, stepper.run(records, progress), plan.budget)


def _show_verbose_logs(config: ExperimentConfig) -> None:
    if config.verbose and not logging.getLogger().handlers and not log.handlers:
        # In a notebook nothing configures logging, and INFO records would vanish: show them on stderr.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


class Stepper:
    """Computes a run's steps on a loaded model: context, training prediction, test predictions, the record."""

    def __init__(self, plan: RunPlan, predictor: Predictor, builder: ContextBuilder, store: RunStore, debug_left: int):
        """``predictor``: the backend's (``engine.generation.LabelPredictor`` or a ``serving`` route's)."""
        self.plan, self.predictor, self.builder, self.store = plan, predictor, builder, store
        self.debug_left = debug_left
        self.test_queries = [plan.task.format_input(ex) for ex in plan.data.test]

    def run(self, records: list[StepRecord], progress: bool | None) -> list[StepRecord]:
        """Compute the steps after ``records``; tables are rewritten at every test step and at the end, so a long or
        killed run can be analysed while it runs. Ctrl-C ends with :class:`RunInterrupted` (resumable)."""
        records = list(records)
        reporter = Progress(self.plan, len(records), bool(progress), records)
        step = len(records)
        try:
            for step in range(len(records), self.plan.schedule.steps):
                rec, train_seconds, test_seconds = self.step(step)
                self.store.append(rec)
                records.append(rec)
                self.builder.remember(rec)
                if rec.test is not None:
                    write_tables(self.store.path, records)
                reporter.update(rec, train_seconds, test_seconds)
                if self.plan.config.verbose:
                    log.info("step %d: %s", step, {k: rec.to_json()[k] for k in ("context", "train", "tokens")})
        except KeyboardInterrupt:
            raise RunInterrupted(f"interrupted at step {step} of {self.plan.schedule.steps}: {len(records)} steps are "
                                 f"logged in {self.store.log_path}; rerun the same command to resume") from None
        except ServerRefused as err:  # a rerun alone would meet the same refusal: the message says what to change
            raise ServerRefused(f"{err}; stopped at step {step} of {self.plan.schedule.steps}: {len(records)} steps "
                                f"are logged in {self.store.log_path}, and the same command resumes once that is "
                                "changed") from None
        except ServerError as err:  # the step was not logged: nothing is lost
            raise ServerError(f"{err}; stopped at step {step} of {self.plan.schedule.steps}: {len(records)} steps are "
                              f"logged in {self.store.log_path}; rerun the same command to resume") from None
        finally:
            reporter.close()
        return records

    def step(self, step: int) -> tuple[StepRecord, float, float]:
        """One step's record, and the seconds its training part and its test part took."""
        started = time.perf_counter()
        selection = self.builder.select(step)
        episodes = self.builder.episodes(selection)
        context = self.builder.context(episodes)
        train = None if self.plan.config.zero_shot else self._train(step, episodes, context)
        train_tokens = self.predictor.tokens.take()  # the training prompt alone: the paper's compute measure
        tested = time.perf_counter()
        test = self._test(step, episodes, context) if step in self.plan.schedule.test_steps else None
        test_tokens = self.predictor.tokens.take()
        done = time.perf_counter()
        rec = StepRecord(step, self.builder.record(selection, episodes), train, test,
                         {k: _plus(train_tokens[k], test_tokens[k]) for k in train_tokens}, train_tokens,
                         self.predictor.cache_report(), round(done - started, 4))
        return rec, tested - started, done - tested

    def _train(self, step: int, episodes, context: str) -> TrainRecord:
        ex = self.plan.data.stream[step]
        query, answer = self.plan.task.format_input(ex), self.plan.task.answer(ex)
        if not self.plan.config.icrl:  # ICL: the gold label joins the history, nothing is predicted
            return TrainRecord(step, query, answer)
        prompts = self._prompts(episodes, [query])
        self._debug(prompts)
        pred = self.predictor.predict(prompts, self.plan.config.seed + step, stream=0, context=context)[0]
        reward = int(pred.label == answer)
        feedback, flipped = shown_feedback(self.plan, step, reward)
        return TrainRecord(step, query, answer, pred.label, reward, feedback, flipped, pred.logprob)

    def _test(self, step: int, episodes, context: str) -> TestRecord:
        prompts = self._prompts(episodes, self.test_queries)
        self._debug(prompts[:1])
        labels = tuple(p.label for p in self.predictor.predict(prompts, self.plan.config.seed + step, stream=1,
                                                                 context=context))
        answers = self.plan.test_answers
        return TestRecord(labels, answers, float(np.mean([p == a for p, a in zip(labels, answers)])))

    def _prompts(self, episodes, queries: list[str]) -> list:
        """The rendered prompts of ``queries``, or their chat messages for a backend that renders them itself."""
        if getattr(self.predictor, "chat", False):
            return [self.builder.chat(episodes, q) for q in queries]
        return [self.builder.prompt(episodes, q) for q in queries]

    def _debug(self, prompts: list) -> None:
        for prompt in prompts[: max(self.debug_left, 0)]:
            prompt = prompt if isinstance(prompt, str) else json.dumps(prompt, indent=1, ensure_ascii=False)
            log.info("model call prompt:\n%s", prompt)
            self.store.write_debug_prompt(prompt)
            self.debug_left -= 1


def _plus(a: int | None, b: int | None) -> int | None:
    """Token counts add up; unknown (a server that does not report its cache) stays unknown."""
    return None if a is None or b is None else a + b
