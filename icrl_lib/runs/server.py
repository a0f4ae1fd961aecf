"""A run's server backend, prepared: probed before its run folder is locked, checked on resume, its predictor."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from icrl_lib.errors import UserError
from icrl_lib.paper.prompts import Episode
from icrl_lib.serving.probe import Connection, connect

if TYPE_CHECKING:  # the loop imports this module; these are its arguments' types only
    from icrl_lib.engine.models import ModelFacts
    from icrl_lib.runs.context import ContextBuilder
    from icrl_lib.runs.plan import RunPlan


def connect_plan(plan: RunPlan, builder: ContextBuilder) -> Connection | None:
    """Probe the server of ``plan`` (None for the local backend). The tokenization check uses prompts this run
    renders: a test query on an empty context and a training query after one episode with its feedback."""
    c = plan.config
    if c.backend == "local":
        return None
    task, data = plan.task, plan.data
    first = data.stream[0]
    episode = Episode(task.format_input(first), task.answer(first), task.answer(first) if c.icrl else None,
                      1 if c.icrl else None)
    samples = [builder.prompt([], task.format_input(data.test[0])),
               builder.prompt([episode], task.format_input(data.stream[min(1, len(data.stream) - 1)]))]
    return connect(c.backend, c.server_url, c.server_model, c.api_key_env, c.request_timeout, c.request_retries,
                   plan.model.encode, samples)


def check_same_server(meta_path: Path, server: Connection | None) -> None:
    """Refuse to resume a run against another served model than the one its logged steps came from."""
    if server is None or not meta_path.is_file():
        return
    before = (json.loads(meta_path.read_text(encoding="utf-8")).get("server") or {}).get("model")
    if before is not None and before != server.info.model:
        raise UserError(f"server_model: {meta_path.parent.name} was computed against {before!r}, but "
                        f"{server.info.url} serves {server.info.model!r}; serve {before!r} again to resume it, or "
                        f"set server_model: {server.info.model} for a run of its own")


def banned_end_tokens(facts: ModelFacts) -> list[int]:
    """Special tokens other than the end-of-turn: a server may end generation on any of them, the trie never does."""
    tok = facts.tokenizer
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    return sorted(special - {facts.eot_id})


def server_predictor(server: Connection, plan: RunPlan):
    """The backend's predictor for ``plan`` (same interface as the local ``LabelPredictor``)."""
    return server.predictor(plan.model.encode_batch, plan.trie, plan.config.temperature, banned_end_tokens(plan.model))
