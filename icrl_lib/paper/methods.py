"""The paper's methods as one declarative table: the config fields that define each, its name and its colour.

Every place that needs a method reads it from here: building configs (``params/make_grid.py``, :func:`config_fields`),
naming runs in results (:func:`name_run`), ordering and colouring plots (:data:`METHOD_ORDER`, :func:`color_of`),
and the README's methods table (a test checks that it matches :func:`markdown_table`).

A run is named by what it is (:func:`name_run`, the one rule for every table, figure and notebook): the method the
paper calls it AND every setting in which it departs from that method's definition, e.g. ``ICL``,
``explorative ICRL, p_keep=0.5`` or ``explorative ICRL, all episodes, inverted rewards``: an ablation is never
averaged into the method it ablates. Seeds and sizes (steps, test queries, a cap on a context's episodes) are never
part of a name: seeds are aggregated on purpose (with n), sizes are columns of their own.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from icrl_lib.paper.strategies import STRATEGIES

_ICRL = {"icrl": True, "icrl_omit_feedback": False, "icrl_flip_feedback": False}


@dataclass(frozen=True)
class Method:
    """One method of the paper: ``key`` as in the reference CSV, the fields that define it, how it is shown."""

    key: str  # zero_shot | icl | naive | naive_plus | explorative | approximate (paper_results.csv's names)
    display: str  # the name in tables and legends
    fields: Mapping[str, Any]  # ExperimentConfig fields that define the method
    color: str  # fixed across every figure


METHODS: tuple[Method, ...] = (
    Method("zero_shot", "zero-shot", MappingProxyType({"max_context_examples": 0, "icrl": True}), "#7f7f7f"),
    Method("icl", "ICL", MappingProxyType({"icrl": False, "context_strategy_name": "random_unbiased",
                                           "context_p_keep": 1.0, "temperature": 1.0}), "#222222"),
    Method("naive", "naive ICRL", MappingProxyType({**_ICRL, "context_strategy_name": "random_biased_end",
                                                    "context_p_keep": 1.0, "temperature": 1.0}), "#d62728"),
    Method("naive_plus", "naive+ ICRL", MappingProxyType({
        **_ICRL, "context_strategy_name": "random_biased_end_only_positive", "context_p_keep": 1.0,
        "temperature": 2.0}), "#ff7f0e"),
    Method("explorative", "explorative ICRL", MappingProxyType({
        **_ICRL, "context_strategy_name": "random_unbiased_only_positive", "context_p_keep": 0.1,
        "temperature": 1.0}), "#1f77b4"),
    Method("approximate", "approximate ICRL", MappingProxyType({
        **_ICRL, "context_strategy_name": "approximate_only_positive", "context_p_keep": 0.1, "temperature": 1.0,
        "max_contexts": 8, "approximate_context_sampling_method": "uniform"}), "#2ca02c"),
)
BY_KEY: Mapping[str, Method] = MappingProxyType({m.key: m for m in METHODS})
METHOD_ORDER: tuple[str, ...] = tuple(m.display for m in METHODS)  # the order of the paper's plots


def config_fields(key: str, **overrides: Any) -> dict[str, Any]:
    """The config fields of method ``key`` (e.g. ``"explorative"``), then ``overrides``; ValueError names the key."""
    if key not in BY_KEY:
        raise ValueError(f"method: unknown {key!r}; allowed: {', '.join(BY_KEY)}")
    return {**BY_KEY[key].fields, **overrides}


# A run's name (:func:`name_run`): the method the paper calls it, then each setting in which it departs from that
# method's definition, in this order (keys of :func:`differences`; a family's knob is one of them).
SETTING_ORDER = ("downsampling", "episodes", "rewards", "p_keep", "temperature", "K", "sampling", "exemplars",
                 "window", "prompt", "dtype")
EPISODES = MappingProxyType({"all": "all episodes", "positive": "positive episodes only",
                             "negative": "negative episodes only"})


def _spec(config: Mapping[str, Any]):
    return STRATEGIES.get(str(config.get("context_strategy_name")))


def _downsampling(strategy: str) -> str:
    """A strategy without its filter on episodes: ``random_unbiased_only_positive`` -> ``random_unbiased``."""
    return strategy.removesuffix("_only_positive").removesuffix("_only_negative")


def _method_parts(config: Mapping[str, Any], method: Method) -> dict[str, str]:
    """The settings of the context and sampling in which ``config`` departs from ``method``'s definition."""
    out: dict[str, str] = {}
    mine, theirs = _spec(config), _spec(method.fields)
    if method.key != "zero_shot" and mine is not None and theirs is not None:
        if _downsampling(mine.name) != _downsampling(theirs.name):
            out["downsampling"] = f"{_downsampling(mine.name)} downsampling"
        if mine.keep != theirs.keep:
            out["episodes"] = EPISODES[mine.keep]
    if method.key != "zero_shot" and config.get("context_p_keep") != method.fields.get("context_p_keep"):
        out["p_keep"] = f"p_keep={_fmt(config.get('context_p_keep'))}"
    if config.get("temperature", 1.0) != method.fields.get("temperature", 1.0):
        out["temperature"] = f"T={_fmt(config.get('temperature'))}"
    if method.key == "approximate" or (mine is not None and mine.kind == "approximate"):
        if config.get("max_contexts") != method.fields.get("max_contexts"):
            out["K"] = f"K={_fmt(config.get('max_contexts'))}"
        if config.get("approximate_context_sampling_method") != method.fields.get(
                "approximate_context_sampling_method"):
            out["sampling"] = f"{config.get('approximate_context_sampling_method')} sampling"
    return out


def method_of(config: Mapping[str, Any]) -> Method | None:
    """The paper's method a config is (the one rule, with :func:`differences`): zero-shot without episodes, ICL with
    gold labels, approximate ICRL with an approximate strategy; any other ICRL strategy is the nearer of naive ICRL
    (naive+ when its context keeps positive episodes only) and explorative ICRL: the one whose definition it departs
    from in fewer settings of the context and sampling (explorative on a tie). None for a strategy this version does not
    know."""
    if config.get("max_context_examples") == 0:
        return BY_KEY["zero_shot"]
    if not config.get("icrl", True):
        return BY_KEY["icl"]
    spec = _spec(config)
    if spec is None:
        return None
    if spec.kind == "approximate":
        return BY_KEY["approximate"]
    naive = BY_KEY["naive_plus" if spec.keep == "positive" else "naive"]
    return min((BY_KEY["explorative"], naive), key=lambda m: len(_method_parts(config, m)))


def differences(config: Mapping[str, Any]) -> dict[str, str]:
    """The settings (keys of :data:`SETTING_ORDER`) in which ``config`` departs from its method's definition, each as
    its run's name writes it, in that order; empty for a method exactly as the paper defines it. Sizes (steps, test
    queries, a cap on the episodes in a context), seeds, the model, the task and the backend are never settings."""
    method = method_of(config)
    if method is None:  # a strategy the paper names no method for: its settings are the name
        out = {"p_keep": f"p_keep={_fmt(config.get('context_p_keep'))}",
               "temperature": f"T={_fmt(config.get('temperature'))}"}
    else:
        out = _method_parts(config, method)
    icrl = config.get("icrl", True)
    if method is None or method.key != "zero_shot":
        if icrl and config.get("icrl_omit_feedback"):
            out["rewards"] = "no rewards"
        if icrl and config.get("icrl_flip_feedback"):
            p = config.get("icrl_flip_feedback_prob")
            out["rewards"] = ("inverted rewards" if p == 1 else f"{_fmt(100 * p)}% noisy rewards" if p is not None
                              else "flipped rewards")
        n = config.get("exemplars_per_label")
        if n:
            out["exemplars"] = f"{n} exemplar{'s' if n != 1 else ''}/label"
        if config.get("max_context_examples") is None and config.get("max_window_tokens") is not None:
            out["window"] = window_text(int(config["max_window_tokens"]))  # with a cap on episodes it has no effect
    if config.get("system_prompt") is not None:
        out["prompt"] = "custom prompt"
    if config.get("dtype") not in (None, "auto"):  # other numerics: never averaged with the device's own choice
        out["dtype"] = str(config["dtype"])
    return {k: out[k] for k in SETTING_ORDER if k in out}


def name_run(config: Mapping[str, Any], leave_out: tuple[str, ...] = ()) -> str:
    """What a run is, the one name every table, figure and notebook gives it: the method the paper calls it, then
    every setting in which it departs from that method's definition (:func:`differences`), e.g. ``ICL``,
    ``naive+ ICRL, T=1``, ``explorative ICRL, all episodes, inverted rewards``. Seeds and sizes are never part of it
    (runs are aggregated over seeds, with n; sizes are columns of their own). ``leave_out``: settings not written
    (a family's knob, drawn on the x axis)."""
    method = method_of(config)
    base = method.display if method else str(config.get("context_strategy_name"))
    parts = [*(["ICL prompt"] if method is BY_KEY["zero_shot"] and not config.get("icrl", True) else []),
             *(text for key, text in differences(config).items() if key not in leave_out)]
    return ", ".join([base, *parts])


def key_of(config: Mapping[str, Any]) -> str | None:
    """The paper's key of a config's method (``paper_results.csv``'s ``method``), or None."""
    method = method_of(config)
    return method.key if method else None


def window_text(tokens: int) -> str:
    """A token window as the paper writes it: 4K = 4,096, 128K = 131,072; others in full."""
    return f"{tokens // 1024}K-token window" if tokens % 1024 == 0 else f"{tokens:,}-token window"


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def method_order(names: list[str]) -> list[str]:
    """Run names in the paper's method order (each method, then its variants alphabetically), others after."""
    def rank(name: str) -> tuple[int, str]:
        method = base_method(name)
        return (METHODS.index(method) if method else len(METHODS)), name

    return sorted(dict.fromkeys(names), key=rank)


def base_method(name: str) -> Method | None:
    """The method a run name (:func:`name_run`) belongs to, variants included."""
    return next((m for m in METHODS if name == m.display or name.startswith((m.display + " (", m.display + ", "))),
                None)


def markdown_table() -> str:
    """The README's methods table, generated from :data:`METHODS`."""
    lines = ["| method | flags (the paper's `run_experiment.py` names) |", "|---|---|"]
    for m in METHODS:
        flags = ", ".join(f"`{k}: {_yaml(v)}`" for k, v in m.fields.items()
                          if k not in ("icrl_omit_feedback", "icrl_flip_feedback") and not (k == "icrl" and v))
        lines.append(f"| {m.display} | {flags} |")
    return "\n".join(lines)


def _yaml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
