"""A real llama-cpp-python server serving the embedded SmolLM2 GGUF on 127.0.0.1, started once per session."""
from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from icrl_lib.errors import ServerError
from icrl_lib.serving.local_server import LocalLlamaServer, free_port  # noqa: F401 - tests import free_port here


def start(server: LocalLlamaServer) -> LocalLlamaServer:
    try:
        return server.start()
    except ServerError as err:
        pytest.fail(str(err))


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    server = start(LocalLlamaServer(tmp_path_factory.mktemp("llama-server") / "server.log"))
    yield server
    server.stop()


class JsonHandler(BaseHTTPRequestHandler):
    """Base of the tests' 127.0.0.1 servers: JSON answers, no request log on stderr."""

    def send_json(self, answer, status: int = 200, headers: dict | None = None) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]):
    """``handler`` served on a free 127.0.0.1 port for the block; yields its URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
