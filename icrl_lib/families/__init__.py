"""The family notebooks (``notebooks/family_<name>.ipynb``): ``family_notebook`` (writes them; their parameters and
figures), ``spec`` (a family notebook's parameters and the run configs they expand to), ``report`` (tables, figures,
verdicts, export), ``comparison`` (paper vs ours)."""
from __future__ import annotations

from icrl_lib.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, modules=("comparison", "family_notebook", "report", "spec"))
