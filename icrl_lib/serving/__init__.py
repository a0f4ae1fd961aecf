"""Where a run's model runs: :data:`BACKENDS` (each :class:`Backend` names its route and what it keeps exact;
:func:`backend` looks one up), and the embedded model on a local inference server (:data:`SERVERS`, each a
:class:`LocalServer`: ``make serve``)."""
from __future__ import annotations

from icrl_lib.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, names={
    "backends": ("BACKENDS", "DEFAULT_BACKEND", "Backend", "backend"),
    "local_server": ("SERVERS", "LocalServer"),
})
