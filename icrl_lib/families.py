"""The paper's experiment families as data: which runs each needs, how the paper names them, what it found.

A family (``FAMILIES``) is a set of arms; an arm is a labelled bundle of config fields (a method from
:mod:`icrl_lib.methods` plus the setting the family varies) with the coordinates of the paper's published numbers
(``paper_results.csv``'s ``method`` and ``setting``). The values a family sweeps (p_keep, temperatures, windows, K)
are knobs with the paper's defaults that a params file may shrink for a CPU. :func:`configs` crosses arms with the
models, tasks and seeds of a params file into run configs; :func:`check_findings` tests each paper finding on our
aggregated numbers and says, honestly, whether it holds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import pandas as pd

from .config import ExperimentConfig
from .errors import UserError
from .methods import config_fields

LLAMA = "meta-llama/Meta-Llama-3.1-8B-Instruct"
PAPER_TRAIN_K = MappingProxyType({"banking77": 10000, "clinic150": 10000, "nlu": 10000, "trec_coarse": 5000,
                                  "trec_fine": 5000})


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
class Check:
    """A paper finding as a comparison of two arms' mean ``metric``: ``left op right + margin``."""

    text: str
    left: str
    right: str
    op: str = "<="  # "<=", ">=" or ">" (strictly above)
    margin: float = 0.0
    metric: str = "test_acc_final"
    paper_models: tuple[str, ...] = ()  # the paper's models whose numbers show it (empty: all it reports)


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
    checks: tuple[Check, ...] = ()
    by_model: bool = False  # the family's knob is the model (scaling): final accuracy is drawn against it
    task_suffix: str = ""  # "_unsemantic" for abstract labels

    def arms(self, knobs: Mapping[str, Any] | None = None) -> tuple[Arm, ...]:
        """The arms for ``knobs`` (the paper's values where a knob is not given)."""
        values = dict(self.knobs)
        for key, value in (knobs or {}).items():
            if key not in self.knobs:
                raise UserError(f"knobs: {self.name} has no knob {key!r}; allowed: {', '.join(self.knobs) or 'none'}")
            values[key] = tuple(value)
        return self.build(values)


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
    return (arm("explorative ICRL, full window", "explorative", paper_setting="window=131072;downsampling=random_unbiased"),
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
    Family("main", "Main results: ICRL methods against zero-shot and the ICL upper bound", "§3.1-3.3, Figure 2, Table 1",
           "Does a model learn a classification task in context from rewards alone, and which way of building the "
           "context makes it work?",
           "Naive ICRL degenerates (it stops exploring and ends at most a few points above zero-shot, often below); "
           "explorative ICRL learns, often approaching the ICL upper bound; approximate ICRL learns too at a fraction "
           "of the compute with Llama-3.1-8B, but with Phi-3.5-mini it ends below zero-shot on 4 of 5 tasks.",
           ("main", "zero_shot"), _main, checks=(
               Check("Naive ICRL ends no better than zero-shot + 15 points", "naive ICRL", "zero-shot", "<=", 0.15),
               Check("Explorative ICRL ends above zero-shot", "explorative ICRL", "zero-shot", ">"),
               Check("Explorative ICRL ends above naive ICRL", "explorative ICRL", "naive ICRL", ">"),
               Check("Approximate ICRL ends above zero-shot (the paper: Llama-3.1-8B, not Phi-3.5-mini)",
                     "approximate ICRL", "zero-shot", ">", paper_models=(LLAMA,)))),
    Family("reward_ablations", "Which rewards matter", "§3.4, Figure 3",
           "What does the model learn from: positive episodes, negative ones, the feedback text, correct rewards?",
           "Positive episodes carry the learning: contexts of positive episodes only learn best; adding the negative "
           "ones (both) costs much of the gain, and only negative episodes or no feedback learn little. With both "
           "kinds of episode, 10% noisy rewards cost little and inverted rewards cost more.",
           ("reward_ablations",), _reward_ablations, checks=(
               Check("Explorative: only-positive ends above only-negative", "explorative: only_positive",
                     "explorative: only_negative", ">"),
               Check("Explorative: only-positive ends above both", "explorative: only_positive", "explorative: both",
                     ">"),
               Check("Naive (T=2): only-positive ends above both", "naive: only_positive", "naive: both", ">"),
               Check("Explorative: inverted rewards end below correct ones (both)", "explorative: inverted",
                     "explorative: both", "<="),
               Check("Explorative: 10% noisy rewards end within 10 points of clean ones (both)",
                     "explorative: noisy_10", "explorative: both", ">=", -0.10))),
    Family("abstract_labels", "Abstract labels", "§3.5, Figure 4, Table 2",
           "Does ICRL still work when label names carry no meaning (label_1000, ...), so that prior knowledge of the "
           "task cannot help?", "With abstract labels learning needs exploration and one exemplar per label helps "
           "it start; naive ICRL stays near chance.", ("abstract_labels",), _abstract, task_suffix="_unsemantic",
           checks=(Check("Explorative with 1 exemplar/label ends above naive ICRL", "explorative ICRL (1 exemplar/label)",
                         "naive ICRL", ">"),)),
    Family("exploration", "Exploration: p_keep and temperature", "§3.8-3.9, Figures 6-7",
           "How much stochasticity does ICRL need: in which episodes enter the context (p_keep) and in sampling "
           "predictions (temperature)?", "Explorative ICRL is robust over p_keep 0.01-0.5 and degrades at 1.0 (no "
           "context stochasticity); naive ICRL does not recover by raising the temperature alone.",
           ("p_keep", "temperature"), _exploration, knobs=MappingProxyType({
               "p_keep": (0.01, 0.05, 0.1, 0.5, 1.0), "temperature": (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)}),
           checks=(
               Check("Explorative at p_keep 1.0 ends below p_keep 0.1", "explorative ICRL, p_keep=1",
                     "explorative ICRL, p_keep=0.1", "<="),)),
    Family("context_window", "Limited context windows", "§3.10, Figure 8",
           "What if the context window is too small for all the episodes explorative ICRL keeps, and which episodes "
           "should be dropped?", "A smaller window costs little accuracy, and the downsampling strategy matters "
           "little.", ("context_window",), _context_window, knobs=MappingProxyType({"window": (4096, 8192)}),
           ),
    Family("approximate", "Approximate ICRL: number of contexts and sampling", "§3.11 and §4, Figure 9, Table 3",
           "How many contexts K does approximate ICRL need to match explorative ICRL, and at what compute?",
           "With Llama-3.1-8B accuracy rises with K and is within 5 points of explorative ICRL (K=∞) at K=8, "
           "processing far fewer tokens; Phi-3.5-mini needs K≥32. Exact sampling of the context does not beat "
           "uniform.", ("approximate", "compute"), _approximate,
           knobs=MappingProxyType({"K": (1, 2, 4, 8, 32, 128)}), checks=(
               Check("K=8 ends within 5 points of explorative (K=∞) (the paper: Llama-3.1-8B)", "approximate ICRL, K=8",
                     "explorative ICRL (K=∞)", ">=", -0.05, paper_models=(LLAMA,)),
               Check("K=8 ends above K=1 (the paper: Llama-3.1-8B)", "approximate ICRL, K=8", "approximate ICRL, K=1",
                     ">", paper_models=(LLAMA,)),
               Check("K=32 ends within 10 points of explorative (K=∞)", "approximate ICRL, K=32",
                     "explorative ICRL (K=∞)", ">=", -0.10),
               Check("K=8: exact sampling ends no better than uniform", "approximate ICRL, K=8, exact",
                     "approximate ICRL, K=8", "<="))),
    Family("scaling", "Model scale", "§3.6-3.7, Figure 5",
           "Does in-context reinforcement learning improve with model size, and do larger models learn more stably?",
           "Gains grow with scale (Qwen2.5 0.5B to 72B): small models learn little and collapse, larger ones learn "
           "steadily with explorative ICRL and Naive+; naive ICRL's test accuracy falls over the run at every size.",
           ("scaling", "stability"), _scaling, by_model=True, checks=(
               Check("Explorative ICRL learns more steadily than naive ICRL (higher Spearman ρ of test accuracy with "
                     "step)", "explorative ICRL", "naive ICRL", ">", metric="spearman_rho"),)),
)})

# A family notebook's parameters (params/families/<family>/*.yaml): name -> (default, type as papermill shows it, help)
PARAMETER_HELP = MappingProxyType({
    "models": (["smollm2-135m-instruct"], "list", "embedded alias, hub ids or local folders (scaling: the sizes)"),
    "tasks": (["clinic150"], "list", "tasks (abstract labels add _unsemantic itself)"),
    "seeds": ([100], "list", "seeds of contexts, sampling and the training order (each sets seed and training_seed)"),
    "test_seed": (100, "int", "one test set for every arm and seed, so comparisons are paired on the same queries"),
    "train_k": (150, "Any", "training steps: an int, or a mapping task -> steps (the paper: 10000 / 5000 for TREC)"),
    "test_every": (50, "int", "test after every test_every steps (and at step 0 and the last step)"),
    "test_k": (60, "Optional[int]", "test queries per test step; None: the whole test split"),
    "max_context_examples": (32, "Any", "episodes in a context: an int, None (as many as fit the window), or a "
                                        "mapping task -> either"),
    "knobs": ({}, "dict", "the values the family sweeps, e.g. {'p_keep': [0.1, 1.0]}; empty: the paper's"),
    "arm_overrides": ({}, "dict", "config fields per arm label ('*': every arm), e.g. {'*': {'context_p_keep': 0.5}}"),
    "arms": (None, "Optional[list]", "arm labels to run; None: all of the family"),
    "launcher": ("local", "str", "local, slurm or ray (see icrl_lib.launchers)"),
    "workers": (2, "int", "runs at once"),
    "launcher_options": ({}, "dict", "slurm (submitit) or ray settings, as in a sweep file"),
    "output_dir": ("outputs", "str", "folder of the run folders (relative: to the checkout)"),
    "run": (True, "bool", "False: only analyse the runs that exist"),
    "export_dir": (None, "Optional[str]", "where figures and tables go; None: <output_dir>/_analysis/<family>"),
})
PARAMETERS = MappingProxyType({k: v[0] for k, v in PARAMETER_HELP.items()})


def family(name: str) -> Family:
    """The family ``name``; UserError naming the allowed ones."""
    if name not in FAMILIES:
        raise UserError(f"family: unknown {name!r}; allowed: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def configs(fam: Family, params: Mapping[str, Any]) -> list[tuple[Arm, ExperimentConfig]]:
    """(arm, config) for every arm x model x task x seed of ``params`` (see :data:`PARAMETERS`); UserError on a bad
    parameter, before anything runs."""
    p = {**PARAMETERS, **params}
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise UserError(f"{fam.name}: unknown parameter(s) {unknown}; allowed: {', '.join(PARAMETERS)}")
    arms = fam.arms(p["knobs"])
    labels = {a.label for a in arms} | {"*"}
    bad = sorted(set(p["arm_overrides"]) - labels)
    if bad:
        raise UserError(f"arm_overrides: {fam.name} has no arm(s) {bad}; allowed: {sorted(labels)}")
    if p["arms"] is not None:
        missing = sorted(set(p["arms"]) - {a.label for a in arms})
        if missing:
            raise UserError(f"arms: {fam.name} has no arm(s) {missing}; allowed: {[a.label for a in arms]}")
        arms = tuple(a for a in arms if a.label in p["arms"])
    bad = [s for s in p["seeds"] if not isinstance(s, int) or isinstance(s, bool)]
    if bad:
        raise UserError(f"seeds: each must be an int (it sets seed and training_seed; test_seed is one for all runs), "
                        f"got {bad}")
    out = []
    for a in arms:
        extra = {**p["arm_overrides"].get("*", {}), **p["arm_overrides"].get(a.label, {})}
        for model in p["models"]:
            for task in p["tasks"]:
                for seed in p["seeds"]:
                    # Every arm and seed tests the same queries: differences are paired per query.
                    seeds = {"seed": seed, "training_seed": seed, "test_seed": p["test_seed"]}
                    sizes = {"train_k": _per_task(p, "train_k", task), "test_every": p["test_every"],
                             "test_k": p["test_k"], "max_context_examples": _per_task(p, "max_context_examples", task),
                             "output_dir": p["output_dir"], "debug_k": 0}  # an arm's own fields win (zero-shot: 0)
                    fields = {**sizes, **a.fields, **extra, **seeds, "model_name": model,
                              "task_name": task + fam.task_suffix}
                    try:
                        out.append((a, ExperimentConfig.from_dict(fields)))
                    except ValueError as err:
                        raise UserError(f"{fam.name}, arm {a.label!r}: {err}") from None
    return out


def _per_task(params: Mapping[str, Any], key: str, task: str) -> Any:
    """``params[key]``, or its value for ``task`` when it is a mapping task -> value (UserError if task is missing)."""
    value = params[key]
    if not isinstance(value, Mapping):
        return value
    if task not in value:
        raise UserError(f"{key}: no value for task {task!r}; the mapping gives {sorted(value)}")
    return value[task]


def check_findings(fam: Family, aggregated: pd.DataFrame) -> pd.DataFrame:
    """Each finding of ``fam`` per (model, task): the two means compared and whether it holds (None: an arm missing).

    ``aggregated`` is ``aggregate.aggregate`` output with an ``arm`` column. ``note`` says when a comparison of final
    accuracies is between two learning arms (not zero-shot or ICL) that both ended at or below their step-0 accuracy:
    its verdict then reflects noise around a collapse, not the effect the paper measured."""
    references = {a.label for a in fam.arms() if a.reference}
    step0 = aggregated[aggregated["metric"] == "test_acc_step0"].groupby(["model_name", "task_name", "arm"])["mean"]
    start = step0.mean().to_dict()  # (model, task, arm) -> mean step-0 accuracy
    rows = []
    for check in fam.checks:
        table = aggregated[aggregated["metric"] == check.metric]
        for (model, task), cell in table.groupby(["model_name", "task_name"], sort=True):
            means = cell.groupby("arm")["mean"].mean()
            left, right = means.get(check.left), means.get(check.right)
            compare = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, ">": lambda a, b: a > b}[check.op]
            holds = None if left is None or right is None else bool(compare(left, right + check.margin))
            flat = check.metric == "test_acc_final" and holds is not None and all(
                arm not in references and (model, task, arm) in start and final <= start[model, task, arm]
                for arm, final in ((check.left, left), (check.right, right)))
            rows.append({"finding": check.text, "model_name": model, "task_name": task, "metric": check.metric,
                         "left": left, "right": right, "holds": holds,
                         "note": "neither arm learned (final <= step 0)" if flat else ""})
    return pd.DataFrame(rows, columns=["finding", "model_name", "task_name", "metric", "left", "right", "holds", "note"])
