"""The paper's findings as claims that data can support, contradict or leave open: one :class:`Check` per claim.

A check compares two *sides*, each an arm of the family and a measure of its runs, as a claim about the difference
``left - right``: ``greater`` than a threshold, ``less`` than one, or ``within`` a margin of zero (an equivalence
claim: only an interval wholly inside the margin supports it). "At or above" and "no better than" are
non-inferiority claims: ``greater`` than minus a margin, ``less`` than plus one. Thresholds are the paper's where it
gives a number; where it gives words ("a few points", "almost as well", "nearly"), ``reading`` says that the margin
is the toolkit's reading of those words. None is ever widened to make a check pass.

Every check has a stable ``id`` (``<family>.<name>``): the paper's published numbers, our verdict tables and the
README join on it, never on the text (which may name a profile's knob values).

A check names the models and tasks the paper makes it for (``paper_models``, ``paper_tasks``; empty: every one it
reports, as the paper says "all tasks and models"). Where the paper's own numbers go against its claim, the cells are
``exceptions``: kept in the claim's scope and shown as contradicted in the paper's column, never dropped from it
(``tests/analysis/test_verdicts.py``: the paper's numbers contradict a check exactly at its exceptions).

``across="size"`` compares one arm at the largest model size against the same arm at the smallest (the scaling
family's own question); the other checks compare two arms of one model.

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
GEMINI = "gemini-1.5-flash-8b"
MEASURES = MappingProxyType({"final": "test_acc_final", "step0": "test_acc_step0", "rho": "spearman_rho",
                             "top_share": "top_label_share"})  # measure -> metric column of run_metrics
PAPER_TASKS = ("banking77", "clinic150", "nlu", "trec_coarse", "trec_fine")
FEW_POINTS = 0.05  # "a few points", "little", "almost", "nearly": the toolkit's one reading of the paper's words
FEW = "our reading of the paper's '{}': 5 points"  # the ``reading`` of a margin taken from words


@dataclass(frozen=True)
class Check:
    """A finding of the paper as a claim about ``left`` minus ``right`` (arm labels of the family)."""

    id: str  # stable: "<family>.<name>"; paper numbers, tables and the README join on it
    text: str
    left: str
    right: str
    kind: str = "greater"  # greater | less | within (see stats.verdict)
    threshold: float = 0.0  # in the measure's units (accuracy as a fraction)
    measure: str = "final"  # of the left side: final | step0 | rho | top_share
    right_measure: str | None = None  # of the right side (None: the same), e.g. step0 for "gains over step 0"
    paper_models: tuple[str, ...] = ()  # the paper's models it is claimed for (empty: all it reports)
    paper_tasks: tuple[str, ...] = ()  # the tasks it is claimed for (empty: the paper's five)
    # (model, task) cells where the paper's own numbers go against it: in scope, shown as contradicted there
    exceptions: tuple[tuple[str, str], ...] = ()
    reading: str = ""  # where the threshold is the toolkit's reading of the paper's words, which words
    across: str = ""  # "size": left is the arm at the largest model, right the same arm at the smallest
    source: str = ""  # where in the paper

    def __post_init__(self) -> None:
        for measure in (self.measure, self.right_measure or self.measure):
            if measure not in MEASURES:
                raise ValueError(f"measure: {measure!r}; allowed: {', '.join(MEASURES)}")
        if self.kind not in ("greater", "less", "within"):
            raise ValueError(f"kind: {self.kind!r}; allowed: greater, less, within")
        if self.across not in ("", "size"):
            raise ValueError(f"across: {self.across!r}; allowed: '', size")

    @property
    def sides(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """((left arm, measure), (right arm, measure))."""
        return (self.left, self.measure), (self.right, self.right_measure or self.measure)

    @property
    def tolerance(self) -> bool:
        """Whether no effect at all can support it: "at most", "within", "at or above" (a margin on the null's side)."""
        return self.kind == "within" or (self.kind == "greater" and self.threshold < 0) or \
            (self.kind == "less" and self.threshold > 0)

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks the paper claims it on."""
        return self.paper_tasks or PAPER_TASKS

    def claimed_for(self, model: str, task: str) -> bool:
        """Whether the paper makes this claim for ``model`` (one of its models) and ``task`` (a base task name);
        its exceptions included (the paper's own numbers contradict it there)."""
        return (not self.paper_models or model in self.paper_models) and task in self.tasks

    def on_task(self, task: str) -> bool:
        """Whether the paper claims it on ``task`` (our runs, whatever the model; a task of your own is beyond it)."""
        return task in self.tasks


def _main(_: Mapping[str, tuple]) -> tuple[Check, ...]:
    src = "§3.1-3.2, Table 1"
    return (
        Check("main.naive_few_points", "Naive ICRL ends at most a few points above zero-shot", "naive ICRL",
              "zero-shot", "less", FEW_POINTS, exceptions=((QWEN_7B, "banking77"),),
              reading=FEW.format("at most a few points"), source=src),
        Check("main.naive_plus_above_zero_shot", "Naive+ ICRL ends above zero-shot", "naive+ ICRL", "zero-shot",
              source=src),
        Check("main.explorative_above_zero_shot", "Explorative ICRL ends above zero-shot", "explorative ICRL",
              "zero-shot", source=src),
        Check("main.explorative_above_naive", "Explorative ICRL ends above naive ICRL", "explorative ICRL",
              "naive ICRL", source=src),
        Check("main.icl_at_least_explorative", "ICL (gold labels) ends at or above explorative ICRL", "ICL",
              "explorative ICRL", "greater", -FEW_POINTS, reading=FEW.format("at or above") + " (non-inferiority)",
              source=src),
        Check("main.approximate_above_zero_shot", "Approximate ICRL ends above zero-shot (the paper: with "
              "Llama-3.1-8B, not Phi-3.5-mini)", "approximate ICRL", "zero-shot", paper_models=(LLAMA,), source=src),
        Check("main.approximate_above_naive", "Approximate ICRL ends above naive ICRL (the paper: with Llama-3.1-8B)",
              "approximate ICRL", "naive ICRL", paper_models=(LLAMA,), source=src),
        Check("main.approximate_near_explorative", "Approximate ICRL ends almost as well as explorative ICRL (the "
              "paper: with Llama-3.1-8B)", "approximate ICRL", "explorative ICRL", "greater", -FEW_POINTS,
              paper_models=(LLAMA,), exceptions=((LLAMA, "nlu"), (LLAMA, "trec_fine")),
              reading=FEW.format("almost as well") + " (non-inferiority)", source="§3.2, Table 1"),
        Check("main.naive_collapses", "Naive ICRL collapses: its most predicted label takes a larger share of its "
              "last 50 training predictions than explorative ICRL's", "naive ICRL", "explorative ICRL",
              measure="top_share", source="§3.1 (the paper's explanation; it prints no number)"),
    )


def _reward_ablations(_: Mapping[str, tuple]) -> tuple[Check, ...]:
    src = "§3.4, Figure 3"
    negligible = FEW.format("negligible gains")
    return (
        Check("reward_ablations.explorative_positive_above_negative", "Explorative: only-positive ends above "
              "only-negative", "explorative: only_positive", "explorative: only_negative", source=src),
        Check("reward_ablations.explorative_positive_above_both", "Explorative: only-positive ends above both",
              "explorative: only_positive", "explorative: both", source=src),
        Check("reward_ablations.naive_positive_above_both", "Naive (T=2): only-positive ends above both",
              "naive: only_positive", "naive: both", source=src),
        Check("reward_ablations.explorative_learns_with_negatives", "Explorative ICRL still learns with negative "
              "episodes in its context (both ends above its step 0)", "explorative: both", "explorative: both",
              right_measure="step0", source=src),
        Check("reward_ablations.noisy_few_points", "Explorative: 10% noisy rewards cost at most a few points (both)",
              "explorative: noisy_10", "explorative: both", "greater", -FEW_POINTS,
              reading=FEW.format("a few points"), source=src),
        *(Check(f"reward_ablations.{family}_{arm}_negligible", f"{name}: {what} bring negligible gains over step 0",
                f"{family}: {arm}", f"{family}: {arm}", "less", FEW_POINTS, right_measure="step0",
                exceptions=exceptions, reading=negligible, source=src)
          for family, name in (("naive", "Naive (T=2)"), ("explorative", "Explorative"))
          for arm, what, exceptions in (
              ("only_negative", "only-negative episodes", ()),
              ("none", "removed rewards (no feedback)",
               ((LLAMA, "banking77"), (LLAMA, "clinic150")) if family == "explorative" else ()),
              ("inverted", "inverted rewards",
               ((LLAMA, "banking77"), (LLAMA, "clinic150")) if family == "explorative" else ()))),
    )


def _abstract(_: Mapping[str, tuple]) -> tuple[Check, ...]:
    src = "§3.5, Table 2"
    one, zero = "explorative ICRL (1 exemplar/label)", "explorative ICRL (0 exemplar/label)"
    return (
        Check("abstract_labels.one_exemplar_above_naive", "Explorative ICRL with 1 exemplar/label ends above naive "
              "ICRL", one, "naive ICRL", source=src),
        Check("abstract_labels.one_exemplar_helps", "One exemplar per label helps explorative ICRL", one, zero,
              exceptions=((LLAMA, "trec_fine"), (QWEN_7B, "trec_fine")), source=src),
        Check("abstract_labels.learns_without_exemplars", "With abstract labels explorative ICRL learns without "
              "exemplars (ends above its step 0)", zero, zero, right_measure="step0", source=src),
        Check("abstract_labels.one_exemplar_near_icl", "With one exemplar per label explorative ICRL nearly reaches "
              "the ICL upper bound", one, "ICL", "greater", -FEW_POINTS, reading=FEW.format("nearly"),
              exceptions=EXCEPTIONS_NEAR_ICL, source=src),
    )


def _exploration(_: Mapping[str, tuple]) -> tuple[Check, ...]:
    return (
        Check("exploration.p_keep_1_below_0_1", "Explorative ICRL at p_keep 1.0 (no context stochasticity) ends "
              "below p_keep 0.1", "explorative ICRL, p_keep=1", "explorative ICRL, p_keep=0.1", "less",
              paper_tasks=("banking77",), source="§3.8, Figure 6"),
        Check("exploration.naive_t2_below_naive_plus", "At T=2 naive ICRL still ends below Naive+ (temperature "
              "alone does not rescue it)", "naive ICRL, T=2", "naive+ ICRL, T=2", "less",
              paper_tasks=("banking77",), source="§3.9, Figure 7"),
    )


def _context_window(knobs: Mapping[str, tuple]) -> tuple[Check, ...]:
    small, large = sorted(knobs["window"])[:2] if len(knobs["window"]) > 1 else (None, None)
    if small is None:
        return ()
    src = "§3.10, Figure 8"
    return (
        Check("context_window.smaller_below_larger", f"A {small}-token window ends below a {large}-token one "
              "(unbiased downsampling)", f"window {small}, random_unbiased", f"window {large}, random_unbiased",
              "less", source=src),
        Check("context_window.larger_below_full", f"A {large}-token window ends below the full window (unbiased "
              "downsampling)", f"window {large}, random_unbiased", "explorative ICRL, full window", "less",
              source=src),
    )


def _approximate(_: Mapping[str, tuple]) -> tuple[Check, ...]:
    src = "§3.11, Figure 9"
    return (
        Check("approximate.k8_near_explorative", "K=8 ends almost as well as explorative ICRL (K=∞) (the paper: "
              "Llama-3.1-8B)", "approximate ICRL, K=8", "explorative ICRL (K=∞)", "greater", -FEW_POINTS,
              paper_models=(LLAMA,), reading=FEW.format("almost as well") + " (non-inferiority)", source=src),
        Check("approximate.k8_above_k1", "K=8 ends above K=1 (the paper: Llama-3.1-8B)", "approximate ICRL, K=8",
              "approximate ICRL, K=1", paper_models=(LLAMA,), source=src),
        Check("approximate.k32_above_k8", "K=32 ends above K=8 (the paper: Phi-3.5-mini needs K>=32)",
              "approximate ICRL, K=32", "approximate ICRL, K=8", paper_models=(PHI,), source=src),
        Check("approximate.exact_no_better", "K=8: exact sampling of the context ends no better than uniform",
              "approximate ICRL, K=8, exact", "approximate ICRL, K=8", "less", FEW_POINTS,
              reading=FEW.format("no better") + " (non-superiority)", source=src),
    )


def _scaling(_: Mapping[str, tuple]) -> tuple[Check, ...]:
    return (
        Check("scaling.explorative_above_step0", "Explorative ICRL ends above its step 0 at every size",
              "explorative ICRL", "explorative ICRL", right_measure="step0", source="§3.6, Figure 5"),
        Check("scaling.naive_plus_above_step0", "Naive+ ICRL ends above its step 0 at every size", "naive+ ICRL",
              "naive+ ICRL", right_measure="step0", source="§3.6, Figure 5"),
        Check("scaling.explorative_more_stable", "Explorative ICRL learns more stably than Naive+ (higher Spearman "
              "ρ of test accuracy with step; the paper calls TREC inconclusive)", "explorative ICRL", "naive+ ICRL",
              measure="rho", paper_tasks=("banking77", "clinic150", "nlu"), source="§3.7"),
        Check("scaling.larger_ends_higher", "Explorative ICRL ends higher at the largest size than at the smallest",
              "explorative ICRL", "explorative ICRL", across="size", source="§3.6, Figure 5"),
        Check("scaling.larger_more_stable", "Explorative ICRL learns more stably at the largest size than at the "
              "smallest (Spearman ρ)", "explorative ICRL", "explorative ICRL", measure="rho", across="size",
              source="§3.7"),
    )


# The paper's own cells where explorative ICRL with one exemplar per label ends clearly more than 5 points below ICL
# (Table 2, 500 queries each): at the toolkit's reading of "nearly", its own numbers bear its words out on 1 of 15
# cells and contradict them on these 11. Recorded, not hidden by a wider margin (the README says so).
EXCEPTIONS_NEAR_ICL: tuple[tuple[str, str], ...] = tuple(
    (model, task) for model, tasks in ((QWEN_7B, ("banking77", "clinic150", "nlu", "trec_fine")),
                                       (GEMINI, ("banking77", "clinic150", "nlu", "trec_fine")),
                                       (LLAMA, ("banking77", "clinic150", "trec_fine"))) for task in tasks)


CHECKS: Mapping[str, Callable[[Mapping[str, tuple]], tuple[Check, ...]]] = MappingProxyType({
    "main": _main, "reward_ablations": _reward_ablations, "abstract_labels": _abstract, "exploration": _exploration,
    "context_window": _context_window, "approximate": _approximate, "scaling": _scaling})


def checks_for(family: str, knobs: Mapping[str, Any]) -> tuple[Check, ...]:
    """The checks of ``family`` for its knob values (labels of knob arms depend on them)."""
    return CHECKS[family](knobs)
