"""A real llama-cpp-python server serving the embedded SmolLM2 GGUF on 127.0.0.1, started once per session."""
from __future__ import annotations

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
