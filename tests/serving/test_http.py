"""The server client against a real HTTP server on 127.0.0.1: retries with backoff and Retry-After on 429/5xx,
immediate one-line errors on other 4xx and on a closed port, the API key from the environment only."""
from __future__ import annotations

import json
import socket

import pytest

from icrl_lib.errors import ServerError, UserError
from icrl_lib.serving.http import ServerClient
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
