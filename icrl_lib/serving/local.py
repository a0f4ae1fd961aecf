"""The ``local`` backend as a route like the others: the model runs in this process (transformers), loaded after
the run folder is locked; there is nothing to probe."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from icrl_lib.serving.backends import Backend


class LocalRoute:
    """Loads the run's model (or takes one already loaded) and predicts with :class:`LabelPredictor`."""

    def __init__(self, plan: Any):
        self.plan = plan
        self._where: dict[str, Any] = {}

    @classmethod
    def open(cls, entry: Backend, plan: Any, samples: Sequence[str]) -> LocalRoute:
        return cls(plan)

    def check_resume(self, meta: dict[str, Any]) -> None:
        """Any device may resume a local run (the replay check guards its decisions)."""

    def predictor(self, lm: Any = None):
        """The label predictor on ``lm``, or on the run's model loaded now (``plan.source``)."""
        from icrl_lib.engine.generation import LabelPredictor
        from icrl_lib.engine.models import load_model

        c, plan = self.plan.config, self.plan
        lm = lm or load_model(c.model_name, c.device, c.trust_remote_code, source=plan.source, facts=plan.model,
                              yarn_factor=c.yarn_factor, dtype=c.dtype)
        # One cache entry per approximate context (they only grow: each is extended in place) plus one spare.
        predictor = LabelPredictor(lm, plan.trie, c.temperature, fast=c.fast, batch_size=c.batch_size,
                                   max_cached_contexts=max(9, (c.max_contexts or 0) + 1))
        self._where = {"kv_cache": predictor.pool.settings(), "device": lm.device, "dtype": lm.dtype_name}
        return predictor

    def record(self) -> dict[str, Any]:
        """What ``meta.json`` records of where the run ran (after :meth:`predictor`)."""
        return dict(self._where)
