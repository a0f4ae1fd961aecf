"""Resuming a run: every logged step is checked against the plan before the loop goes on from the first missing one.

Pure (no model): the strategy's draws are replayed with the same seeds, and each record must hold the data the plan
says (input, answer, test answers), values that are possible (labels, rewards, feedback that follows from the reward
and the flip coin) and the context the strategy draws. A record that fails is refused with the file and line.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from icrl_lib.errors import UserError
from icrl_lib.paper.strategies import Selection
from icrl_lib.runs.context import ContextBuilder, shown_feedback
from icrl_lib.runs.plan import RunPlan
from icrl_lib.runs.record import StepRecord


def replay(plan: RunPlan, records: Sequence[StepRecord], builder: ContextBuilder, log_path: Path) -> None:
    """Check ``records`` (the log at ``log_path``) against ``plan`` and bring ``builder`` to the step after them."""
    if len(records) > plan.schedule.steps:
        raise UserError(f"{log_path}: holds {len(records)} steps but this run has {plan.schedule.steps}")
    answers = plan.test_answers
    for step, rec in enumerate(records):
        try:
            problem = check_record(plan, builder, step, rec, answers)
        except (KeyError, TypeError, IndexError, AttributeError) as err:
            problem = f"malformed record ({type(err).__name__}: {err})"
        if problem:
            raise UserError(f"{log_path}: line {step + 1}: {problem}; restore the file, or remove the run folder to "
                            "start over")
        builder.remember(rec)


def check_record(plan: RunPlan, builder: ContextBuilder, step: int, rec: StepRecord,
                 answers: tuple[str, ...]) -> str | None:
    """What is wrong with the record of ``step``, or None. Advances the strategy (its draws must be replayed)."""
    if rec.step != step:
        return f"expected step {step}, found {rec.step!r}"
    return check_drawn(plan, step, rec, builder.select(step), answers)


def check_drawn(plan: RunPlan, step: int, rec: StepRecord, selection: Selection | None,
                answers: tuple[str, ...]) -> str | None:
    """What is wrong with the record of ``step``, given the context the strategy drew for it, or None."""
    if tuple(selection.indices if selection else ()) != tuple(rec.context.indices):
        return "the context differs from what the strategy draws: the run was made by different code or settings"
    problem = _check_train(plan, step, rec)
    if problem:
        return problem
    if rec.test is None:
        return "no test results at a test step" if step in plan.schedule.test_steps else None
    if tuple(rec.test.answers) != answers:
        return "the logged test answers differ from the test set (was the data changed?)"
    wrong = [p for p in rec.test.predictions if p not in plan.task.labels]
    if wrong or len(rec.test.predictions) != len(answers):
        return f"test predictions hold non-labels {wrong[:3]!r} or a wrong count"
    return None


def _check_train(plan: RunPlan, step: int, rec: StepRecord) -> str | None:
    train, config, task = rec.train, plan.config, plan.task
    if config.zero_shot:
        return "a zero-shot step has no training episode" if train is not None else None
    ex = plan.data.stream[step]
    if train is None or train.input != task.format_input(ex) or train.answer != task.answer(ex):
        return "the logged training input differs from the data stream (was the data changed?)"
    if not config.icrl:
        ok = train.prediction is None and train.reward is None
        return None if ok else "an ICL step has no prediction or reward"
    if train.prediction not in task.labels:
        return f"prediction {train.prediction!r} is not a label of {task.name}"
    if train.reward != int(train.prediction == train.answer):
        return f"reward {train.reward!r} does not match prediction and answer"
    if (train.feedback, train.flipped) != shown_feedback(plan, step, train.reward):
        return "feedback does not follow from the reward and the flip coin"
    return None
