"""A real llama-cpp-python server serving the embedded SmolLM2 GGUF on 127.0.0.1, started once per session."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``python -m llama_cpp.server`` on the embedded GGUF; ``url`` while running; stop / start on the same port."""

    def __init__(self, log: Path, port: int | None = None):
        from icrl_lib.engine.embedded import embedded_gguf_file

        self.gguf, self.log, self.port = embedded_gguf_file(), log, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> LlamaServer:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf),
                                          "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "8192",
                                          "--n_threads", "2", "--verbose", "False"], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        pytest.fail(f"llama_cpp.server did not answer within {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    server = LlamaServer(tmp_path_factory.mktemp("llama-server") / "server.log").start()
    yield server
    server.stop()
