"""Progress of a run: a tqdm bar, or (headless: papermill, batch logs) one line every ``log_every`` steps and at test
steps, with an ETA that counts training steps and test steps apart (a test over the whole test set costs many
training steps, so one rate for both would be wrong at step 0 and after every test)."""
from __future__ import annotations

import math
from collections import deque

import numpy as np

from icrl_lib.runs.plan import RunPlan
from icrl_lib.runs.record import StepRecord
from icrl_lib.runs.tables import COLLAPSE_WINDOW


def format_duration(seconds: float) -> str:
    """``3h02m``, ``14m25s`` or ``42s`` (progress lines and ETAs)."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def eta(train_left: int, tests_left: int, train_seconds: float, train_steps: int, test_seconds: float,
        tests: int) -> float:
    """Seconds left: training steps left x the mean training step, plus tests left x the mean test (NaN while
    either still has no measurement and some of it is left)."""
    per_train = train_seconds / train_steps if train_steps else math.nan
    per_test = test_seconds / tests if tests else math.nan
    return (train_left * per_train if train_left else 0.0) + (tests_left * per_test if tests_left else 0.0)


class Progress:
    """What a run prints while it goes; ``update`` once per computed step."""

    def __init__(self, plan: RunPlan, start: int, bar: bool, history: list[StepRecord]):
        self.plan, self.config = plan, plan.config
        self.rewards = [r.train.reward for r in history if r.train and r.train.reward is not None]
        self.recent = deque((r.train.prediction for r in history if r.train and r.train.reward is not None),
                            maxlen=COLLAPSE_WINDOW)
        self.last_test = next((r.test.accuracy for r in reversed(history) if r.test), None)
        self.train_seconds = self.test_seconds = 0.0
        self.train_steps = self.tests = 0
        self.bar = None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=plan.schedule.steps, initial=start, unit="step",
                            desc=f"{plan.task.name} {self.config.context_strategy_name}")

    def update(self, rec: StepRecord, train_seconds: float, test_seconds: float) -> None:
        """Count one step (its training and test parts timed apart) and report it."""
        self.train_seconds += train_seconds
        self.train_steps += rec.train is not None
        if rec.test is not None:
            self.test_seconds += test_seconds
            self.tests += 1
            self.last_test = rec.test.accuracy
        if rec.train is not None and rec.train.reward is not None:
            self.rewards.append(rec.train.reward)
            self.recent.append(rec.train.prediction)
        if self.bar is not None:
            self.bar.set_postfix(running_acc=f"{self._running():.3f}", test_acc=self._test(),
                                 labels=len(set(self.recent)), refresh=False)
            self.bar.update(1)
        elif self._due(rec.step, rec.test is not None):
            print(self.line(rec), flush=True)

    def _due(self, step: int, tested: bool) -> bool:
        return (step + 1) % self.config.log_every == 0 or tested or step == self.plan.schedule.steps - 1

    def _running(self) -> float:
        return float(np.mean(self.rewards)) if self.rewards else float("nan")

    def _test(self) -> str:
        return "-" if self.last_test is None else f"{self.last_test:.3f}"

    def line(self, rec: StepRecord) -> str:
        """The headless progress line after ``rec``."""
        steps = self.plan.schedule.steps
        train_left = steps - rec.step - 1 if not self.config.zero_shot else 0
        tests_left = sum(1 for s in self.plan.schedule.test_steps if s > rec.step)
        left = eta(train_left, tests_left, self.train_seconds, self.train_steps, self.test_seconds, self.tests)
        per_step = self.train_seconds / self.train_steps if self.train_steps else math.nan
        speed = "-" if math.isnan(per_step) else (f"{1 / per_step:.2f} steps/s" if 0 < per_step < 1 else
                                                    f"{per_step:.2f} s/step")
        tests = f", tests {self.test_seconds / self.tests:.1f} s each" if self.tests else ""
        return (f"[icrl] step {rec.step + 1}/{steps} ({(rec.step + 1) / steps:.0%}) {speed}{tests}, ETA "
                f"{'-' if math.isnan(left) else format_duration(left)} | running_acc={self._running():.3f} "
                f"test_acc={self._test()} labels(last {len(self.recent)})={len(set(self.recent))} "
                f"context={rec.context.size} "
                f"tokens={_known(rec.tokens.get('computed', 0))}/{rec.tokens.get('prompt', 0)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _known(count: int | None) -> str:
    """A count, or ``?`` where the backend cannot tell (a server that does not report its cache)."""
    return "?" if count is None else str(count)
