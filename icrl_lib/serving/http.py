"""HTTP to an inference server: JSON requests with retries, and one-line errors a user can act on.

Timeouts, refused connections, 429 and 5xx answers are retried with exponential backoff (honouring ``Retry-After``);
after ``retries`` further tries the request fails with :class:`~icrl_lib.errors.ServerError`, which the runner turns
into "rerun to resume" (a step is logged only after all its requests succeeded, so nothing is lost). Other 4xx
answers are the request's fault and fail at once, with the server's own message. The API key is read from the
environment variable the config names and only ever sent in a header (``Authorization``, or Gemini's).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import httpx

from icrl_lib.errors import ServerError, UserError

RETRIED_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# httpx logs every request at INFO, the level the command line shows: a line per query would bury the progress lines.
logging.getLogger("httpx").setLevel(logging.WARNING)
MAX_BACKOFF_S = 30.0


class ServerClient:
    """JSON over HTTP to one server (``base_url``, e.g. ``http://127.0.0.1:8080``)."""

    def __init__(self, base_url: str, api_key_env: str | None = None, timeout: float = 600.0, retries: int = 5,
                 backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep, key_header: str = "Authorization"):
        """``key_header``: ``Authorization`` sends ``Bearer <key>`` (OpenAI and the servers that copy it), another
        name sends the key as that header's value (Gemini's ``x-goog-api-key``)."""
        self.base_url = base_url.rstrip("/")
        headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise UserError(f"api_key_env: environment variable {api_key_env} is not set (it should hold the "
                                f"server's API key)")
            headers[key_header] = f"Bearer {key}" if key_header == "Authorization" else key
        self.retries, self.backoff, self.sleep = retries, backoff, sleep
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

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

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        url = f"{self.base_url}{path}"
        for attempt in range(self.retries + 1):
            wait = min(MAX_BACKOFF_S, self.backoff * 2 ** attempt)
            try:
                answer = self._http.request(method, path, json=body)
            except httpx.TimeoutException:
                problem = f"no answer within {self._http.timeout.read:g} s"
            except httpx.TransportError as err:
                problem = _transport_problem(err)
            else:
                if answer.status_code < 400:
                    try:
                        return answer.json()
                    except ValueError:
                        raise ServerError(f"{method} {url}: the answer is not JSON "
                                          f"({answer.text[:120]!r})") from None
                detail = _detail(answer)
                if answer.status_code not in RETRIED_STATUS:
                    raise ServerError(f"{method} {url}: HTTP {answer.status_code}: {detail}")
                problem = f"HTTP {answer.status_code}: {detail}"
                wait = max(wait, _retry_after(answer) or 0.0)
            if attempt == self.retries:
                break
            self.sleep(wait)
        raise ServerError(f"{method} {url}: {problem} (after {self.retries + 1} tries)")


def _transport_problem(err: httpx.TransportError) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, httpx.ConnectError):
        return f"cannot connect ({text}); is the server running at this address?"
    return text


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
