"""The paper as pure data and rules, no torch and no I/O: ``prompts`` (chat messages, rendering), ``strategies``
(which episodes enter a context), ``methods`` (the methods table, run names), ``experiments`` (the experiment families'
arms and knobs), ``findings`` (the claims they check); and by name the tables most used: :data:`FAMILIES` (with
:func:`family` and :class:`Family`), :data:`METHODS`, :data:`STRATEGY_NAMES`."""
from __future__ import annotations

from icrl_lib.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, modules=(
    "experiments", "findings", "methods", "prompts", "strategies"), names={
    "experiments": ("FAMILIES", "Family", "family"),
    "methods": ("METHODS",),
    "strategies": ("STRATEGY_NAMES",),
})
