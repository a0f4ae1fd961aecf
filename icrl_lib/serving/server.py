"""The common part of every route on an inference server: the start-up probe, run before the run folder is locked
(which server and model answer, whether the server reads the run's prompts as the run's tokenizer does, and what
the route itself needs to check), then a client for the run. Every failure is one line naming what to fix.

A route subclasses :class:`ServerRoute` and says how its server names its models and software, how it tokenizes,
and which predictor it drives; the registry entry (:mod:`icrl_lib.serving.backends`) names the class.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from icrl_lib.errors import ServerError, ServerRefused, UserError
from icrl_lib.serving.backends import Backend
from icrl_lib.serving.http import ServerClient

PROBE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ServerInfo:
    """What answered: recorded in ``meta.json``; a run resumes only against the same served model."""

    backend: str
    url: str
    software: str  # server and version, as far as it says
    model: str  # the served model's id
    route: str
    exact: bool
    logprobs: bool
    tokenization: str  # how far the server's tokenization was checked against model_name's
    detail: str = ""  # how this server is driven (prompt form, log-probability field, concurrency)

    def record(self) -> dict[str, Any]:
        return asdict(self)


class ServerRoute:
    """Base of the server routes. ``open`` probes; ``predictor`` drives the run; ``record`` goes into ``meta.json``.

    ``plan`` is the run plan (``runs.plan.RunPlan``): the routes read its ``config`` (server_url, server_model,
    api_key_env, request_timeout, request_retries, temperature), ``model`` (the tokenizer's facts) and ``trie``."""

    key_header = "Authorization"  # where the API key goes (``ServerClient``)
    sends_ids = True  # the prompt goes as the run's token ids (the server adds nothing); False: as text
    detail = ""  # how this server is driven (set by the probe where it depends on the server)

    def __init__(self, entry: Backend, plan: Any):
        self.entry, self.plan, self.config = entry, plan, plan.config
        self.url = self.config.server_url.rstrip("/")
        self.model = self.software = self.tokenization = ""
        self.client: ServerClient | None = None

    @classmethod
    def open(cls, entry: Backend, plan: Any, samples: Sequence[str]) -> ServerRoute:
        """Probe the server for ``plan``: its model, its software, its tokenization of ``samples`` (prompts this run
        renders) and the route's own checks; then a client with the run's timeout and retries."""
        route = cls(entry, plan)
        c = route.config
        probe = route.make_client(timeout=min(c.request_timeout, PROBE_TIMEOUT_S), retries=1, backoff=0.5)
        try:
            route.model = route.served_model(probe, c.server_model)
            route.software = route.identify(probe)
            route.tokenization = route.check(probe, list(samples))
        except ServerRefused as err:
            raise UserError(f"server_url: {err}") from None
        except ServerError as err:
            raise ServerError(f"server_url: {err}") from None
        finally:
            probe.close()
        route.client = route.make_client(timeout=c.request_timeout, retries=c.request_retries)
        return route

    def make_client(self, **kw) -> ServerClient:
        return ServerClient(self.url, self.config.api_key_env, key_header=self.key_header,
                            refused_hint=self.refused_hint, **kw)

    @property
    def info(self) -> ServerInfo:
        e = self.entry
        return ServerInfo(e.name, self.url, self.software, self.model, e.route, e.exact, e.logprobs,
                          self.tokenization, self.detail)

    def record(self) -> dict[str, Any]:
        """What ``meta.json`` records of where the run ran."""
        return {"server": self.info.record()}

    def check_resume(self, meta: dict[str, Any]) -> None:
        """Refuse to resume a run against another served model than the one its logged steps came from."""
        before = (meta.get("server") or {}).get("model")
        if before is not None and before != self.model:
            raise UserError(f"server_model: the run was computed against {before!r}, but {self.url} serves "
                            f"{self.model!r}; serve {before!r} again to resume it, or set server_model: {self.model}"
                            " for a run of its own")

    # --- what a route says of its server (overridden per server) ---

    def served_model(self, client: ServerClient, wanted: str | None) -> str:
        """The served model's id (OpenAI's ``/v1/models``)."""
        models = client.get("/v1/models")
        ids = [m.get("id") for m in (client.read(models, "data", "GET /v1/models") or []) if isinstance(m, dict)]
        if wanted is not None:
            if wanted not in ids:
                raise UserError(f"server_model: {self.url} serves {', '.join(map(repr, ids)) or 'no model'}, "
                                f"not {wanted!r}")
            return wanted
        if len(ids) != 1:
            raise UserError(f"server_model: {self.url} serves {', '.join(map(repr, ids)) or 'no model'}; name one")
        return ids[0]

    def identify(self, client: ServerClient) -> str:
        """The server's software and version."""
        raise NotImplementedError

    def tokenize(self, client: ServerClient, text: str) -> list[int]:
        """The server's token ids of ``text`` (special tokens parsed, nothing added): its vocabulary, for a route
        that sends token ids; for a text route, exactly what the model will see (override)."""
        raise NotImplementedError

    def seen_ids(self, client: ServerClient, text: str) -> list[int]:
        """The ids the model will see when the prompt ``text`` is sent (its tokens, for a route that sends ids)."""
        return self.tokenize(client, text)

    def check(self, client: ServerClient, samples: list[str]) -> str:
        """Tokenization parity on ``samples`` (and, in subclasses, what the route needs); the check's summary."""
        encode = self.plan.model.encode
        for text in samples:
            theirs, ours = self.seen_ids(client, text), encode(text)
            if theirs != ours:
                raise UserError(f"server_url: {self.url} tokenizes differently from model_name's tokenizer: "
                                f"{text[:60]!r} -> {theirs[:12]}... here {ours[:12]}...; serve the same model as "
                                "model_name")
        sent = "the run's token ids are sent" if self.sends_ids else "prompts are sent as text"
        return f"{sent}; the server's tokens equal model_name's on {len(samples)} rendered prompts"

    def refused_hint(self, status: int, message: str) -> str:
        """What to change when the server refuses a request with ``message`` (empty: its own message says it)."""
        return ""

    def predictor(self, lm: Any = None):
        """The route's predictor (``engine.draws.Predictor``); ``lm`` is not used by a server route."""
        raise NotImplementedError


def widest_node(trie) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(node, its children) of the trie node with the most children: the largest request an exact route sends."""
    node = max(trie.children, key=lambda n: (len(trie.children[n]), -len(n)))
    return node, trie.children[node]
