"""The server client against a real HTTP server on 127.0.0.1: retries with backoff and Retry-After on 429/5xx,
immediate one-line errors on other 4xx, a dead or hung server told apart from a busy one in seconds, the first
failure stopping the queued requests, answers of an unexpected shape, the API key from the environment only."""
from __future__ import annotations

import json
import socket
import time

import pytest

from icrl_lib.errors import ServerError, ServerRefused, UserError
from icrl_lib.serving import http
from icrl_lib.serving.http import REFUSED_BACKOFF_S, ServerClient
from tests.serving.conftest import JsonHandler, serving


class Scripted(JsonHandler):
    """Answers from a script of (status, headers, body); records what it was sent."""

    script: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        length = int(self.headers.get("content-length", 0))
        type(self).seen.append((self.path, dict(self.headers), json.loads(self.rfile.read(length) or b"null")))
        status, headers, body = type(self).script.pop(0)
        self.send_json(body, status, headers)


@pytest.fixture
def server():
    Scripted.script, Scripted.seen = [], []
    with serving(Scripted) as url:
        yield url


def test_busy_and_failing_servers_are_retried_with_backoff_and_retry_after(server):
    Scripted.script = [(429, {"Retry-After": "3"}, {"error": {"message": "busy"}}),
                       (503, {}, {"detail": "loading"}), (200, {}, {"ok": 1})]
    waits = []
    client = ServerClient(server, retries=2, backoff=0.25, sleep=waits.append)
    assert client.post("/v1/completions", {"x": 1}) == {"ok": 1}
    assert waits == [3.0, 0.5]  # Retry-After beats the first backoff (0.25); then 0.25 * 2
    assert [s[2] for s in Scripted.seen] == [{"x": 1}] * 3


def test_a_server_that_stays_down_fails_in_one_line_after_its_retries(server):
    Scripted.script = [(500, {}, {"error": {"message": "out of memory\nstack..."}})] * 3
    client = ServerClient(server, retries=2, backoff=0.0, sleep=lambda s: None)
    with pytest.raises(ServerError) as err:
        client.post("/v1/completions", {})
    assert str(err.value) == f"POST {server}/v1/completions: HTTP 500: out of memory stack... (after 3 tries)"


def test_a_bad_request_is_not_retried_and_names_the_servers_reason(server):
    Scripted.script = [(400, {}, {"error": {"message": "Requested tokens exceed context window of 2048"}})]
    with pytest.raises(ServerError, match="HTTP 400: Requested tokens exceed context window of 2048$"):
        ServerClient(server, retries=5, sleep=lambda s: None).post("/v1/completions", {})
    assert len(Scripted.seen) == 1


def test_a_closed_port_says_no_server_is_running_there():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    client = ServerClient(f"http://127.0.0.1:{port}", retries=1, sleep=lambda s: None)
    with pytest.raises(ServerError, match=r"cannot connect .*is the server running at this address\? \(after 2 tries"):
        client.get("/v1/models")


def test_the_api_key_comes_from_the_named_environment_variable_only(server, monkeypatch):
    with pytest.raises(UserError, match="api_key_env: environment variable ICRL_TEST_KEY is not set"):
        ServerClient(server, api_key_env="ICRL_TEST_KEY")
    monkeypatch.setenv("ICRL_TEST_KEY", "sk-secret")
    Scripted.script = [(200, {}, {})]
    ServerClient(server, api_key_env="ICRL_TEST_KEY").post("/x", {"a": 1})
    path, headers, body = Scripted.seen[0]
    assert headers["Authorization"] == "Bearer sk-secret" and "sk-secret" not in json.dumps(body)


def test_the_first_request_that_fails_for_good_stops_the_queued_ones(server):
    """Eight queries in a pool: the first refusal fails every other request of the client at once, with the same
    error (its kind decides whether a rerun helps), instead of each going through its own retries."""
    from concurrent.futures import ThreadPoolExecutor

    Scripted.script = [(400, {}, {"error": {"message": "bad request"}})] + [(503, {}, {})] * 40
    client = ServerClient(server, retries=5, backoff=0.0, sleep=lambda s: None)
    with pytest.raises(ServerRefused, match="HTTP 400: bad request"):
        client.post("/v1/completions", {"i": -1})
    with ThreadPoolExecutor(4) as pool, pytest.raises(ServerRefused, match="HTTP 400: bad request"):
        list(pool.map(lambda i: client.post("/v1/completions", {"i": i}), range(8)))
    assert len(Scripted.seen) == 1  # nothing was sent after the refusal


def test_a_refused_connection_is_retried_only_briefly():
    """A port that refuses connections (the server process is gone) costs seconds, not the 31 s of backoff a busy
    server gets."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    waits = []
    client = ServerClient(f"http://127.0.0.1:{port}", retries=5, backoff=1.0, sleep=waits.append)
    with pytest.raises(ServerError, match=r"cannot connect .*\(after 6 tries\)$"):
        client.post("/v1/completions", {})
    assert len(waits) == 5 and max(waits) <= REFUSED_BACKOFF_S


class Hung(JsonHandler):
    """Accepts connections and never answers: a hung server."""

    def do_POST(self):  # noqa: N802
        time.sleep(30)

    do_GET = do_POST


def test_a_hung_server_stops_the_run_after_one_timeout_not_after_every_retry(monkeypatch):
    monkeypatch.setattr(http, "LIVENESS_TIMEOUT_S", 0.5)
    waits = []
    with serving(Hung) as url:
        client = ServerClient(url, timeout=0.5, retries=5, sleep=waits.append)
        with pytest.raises(ServerError, match=r"no answer within 0\.5 s, and the server no longer answers at all"):
            client.post("/v1/completions", {})
    assert waits == []  # no retry: a live but busy server would have answered its health check


def test_an_answer_of_an_unexpected_shape_is_one_line_naming_the_field(server):
    client = ServerClient(server, retries=0)
    with pytest.raises(ServerRefused, match=r"^vLLM /v1/completions at http://127\.0\.0\.1:\d+: the answer has no "
                                            r"choices\.0\.logprobs \(\{\"choices\": \[\]\}\); is the server the "
                                            r"backend names"):
        client.read({"choices": []}, "choices.0.logprobs", "vLLM /v1/completions")
