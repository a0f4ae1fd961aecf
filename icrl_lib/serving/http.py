"""HTTP to an inference server: JSON requests with retries, and one-line errors a user can act on.

Busy or failing answers (429, 5xx) and timeouts are retried with exponential backoff (honouring ``Retry-After``).
A server process that is gone is told apart from a busy one: a refused connection is retried only briefly, and after
a timeout or a dropped connection the server's liveness is checked at once, so a dead or hung server stops the run
in seconds (after a timeout: ``request_timeout`` plus seconds) instead of after every request's retries. The first
request that fails for good fails every other request of this client at once (those queued behind it in a pool
are never sent), with :class:`~icrl_lib.errors.ServerError`: the runner adds "rerun the same command to resume" (a
step is logged only after all its requests succeeded, so nothing is lost). A refused request (a 4xx other than
busy) and an answer the route cannot read raise :class:`~icrl_lib.errors.ServerRefused` instead, with the server's
own message: a rerun would not change them. The API key is read from the environment variable the config names
and only ever sent in a header (``Authorization``, or Gemini's).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from icrl_lib.errors import ServerError, ServerRefused, UserError

RETRIED_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# httpx logs every request at INFO, the level the command line shows: a line per query would bury the progress lines.
logging.getLogger("httpx").setLevel(logging.WARNING)
MAX_BACKOFF_S = 30.0
REFUSED_BACKOFF_S = 1.0  # a port that refuses connections: a restarting server gets a few seconds, no more
LIVENESS_TIMEOUT_S = 5.0  # a live server answers any GET (even with 404) within this


class ServerClient:
    """JSON over HTTP to one server (``base_url``, e.g. ``http://127.0.0.1:8080``)."""

    def __init__(self, base_url: str, api_key_env: str | None = None, timeout: float = 600.0, retries: int = 5,
                 backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep, key_header: str = "Authorization",
                 refused_hint: Callable[[int, str], str] | None = None):
        """``key_header``: ``Authorization`` sends ``Bearer <key>`` (OpenAI and the servers that copy it), another
        name sends the key as that header's value (Gemini's ``x-goog-api-key``). ``refused_hint(status, message)``:
        what to change when the server refuses a request (a route's knowledge of its server's flags)."""
        self.base_url = base_url.rstrip("/")
        headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise UserError(f"api_key_env: environment variable {api_key_env} is not set (it should hold the "
                                f"server's API key)")
            headers[key_header] = f"Bearer {key}" if key_header == "Authorization" else key
        self.retries, self.backoff, self.sleep = retries, backoff, sleep
        self.refused_hint = refused_hint
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self._failed: ServerError | None = None  # the first request that failed for good stops every other one
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def get(self, path: str) -> Any:
        """GET ``path``; the decoded JSON answer."""
        return self._request("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """POST ``body`` as JSON to ``path``; the decoded JSON answer."""
        return self._request("POST", path, body)

    def try_get(self, path: str) -> Any | None:
        """GET ``path`` once, without retries: None if the server has no such route or fails (for probing)."""
        return self._try("GET", path, None)

    def try_post(self, path: str, body: dict[str, Any]) -> Any | None:
        """POST once, without retries: None if the server has no such route or fails (for probing)."""
        return self._try("POST", path, body)

    def read(self, answer: Any, path: str, what: str) -> Any:
        """``answer``'s field at ``path`` (dots between keys and list indices, e.g. ``choices.0.text``); an answer
        without it is one line naming the server, the route and the field (:class:`ServerRefused`)."""
        value = answer
        for key in path.split("."):
            try:
                value = value[int(key)] if isinstance(value, list) else value[key]
            except (KeyError, IndexError, TypeError, ValueError):
                shown = json.dumps(answer)[:160]
                raise ServerRefused(f"{what} at {self.base_url}: the answer has no {path} ({shown}); is the server "
                                    f"the backend names, at a supported version?") from None
        return value

    def _try(self, method: str, path: str, body: dict[str, Any] | None) -> Any | None:
        try:
            answer = self._http.request(method, path, json=body)
        except httpx.HTTPError:
            return None
        if answer.status_code != 200:
            return None
        try:
            return answer.json()
        except ValueError:
            return None

    def alive(self) -> bool:
        """Does the server process still answer (any HTTP status) within a few seconds?"""
        try:
            self._http.get("/health", timeout=LIVENESS_TIMEOUT_S)
        except httpx.HTTPError:
            return False
        return True

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        url = f"{self.base_url}{path}"
        try:
            return self._attempts(method, url, path, body)
        except ServerError as err:
            with self._lock:
                self._failed = self._failed or err
            raise

    def _attempts(self, method: str, url: str, path: str, body: dict[str, Any] | None) -> Any:
        for attempt in range(self.retries + 1):
            self._stop_if_failed()
            wait = min(MAX_BACKOFF_S, self.backoff * 2 ** attempt)
            try:
                answer = self._http.request(method, path, json=body)
            except httpx.TimeoutException:
                problem = f"no answer within {self._http.timeout.read:g} s"
                if not self.alive():
                    raise ServerError(f"{method} {url}: {problem}, and the server no longer answers at all (hung "
                                      "or gone)") from None
            except httpx.ConnectError as err:
                problem = f"cannot connect ({err or 'refused'}); is the server running at this address?"
                wait = min(wait, REFUSED_BACKOFF_S)
            except httpx.TransportError as err:
                problem = str(err) or type(err).__name__
                if not self.alive():
                    raise ServerError(f"{method} {url}: {problem}; the server no longer answers (did its process "
                                      "die?)") from None
            else:
                if answer.status_code < 400:
                    try:
                        return answer.json()
                    except ValueError:
                        raise ServerRefused(f"{method} {url}: the answer is not JSON ({answer.text[:120]!r})") from None
                detail = _detail(answer)
                if answer.status_code not in RETRIED_STATUS:
                    hint = self.refused_hint(answer.status_code, detail) if self.refused_hint else ""
                    raise ServerRefused(f"{method} {url}: HTTP {answer.status_code}: {detail}" +
                                        (f"; {hint}" if hint else ""))
                problem = f"HTTP {answer.status_code}: {detail}"
                wait = max(wait, _retry_after(answer) or 0.0)
            if attempt == self.retries:
                break
            self.sleep(wait)
        raise ServerError(f"{method} {url}: {problem} (after {self.retries + 1} tries)")

    def _stop_if_failed(self) -> None:
        if self._failed is not None:  # the first failure, as it was (its kind decides whether a rerun helps)
            raise type(self._failed)(str(self._failed))


def _detail(answer: httpx.Response) -> str:
    """The server's own error message (OpenAI-style ``{"error": {"message": ...}}``, FastAPI ``detail``...)."""
    try:
        data = answer.json()
    except ValueError:
        return answer.text[:200].strip() or answer.reason_phrase
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return str(error)[:300].replace("\n", " ")
    return str(data)[:300]


def _retry_after(answer: httpx.Response) -> float | None:
    value = answer.headers.get("retry-after")
    try:
        return min(MAX_BACKOFF_S * 4, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to the backoff
