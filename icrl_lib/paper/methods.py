"""The paper's methods as one declarative table: the config fields that define each, its name and its colour.

Every place that needs a method reads it from here: building configs (``params/make_grid.py``, :func:`config_fields`),
naming runs in results (:func:`name_run`), ordering and colouring plots (:data:`METHOD_ORDER`, :func:`color_of`),
and the README's methods table (a test checks that it matches :func:`markdown_table`).

A run is named by its method AND every field in which it differs from the method's definition, e.g.
``explorative ICRL (p_keep=0.5)``: an ablation is never averaged into the method it ablates.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

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

# How a differing field is written inside the parentheses of a run's name.
_SHORT = MappingProxyType({"context_p_keep": "p_keep", "temperature": "T", "max_contexts": "K",
                           "approximate_context_sampling_method": "sampling", "context_strategy_name": "strategy",
                           "max_context_examples": "max_examples", "max_window_tokens": "window",
                           "exemplars_per_label": "exemplars", "icrl_flip_feedback_prob": "flip_p"})


def config_fields(key: str, **overrides: Any) -> dict[str, Any]:
    """The config fields of method ``key`` (e.g. ``"explorative"``), then ``overrides``; ValueError names the key."""
    if key not in BY_KEY:
        raise ValueError(f"method: unknown {key!r}; allowed: {', '.join(BY_KEY)}")
    return {**BY_KEY[key].fields, **overrides}


def method_of(config: Mapping[str, Any]) -> Method | None:
    """The paper's method a config belongs to (by its kind: zero-shot, ICL, or the ICRL strategy), or None."""
    if config.get("max_context_examples") == 0:
        return BY_KEY["zero_shot"]
    if not config.get("icrl", True):
        return BY_KEY["icl"]
    strategy = config.get("context_strategy_name")
    return next((m for m in METHODS if m.fields.get("context_strategy_name") == strategy and m.key != "icl"), None)


def differences(config: Mapping[str, Any]) -> dict[str, Any]:
    """Fields (short names) in which ``config`` departs from its method's definition, in a fixed order."""
    method = method_of(config)
    out: dict[str, Any] = {}
    if method is None:  # a strategy the paper names no method for: its settings are the name
        out["p_keep"] = config.get("context_p_keep")
        if str(config.get("context_strategy_name", "")).startswith("approximate"):
            out["K"] = config.get("max_contexts")
            out["sampling"] = config.get("approximate_context_sampling_method")
        out["T"] = config.get("temperature")
        return out | _extras(config, method)
    for key, value in method.fields.items():
        if key in ("icrl", "max_context_examples", "icrl_omit_feedback", "icrl_flip_feedback"):
            continue  # the kind of method, or feedback (named below)
        if config.get(key) != value:
            out[_SHORT.get(key, key)] = config.get(key)
    if method.key == "zero_shot" and config.get("temperature") != 1.0:
        out["T"] = config.get("temperature")
    return out | _extras(config, method)


def _extras(config: Mapping[str, Any], method: Method | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if method is None or method.key != "zero_shot":
        if config.get("icrl", True) and config.get("icrl_omit_feedback"):
            out["feedback"] = "omitted"
        if config.get("icrl", True) and config.get("icrl_flip_feedback"):
            out["flip_p"] = config.get("icrl_flip_feedback_prob")
        if config.get("exemplars_per_label"):
            out["exemplars"] = config["exemplars_per_label"]
        if config.get("max_context_examples") is not None:
            out["max_examples"] = config["max_context_examples"]
        elif config.get("max_window_tokens") is not None:
            out["window"] = config["max_window_tokens"]
    if config.get("system_prompt") is not None:
        out["prompt"] = "custom"
    return out


def name_run(config: Mapping[str, Any]) -> str:
    """What a run is: its method's name plus every field that differs, e.g. ``naive+ ICRL (T=1)``."""
    method = method_of(config)
    base = method.display if method else str(config.get("context_strategy_name"))
    if method is not None and method.key == "zero_shot" and not config.get("icrl", True):
        base += " (ICL prompt)"
    diff = differences(config)
    return base + (f" ({', '.join(f'{k}={_fmt(v)}' for k, v in diff.items())})" if diff else "")


def key_of(config: Mapping[str, Any]) -> str | None:
    """The paper's key of a config's method (``paper_results.csv``'s ``method``), or None."""
    method = method_of(config)
    return method.key if method else None


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
