"""The paper's findings as claims that data can support, contradict or leave open: one :class:`Check` per claim.

A check compares two *sides*, each an arm of the family and a measure of its runs, as a claim about the difference
``left - right``: ``greater`` than a threshold, ``less`` than one, or ``within`` a margin of zero (an equivalence
claim: only an interval wholly inside the margin supports it). Thresholds and margins are the paper's wording ("at
most a few points" is 5 points, "within 5 points" is 5) and are never widened to make a check pass; where the
paper's own numbers leave a check open, the notebooks say that the paper's evidence is weak there.

A check names the models and tasks the paper makes it for (``paper_models``, ``paper_tasks``; empty: every one it
reports). The paper's own numbers are checked in those cells only (``tests/test_findings.py``: never contradicted);
our runs are checked on every task, and a task the paper does not claim the finding for is reported as beyond it.

Measures: ``final`` (test accuracy at the last test step; for ICL where the paper reads it, the first test at or
after the context is full, where its run stops), ``step0`` (test accuracy at step 0: zero-shot), ``rho`` (Spearman
rho of test accuracy with step: the paper's stability measure) and ``top_share`` (share of the most predicted label
in the last 50 training predictions: exploration collapse, which the paper names as naive ICRL's failure).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
PHI = "microsoft/Phi-3.5-mini-instruct"
QWEN_7B = "Qwen/Qwen2.5-7B-Instruct"
MEASURES = MappingProxyType({"final": "test_acc_final", "step0": "test_acc_step0", "rho": "spearman_rho",
                             "top_share": "top_label_share"})  # measure -> metric column of run_metrics
PAPER_TASKS = ("banking77", "clinic150", "nlu", "trec_coarse", "trec_fine")
FEW_POINTS = 0.05  # "a few points", "little": the paper's informal margins, fixed here once for every check


@dataclass(frozen=True)
class Check:
    """A finding of the paper as a claim about ``left`` minus ``right`` (arm labels of the family)."""

    text: str
    left: str
    right: str
    kind: str = "greater"  # greater | less | within (see stats.verdict)
    threshold: float = 0.0  # in the measure's units (accuracy as a fraction)
    measure: str = "final"  # of the left side: final | step0 | rho | top_share
    right_measure: str | None = None  # of the right side (None: the same), e.g. step0 for "gains over step 0"
    paper_models: tuple[str, ...] = ()  # the paper's models it is claimed for (empty: all it reports)
    paper_tasks: tuple[str, ...] = ()  # the tasks it is claimed for (empty: the paper's five)
    # (model, task) cells where the paper's own numbers go against it: named in ``text``, tested to be contradicted
    exceptions: tuple[tuple[str, str], ...] = ()
    source: str = ""  # where in the paper

    def __post_init__(self) -> None:
        for measure in (self.measure, self.right_measure or self.measure):
            if measure not in MEASURES:
                raise ValueError(f"measure: {measure!r}; allowed: {', '.join(MEASURES)}")
        if self.kind not in ("greater", "less", "within"):
            raise ValueError(f"kind: {self.kind!r}; allowed: greater, less, within")

    @property
    def sides(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """((left arm, measure), (right arm, measure))."""
        return (self.left, self.measure), (self.right, self.right_measure or self.measure)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks the paper claims it on."""
        return self.paper_tasks or PAPER_TASKS

    def claimed_for(self, model: str, task: str) -> bool:
        """Whether the paper makes this claim for ``model`` (one of its models) and ``task`` (a base task name)."""
        return ((not self.paper_models or model in self.paper_models) and task in self.tasks
                and (model, task) not in self.exceptions)

    def on_task(self, task: str) -> bool:
        """Whether the paper claims it on ``task`` (our runs, whatever the model; a task of your own is beyond it)."""
        return task in self.tasks


def _main(_: Mapping[str, tuple]) -> tuple[Check, ...]:
    src = "§3.1-3.2, Table 1"
    return (
        Check("Naive ICRL ends at most a few (5) points above zero-shot (the paper's exception: Qwen2.5-7B on "
              "Banking77, +11 points)", "naive ICRL", "zero-shot", "less", FEW_POINTS,
              exceptions=((QWEN_7B, "banking77"),), source=src),
        Check("Naive+ ICRL ends above zero-shot", "naive+ ICRL", "zero-shot", source=src),
        Check("Explorative ICRL ends above zero-shot", "explorative ICRL", "zero-shot", source=src),
        Check("Explorative ICRL ends above naive ICRL", "explorative ICRL", "naive ICRL", source=src),
        Check("ICL (gold labels) ends at or above explorative ICRL", "ICL", "explorative ICRL", source=src),
        Check("Approximate ICRL ends above zero-shot (the paper: with Llama-3.1-8B, not Phi-3.5-mini)",
              "approximate ICRL", "zero-shot", paper_models=(LLAMA,), source="§3.2, Figure 2"),
        Check("Naive ICRL collapses: its most predicted label takes a larger share of its last 50 training "
              "predictions than explorative ICRL's", "naive ICRL", "explorative ICRL", measure="top_share",
              source="§3.1 (the paper's explanation; it prints no number)"),
    )


def _reward_ablations(_: Mapping[str, tuple]) -> tuple[Check, ...]:
    src = "§3.4, Figure 3"
    return (
        Check("Explorative: only-positive ends above only-negative", "explorative: only_positive",
              "explorative: only_negative", source=src),
        Check("Explorative: only-positive ends above both", "explorative: only_positive", "explorative: both",
              source=src),
        Check("Naive (T=2): only-positive ends above both", "naive: only_positive", "naive: both", source=src),
        Check("Explorative: inverted rewards end below correct ones (both)", "explorative: inverted",
              "explorative: both", "less", source=src),
        Check("Explorative: 10% noisy rewards cost at most a few (5) points (both)", "explorative: noisy_10",
              "explorative: both", "greater", -FEW_POINTS, source=src),
        Check("Explorative: only-negative episodes gain at most a few (5) points over step 0",
              "explorative: only_negative", "explorative: only_negative", "less", FEW_POINTS, right_measure="step0",
              source=src),
        Check("Naive (T=2): only-negative episodes gain at most a few (5) points over step 0", "naive: only_negative",
              "naive: only_negative", "less", FEW_POINTS, right_measure="step0", source=src),
        Check("Naive (T=2): without feedback it gains at most a few (5) points over step 0 (explorative ICRL "
              "without feedback gains 14 points in the paper)", "naive: none", "naive: none", "less", FEW_POINTS,
              right_measure="step0", source=src),
    )


def _abstract(_: Mapping[str, tuple]) -> tuple[Check, ...]:
    src = "§3.5, Table 2"
    return (
        Check("Explorative ICRL with 1 exemplar/label ends above naive ICRL", "explorative ICRL (1 exemplar/label)",
              "naive ICRL", source=src),
        Check("One exemplar per label helps explorative ICRL on tasks with many labels (on TREC the paper's runs "
              "gain nothing or lose)", "explorative ICRL (1 exemplar/label)", "explorative ICRL (0 exemplar/label)",
              paper_tasks=("banking77", "clinic150", "nlu"), source=src),
    )


def _exploration(_: Mapping[str, tuple]) -> tuple[Check, ...]:
    return (
        Check("Explorative ICRL at p_keep 1.0 (no context stochasticity) ends below p_keep 0.1",
              "explorative ICRL, p_keep=1", "explorative ICRL, p_keep=0.1", "less", paper_tasks=("banking77",),
              source="§3.8, Figure 6"),
        Check("At T=2 naive ICRL still ends below Naive+ (temperature alone does not rescue it)", "naive ICRL, T=2",
              "naive+ ICRL, T=2", "less", paper_tasks=("banking77",), source="§3.9, Figure 7"),
    )


def _context_window(knobs: Mapping[str, tuple]) -> tuple[Check, ...]:
    small, large = sorted(knobs["window"])[:2] if len(knobs["window"]) > 1 else (None, None)
    if small is None:
        return ()
    src = "§3.10, Figure 8"
    return (
        Check(f"A {small}-token window ends below a {large}-token one (unbiased downsampling)",
              f"window {small}, random_unbiased", f"window {large}, random_unbiased", "less", source=src),
        Check(f"A {large}-token window ends below the full window (unbiased downsampling)",
              f"window {large}, random_unbiased", "explorative ICRL, full window", "less", source=src),
    )


def _approximate(_: Mapping[str, tuple]) -> tuple[Check, ...]:
    src = "§3.11, Figure 9"
    return (
        Check("K=8 ends within 5 points of explorative ICRL (K=∞) (the paper: Llama-3.1-8B)", "approximate ICRL, K=8",
              "explorative ICRL (K=∞)", "within", 0.05, paper_models=(LLAMA,), source=src),
        Check("K=8 ends above K=1 (the paper: Llama-3.1-8B)", "approximate ICRL, K=8", "approximate ICRL, K=1",
              paper_models=(LLAMA,), source=src),
        Check("K=32 ends above K=8 (the paper: Phi-3.5-mini needs K>=32)", "approximate ICRL, K=32",
              "approximate ICRL, K=8", paper_models=(PHI,), source=src),
        Check("K=8: exact sampling of the context ends no better than uniform", "approximate ICRL, K=8, exact",
              "approximate ICRL, K=8", "less", source=src),
    )


def _scaling(_: Mapping[str, tuple]) -> tuple[Check, ...]:
    return (
        Check("Explorative ICRL ends above its step 0 at every size", "explorative ICRL", "explorative ICRL",
              right_measure="step0", source="§3.6, Figure 5"),
        Check("Naive+ ICRL ends above its step 0 at every size", "naive+ ICRL", "naive+ ICRL", right_measure="step0",
              source="§3.6, Figure 5"),
        Check("Explorative ICRL learns more stably than Naive+ (higher Spearman ρ of test accuracy with step; the "
              "paper calls TREC inconclusive)", "explorative ICRL", "naive+ ICRL", measure="rho",
              paper_tasks=("banking77", "clinic150", "nlu"), source="§3.7"),
    )


CHECKS: Mapping[str, Callable[[Mapping[str, tuple]], tuple[Check, ...]]] = MappingProxyType({
    "main": _main, "reward_ablations": _reward_ablations, "abstract_labels": _abstract, "exploration": _exploration,
    "context_window": _context_window, "approximate": _approximate, "scaling": _scaling})


def checks_for(family: str, knobs: Mapping[str, Any]) -> tuple[Check, ...]:
    """The checks of ``family`` for its knob values (labels of knob arms depend on them)."""
    return CHECKS[family](knobs)
