"""The embedded model on llama-cpp-python's server at 127.0.0.1: one rule for ``make serve``, the tests' server and the
server benchmark (needs the ``server`` or ``dev`` extra).

    python -m icrl_lib.serving.local_server --port 8080      # what `make serve` runs; Ctrl-C stops it
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from icrl_lib.engine.embedded import DEFAULT_MODEL, embedded_gguf_file
from icrl_lib.errors import ServerError

CONTEXT_TOKENS = 8192  # SmolLM2's trained window: every run of the embedded model fits


def free_port() -> int:
    """A port nothing listens on at 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_argv(port: int, threads: int, alias: str | None = None) -> list[str]:
    """The command that serves the embedded GGUF on 127.0.0.1:``port`` (``alias``: the served model's id)."""
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf_file()), "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", str(CONTEXT_TOKENS), "--n_threads", str(threads)]
    return argv + (["--model_alias", alias] if alias else []) + ["--verbose", "False"]


class LocalLlamaServer:
    """A llama-cpp-python server process on the embedded model: ``start`` waits until it answers; ``stop`` kills it
    (a later ``start`` reuses the port, as a restarted server would)."""

    def __init__(self, log: Path | None = None, port: int | None = None, threads: int = 2, alias: str | None = None):
        self.log, self.port, self.threads, self.alias = log, port or free_port(), threads, alias
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> LocalLlamaServer:
        """Start the server; ServerError (with the end of its log) if it exits or does not answer in ``timeout`` s."""
        sink = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - the child holds it
        try:
            self.proc = subprocess.Popen(server_argv(self.port, self.threads, self.alias), stdout=sink, stderr=sink)
        finally:
            if self.log:
                sink.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"llama_cpp.server exited ({self.proc.returncode}): {self._log_tail()}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise ServerError(f"llama_cpp.server did not answer within {timeout:g} s: {self._log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log and self.log.exists() else "(no log kept)"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve the embedded model for `--backend llamacpp` (Ctrl-C stops it).")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)
    print(f"serving {DEFAULT_MODEL} at http://127.0.0.1:{args.port} "
          f"(--backend llamacpp --server_url http://127.0.0.1:{args.port})", flush=True)
    os.execv(sys.executable, server_argv(args.port, args.threads, alias=DEFAULT_MODEL))


if __name__ == "__main__":
    main()
