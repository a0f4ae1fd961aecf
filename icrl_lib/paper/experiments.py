"""The paper's experiment families as data: which runs each needs, how the paper names them, what it found.

A family (``FAMILIES``) is a set of arms; an arm is a labelled bundle of config fields (a method from
:mod:`icrl_lib.paper.methods` plus the setting the family varies) with the coordinates of the paper's published
numbers (``paper_results.csv``'s ``method`` and ``setting``). The values a family sweeps (p_keep, temperatures,
windows, K) are knobs with the paper's defaults that a params file may shrink for a CPU. The paper's findings a
family checks are :mod:`icrl_lib.paper.findings`. Pure data: :mod:`icrl_lib.families.spec` expands a family into
run configs, :mod:`icrl_lib.analysis.verdicts` tests its findings on the runs' per-query results.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from icrl_lib.errors import UserError
from icrl_lib.paper.findings import Check, checks_for
from icrl_lib.paper.methods import config_fields


@dataclass(frozen=True)
class Arm:
    """One line of a family's figures: its label, config fields and the paper's coordinates for it."""

    label: str
    fields: Mapping[str, Any]
    paper_method: str  # paper_results.csv `method`
    paper_setting: str = ""  # paper_results.csv `setting`
    reference: bool = False  # zero-shot / ICL: drawn flat across the steps of the others
    knob: str | None = None  # the value this arm sets among those the family sweeps (p_keep, temperature, window, K)
    x: float | None = None  # that value


@dataclass(frozen=True)
class Family:
    """An experiment family of the paper."""

    name: str
    title: str
    paper: str  # where in the paper (v3)
    question: str
    finding: str
    paper_families: tuple[str, ...]  # paper_results.csv `family` values it reproduces
    build: Callable[[Mapping[str, tuple]], tuple[Arm, ...]]
    knobs: Mapping[str, tuple] = field(default_factory=dict)  # paper defaults of the values the family sweeps
    by_model: bool = False  # the family's knob is the model (scaling): final accuracy is drawn against it
    task_suffix: str = ""  # "_unsemantic" for abstract labels

    def knob_values(self, knobs: Mapping[str, Any] | None = None) -> dict[str, tuple]:
        """``knobs`` over the paper's values; UserError on a knob the family does not have."""
        values = dict(self.knobs)
        for key, value in (knobs or {}).items():
            if key not in self.knobs:
                raise UserError(f"knobs: {self.name} has no knob {key!r}; allowed: {', '.join(self.knobs) or 'none'}")
            values[key] = tuple(value)
        return values

    def arms(self, knobs: Mapping[str, Any] | None = None) -> tuple[Arm, ...]:
        """The arms for ``knobs`` (the paper's values where a knob is not given)."""
        return self.build(self.knob_values(knobs))

    def checks(self, knobs: Mapping[str, Any] | None = None) -> tuple[Check, ...]:
        """The paper's findings this family checks (:mod:`icrl_lib.paper.findings`), for ``knobs``."""
        return checks_for(self.name, self.knob_values(knobs))


def arm(label: str, method: str, paper_method: str | None = None, paper_setting: str = "", knob: str | None = None,
        x: float | None = None, **overrides: Any) -> Arm:
    """An arm from a method of the table plus field overrides."""
    return Arm(label, MappingProxyType(config_fields(method, **overrides)), paper_method or method, paper_setting,
               reference=method in ("zero_shot", "icl"), knob=knob, x=x)


def _main(_: Mapping) -> tuple[Arm, ...]:
    return (arm("zero-shot", "zero_shot", paper_setting="temperature=1.0"), arm("ICL", "icl"),
            arm("naive ICRL", "naive"), arm("naive+ ICRL", "naive_plus"), arm("explorative ICRL", "explorative"),
            arm("approximate ICRL", "approximate"))


_ABLATIONS = {  # label -> (strategy suffix, overrides): the paper's §3.4 rows
    "none": ("", {"icrl_omit_feedback": True}), "only_negative": ("_only_negative", {}),
    "only_positive": ("_only_positive", {}), "both": ("", {}),
    "noisy_10": ("", {"icrl_flip_feedback": True, "icrl_flip_feedback_prob": 0.1}),
    "inverted": ("", {"icrl_flip_feedback": True, "icrl_flip_feedback_prob": 1.0}),
}


def _reward_ablations(_: Mapping) -> tuple[Arm, ...]:
    out = []
    for family, method, strategy, temperature in (("naive", "naive", "random_biased_end", 2.0),
                                                  ("explorative", "explorative", "random_unbiased", 1.0)):
        for label, (suffix, overrides) in _ABLATIONS.items():
            out.append(arm(f"{family}: {label}", method, paper_method=label,
                           paper_setting=f"method_family={family};temperature={temperature}",
                           context_strategy_name=strategy + suffix, temperature=temperature, **overrides))
    return tuple(out)


def _abstract(_: Mapping) -> tuple[Arm, ...]:
    return (arm("ICL", "icl"), arm("naive ICRL", "naive"),
            *(arm(f"{name} ({n} exemplar/label)", key, paper_setting=f"exemplars_per_label={n}", exemplars_per_label=n)
              for key, name in (("naive_plus", "naive+ ICRL"), ("explorative", "explorative ICRL")) for n in (0, 1)))


def _exploration(k: Mapping) -> tuple[Arm, ...]:
    return (*(arm(f"explorative ICRL, p_keep={p:g}", "explorative", paper_setting=f"p_keep={float(p)}", knob="p_keep",
                  x=p, context_p_keep=float(p)) for p in k["p_keep"]),
            *(arm(f"{name}, T={t:g}", key, paper_setting=f"temperature={float(t)}", knob="temperature", x=t,
                  temperature=float(t))
              for key, name in (("naive", "naive ICRL"), ("naive_plus", "naive+ ICRL")) for t in k["temperature"]))


def _context_window(k: Mapping) -> tuple[Arm, ...]:
    # The paper's figure labels 'Start-Biased' the code's random_biased_end (keeps the most recent episodes).
    return (arm("explorative ICRL, full window", "explorative",
                paper_setting="window=131072;downsampling=random_unbiased"),
            *(arm(f"window {w}, {d}", "explorative", paper_setting=f"window={w};downsampling={d}", knob="window", x=w,
                  max_window_tokens=int(w), context_strategy_name=f"{d}_only_positive")
              for w in k["window"] for d in ("random_biased_start", "random_biased_end", "random_unbiased")))


def _approximate(k: Mapping) -> tuple[Arm, ...]:
    return (*(arm(f"approximate ICRL, K={K}", "approximate", paper_setting=f"K={K};sampling=uniform", knob="K", x=K,
                  max_contexts=int(K)) for K in k["K"]),
            arm("approximate ICRL, K=8, exact", "approximate", paper_setting="K=8;sampling=exact",
                approximate_context_sampling_method="exact"),
            arm("explorative ICRL (K=∞)", "explorative", paper_setting="K=inf"))


def _scaling(_: Mapping) -> tuple[Arm, ...]:
    return (arm("naive ICRL", "naive"), arm("naive+ ICRL", "naive_plus"), arm("explorative ICRL", "explorative"))


FAMILIES: Mapping[str, Family] = MappingProxyType({f.name: f for f in (
    Family("main", "Main results: ICRL methods against zero-shot and the ICL upper bound",
           "§3.1-3.3, Figure 2, Table 1",
           "Does a model learn a classification task in context from rewards alone, and which way of building the "
           "context makes it work?",
           "Naive ICRL degenerates: it stops exploring and ends at most a few points above zero-shot, often below "
           "(Qwen2.5-7B on Banking77 is the exception: +11 points). Naive+ (positive episodes only) and explorative "
           "ICRL learn, explorative ICRL often approaching the ICL upper bound; approximate ICRL learns too at a "
           "fraction of the compute with Llama-3.1-8B, but with Phi-3.5-mini it ends below zero-shot on 4 of 5 tasks.",
           ("main", "zero_shot"), _main),
    Family("reward_ablations", "Which rewards matter", "§3.4, Figure 3",
           "What does the model learn from: positive episodes, negative ones, the feedback text, correct rewards?",
           "Positive episodes carry the learning: contexts of positive episodes only learn best, and adding the "
           "negative ones (both) costs much of the gain. Only negative episodes learn little. Without feedback naive "
           "ICRL learns nothing, while explorative ICRL still gains 14 points. With both kinds of episode, 10% noisy "
           "rewards cost a few points and inverted rewards cost more.",
           ("reward_ablations",), _reward_ablations),
    Family("abstract_labels", "Abstract labels", "§3.5, Figure 4, Table 2",
           "Does ICRL still work when label names carry no meaning (label_1000, ...), so that prior knowledge of the "
           "task cannot help?", "With abstract labels naive ICRL stays near 0% while explorative ICRL learns; one "
           "exemplar per label helps explorative ICRL start on tasks with many labels (Banking77, CLINIC150, NLU), "
           "not on TREC.", ("abstract_labels",), _abstract, task_suffix="_unsemantic"),
    Family("exploration", "Exploration: p_keep and temperature", "§3.8-3.9, Figures 6-7",
           "How much stochasticity does ICRL need: in which episodes enter the context (p_keep) and in sampling "
           "predictions (temperature)?", "On Banking77, explorative ICRL works over p_keep 0.05-0.5 and degrades at "
           "1.0 (no context stochasticity) and at 0.01; naive ICRL stays far below Naive+ at every temperature, so "
           "raising the temperature alone does not rescue it.",
           ("p_keep", "temperature"), _exploration, knobs=MappingProxyType({
               "p_keep": (0.01, 0.05, 0.1, 0.5, 1.0), "temperature": (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)})),
    Family("context_window", "Limited context windows", "§3.10, Figure 8",
           "What if the context window is too small for all the episodes explorative ICRL keeps, and which episodes "
           "should be dropped?", "Limited windows cost accuracy: with 4K- and 8K-token windows explorative ICRL "
           "ends 12-27 points below the full 128K window, 4K below 8K; the downsampling strategy moves it by up to 8 "
           "points.", ("context_window",), _context_window, knobs=MappingProxyType({"window": (4096, 8192)})),
    Family("approximate", "Approximate ICRL: number of contexts and sampling", "§3.11 and §4, Figure 9, Table 3",
           "How many contexts K does approximate ICRL need to match explorative ICRL, and at what compute?",
           "With Llama-3.1-8B accuracy rises with K and is within 5 points of explorative ICRL (K=∞) at K=8, "
           "processing 100-280x fewer tokens; Phi-3.5-mini needs K≥32. Exact sampling of the context is worse than "
           "uniform.", ("approximate", "compute"), _approximate,
           knobs=MappingProxyType({"K": (1, 2, 4, 8, 32, 128)})),
    Family("scaling", "Model scale", "§3.6-3.7, Figure 5",
           "Does in-context reinforcement learning improve with model size, and do larger models learn more stably?",
           "Every size (Qwen2.5 0.5B to 72B) improves substantially over zero-shot with explorative ICRL and Naive+, "
           "larger ones more; explorative ICRL learns more stably than Naive+ (higher Spearman ρ on Banking77, "
           "CLINIC150 and NLU; the paper calls TREC inconclusive), and naive ICRL's test accuracy falls over the run "
           "at most sizes.", ("scaling", "stability"), _scaling, by_model=True),
)})


def family(name: str) -> Family:
    """The family ``name``; UserError naming the allowed ones."""
    if name not in FAMILIES:
        raise UserError(f"family: unknown {name!r}; allowed: {', '.join(FAMILIES)}")
    return FAMILIES[name]


