"""Models and decoding: :func:`load_model` (the embedded SmolLM2, :data:`DEFAULT_MODEL`, or any hub id or folder)
gives a :class:`LanguageModel`; :func:`resolve_model` finds one without loading it. Imported on first use: importing
this package loads no torch."""
from __future__ import annotations

from icrl_lib.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, names={
    "models": ("LanguageModel", "ModelFacts", "load_model", "resolve_model"),
    "embedded": ("DEFAULT_MODEL", "EMBEDDED_MODELS"),
})
