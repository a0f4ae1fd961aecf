"""vLLM's OpenAI-compatible server: the exact route (the client walks the label trie on the children's
log-probabilities) and the approximate guided-choice route. Prompts go as the run's token ids, so the server adds
nothing (no second BOS) and the model sees exactly the run's tokens.

The exact route asks for the children's log-probabilities with ``logprob_token_ids`` (at most
``MAX_LOGPROB_TOKEN_IDS`` ids per request, so a wider node is scored in chunks; ``logprobs: 1`` must be set beside
it). Those are the raw model's, whatever ``--logprobs-mode`` the server runs with (no other user's answers change),
and any shift of the logits is what the draw needs. A vLLM without the field (it ignores unknown fields) answers
with its top-1 only: the probe notices and falls back to ``allowed_token_ids`` with ``logprobs`` = the node's width,
which needs ``--logprobs-mode processed_logprobs`` and ``--max-logprobs`` at least the widest node; the probe scores
the widest node of the run's trie, so a missing flag is a one-line error before the run folder is locked.
"""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from icrl_lib.errors import ServerRefused, UserError
from icrl_lib.serving.http import ServerClient
from icrl_lib.serving.nodewalk import MissingScores, NodeRequest, NodeWalkPredictor, scores_by_id
from icrl_lib.serving.sampled import NEUTRAL, GuidedChoicePredictor
from icrl_lib.serving.server import ServerRoute, widest_node

MAX_LOGPROB_TOKEN_IDS = 128  # vLLM's vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS (0.32)
PROCESSED_HINT = ("start vLLM with --logprobs-mode processed_logprobs (log-probabilities after the allowed-token "
                  "mask), or use a vLLM with logprob_token_ids (0.2x and later)")


class VllmServer(ServerRoute):
    """What every vLLM route shares: its version, its tokenizer, its refusals."""

    def identify(self, client: ServerClient) -> str:
        version = (client.try_get("/version") or {}).get("version")
        return f"vLLM {version}" if version else "vLLM (version not reported)"

    def tokenize(self, client: ServerClient, text: str) -> list[int]:
        answer = client.post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})
        return client.read(answer, "tokens", "vLLM /tokenize")

    def refused_hint(self, status: int, message: str) -> str:
        if "max allowed" in message and "logprobs" in message:
            node = widest_node(self.plan.trie)[1]
            return f"start vLLM with --max-logprobs {len(node)} or more (the widest trie node's children)"
        if "maximum context length" in message or "max_model_len" in message:
            return "start vLLM with a --max-model-len as long as the run's window, or set max_context_examples"
        return super().refused_hint(status, message)


class VllmScorer:
    """Scores of a node's children from ``/v1/completions`` (one token, neutral sampling, the prompt as ids).
    ``mode`` "token_ids": ``logprob_token_ids`` in chunks; "processed": ``allowed_token_ids`` + ``logprobs``."""

    def __init__(self, client: ServerClient, model: str, mode: str = "token_ids", concurrency: int = 64):
        self.client, self.model, self.mode, self.concurrency = client, model, mode, concurrency
        self.computed: int | None = 0

    def requests(self, ids: Sequence[int], children: tuple[int, ...]) -> list[dict[str, Any]]:
        """The bodies that score one node (several where it has more children than one request may ask for)."""
        base = {"model": self.model, "prompt": list(ids), "max_tokens": 1, "temperature": 1.0, **NEUTRAL,
                "return_tokens_as_token_ids": True, "skip_special_tokens": False}
        if self.mode == "processed":
            return [{**base, "allowed_token_ids": list(children), "logprobs": len(children)}]
        step = MAX_LOGPROB_TOKEN_IDS
        return [{**base, "logprobs": 1, "logprob_token_ids": list(children[i:i + step])}
                for i in range(0, len(children), step)]

    def warm(self, ids: Sequence[int]) -> None:
        self._count(self.client.post("/v1/completions", {"model": self.model, "prompt": list(ids), "max_tokens": 1,
                                                          "temperature": 1.0, **NEUTRAL}))

    def scores(self, requests: Sequence[NodeRequest]) -> list[list[float]]:
        bodies = [(i, body) for i, (ids, children) in enumerate(requests) for body in self.requests(ids, children)]
        with ThreadPoolExecutor(max(1, min(self.concurrency, len(bodies)))) as pool:
            answers = list(pool.map(lambda item: self.client.post("/v1/completions", item[1]), bodies))
        by_id: list[dict[int, float]] = [{} for _ in requests]
        for (i, _), answer in zip(bodies, answers):
            self._count(answer)
            field = "choices.0.logprobs.top_logprobs.0"
            top = self.client.read(answer, field, "vLLM /v1/completions")
            try:
                by_id[i].update({int(k.split(":", 1)[1]): float(v) for k, v in top.items()
                                 if k.startswith("token_id:")})
            except (AttributeError, TypeError, ValueError):
                raise ServerRefused(f"vLLM /v1/completions at {self.client.base_url}: {field} is not a mapping of "
                                    f"'token_id:<id>' to log-probabilities ({str(top)[:120]})") from None
        hint = PROCESSED_HINT if self.mode == "processed" else "the server ignored logprob_token_ids"
        return [scores_by_id(found, children, hint) for found, (_, children) in zip(by_id, requests)]

    def _count(self, answer: dict[str, Any]) -> None:
        usage = answer.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")  # --enable-prompt-tokens-details
        if cached is None or self.computed is None:
            self.computed = None  # the server does not report its cache: tokens computed are unknown, not guessed
        else:
            self.computed += usage["prompt_tokens"] - cached


class VllmRoute(VllmServer):
    """The exact route: the node walk on vLLM's log-probabilities (sampled on the client)."""

    mode = "token_ids"

    def check(self, client: ServerClient, samples: list[str]) -> str:
        summary = super().check(client, samples)
        node, children = widest_node(self.plan.trie)
        ids = self.plan.model.encode(samples[0]) + list(node)
        try:
            VllmScorer(client, self.model, "token_ids").scores([(ids, children)])
        except MissingScores:  # a vLLM that ignores the field: the processed log-probabilities, if it has the flags
            self.mode = "processed"
            try:
                VllmScorer(client, self.model, "processed").scores([(ids, children)])
            except ServerRefused as err:
                raise UserError(f"server_url: vLLM cannot score the widest trie node ({len(children)} children): "
                                f"{err}") from None
        field = ("logprob_token_ids (raw log-probabilities)" if self.mode == "token_ids" else
                 "allowed_token_ids with processed log-probabilities (a vLLM without logprob_token_ids)")
        self.detail = f"prompts as token ids; children scored by {field}"
        return f"{summary}; the widest trie node ({len(children)} children) scored"

    def predictor(self, lm: Any = None) -> NodeWalkPredictor:
        scorer = VllmScorer(self.client, self.model, self.mode, self.config.server_concurrency or 64)
        return NodeWalkPredictor(self.plan.model.encode_batch, self.plan.trie, self.config.temperature, scorer)


class VllmChoicePredictor(GuidedChoicePredictor):
    """vLLM's ``/v1/completions`` with ``structured_outputs: {"choice": [...]}`` (vLLM 0.11 or later; earlier
    versions called it ``guided_choice``). Per-query seeds make reruns reproduce on one server."""

    what = "vLLM /v1/completions"

    def request(self, ids: list[int], seed: int) -> dict[str, Any]:
        return {"model": self.model, "prompt": ids, "max_tokens": self.max_tokens, "temperature": self.temperature,
                "seed": seed, **NEUTRAL, "structured_outputs": {"choice": [" " + label for label in self.labels]}}


class VllmChoiceRoute(VllmServer):
    """The approximate route: vLLM's guided choice among the label strings (the server samples)."""

    detail = "prompts as token ids; structured_outputs choice"

    def predictor(self, lm: Any = None) -> VllmChoicePredictor:
        return VllmChoicePredictor(self.client, self.model, self.plan.model.encode_batch, self.plan.trie.labels,
                                   self.config.temperature, self.config.server_concurrency or 64)
