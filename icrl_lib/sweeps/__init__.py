"""Many runs at once: ``sweep`` (sweep files: :func:`load_sweep` gives a :class:`Sweep`; its :func:`status`) and
``launchers`` (:func:`run_sweep` locally, on Slurm or on Ray)."""
from __future__ import annotations

from icrl_lib.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, modules=("launchers", "sweep"), names={
    "sweep": ("Sweep", "load_sweep", "status"),
    "launchers": ("run_sweep",),
})
