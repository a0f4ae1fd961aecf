"""The embedded model on a real inference server at 127.0.0.1: one rule for ``make serve``, the tests' servers and the
server benchmark. Three servers, each started as its own process:

- ``llama-cpp-python``: its ``llama_cpp.server`` on the GGUF file (the ``server`` or ``dev`` extra);
- ``llama-server``: llama.cpp's own server binary on the GGUF file (``make llama-server`` builds it into the venv;
  ``$ICRL_LLAMA_SERVER`` names another);
- ``vllm``: vLLM's OpenAI server on the converted Hugging Face folder, from its own virtual environment (``make
  vllm`` creates it at ``<venv>/vllm``; ``$ICRL_VLLM_PYTHON`` names another interpreter), in float32 and eager mode
  (no compilation warm-up: about a minute to start on 2 cores).

``start`` waits until the server answers and one decode has run, so a binary built for instructions this CPU
lacks (it dies with SIGILL on its first decode) is one line at start, not a dead server mid-test.

    python -m icrl_lib.serving.local_server --server llama-server --port 8080   # `make serve`; Ctrl-C stops it
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from icrl_lib.engine.embedded import DEFAULT_MODEL, embedded_gguf_file, embedded_model_path
from icrl_lib.errors import ServerError, UserError

CONTEXT_TOKENS = 8192  # SmolLM2's trained window: every run of the embedded model fits


def free_port() -> int:
    """A port nothing listens on at 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llama_server_binary() -> Path:
    """llama.cpp's server: ``$ICRL_LLAMA_SERVER``, else the one ``make llama-server`` put in this venv."""
    return Path(os.environ.get("ICRL_LLAMA_SERVER") or Path(sys.prefix) / "llama.cpp" / "bin" / "llama-server")


def vllm_python() -> Path:
    """The interpreter of vLLM's own environment: ``$ICRL_VLLM_PYTHON``, else the one ``make vllm`` made."""
    return Path(os.environ.get("ICRL_VLLM_PYTHON") or Path(sys.prefix) / "vllm" / "bin" / "python")


class LocalServer:
    """A server process on the embedded model: ``start`` waits until it answers and decodes; ``stop`` kills it (a
    later ``start`` reuses the port, as a restarted server would). Subclasses give the command line."""

    kind = ""
    install_hint = ""
    backend = "llamacpp"  # the exact route to run against it

    def __init__(self, log: Path | None = None, port: int | None = None, threads: int = 2, alias: str | None = None):
        self.log, self.port, self.threads, self.alias = log, port or free_port(), threads, alias
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def available(self) -> bool:
        """Is the server installed here?"""
        return True

    def start(self, timeout: float = 300) -> LocalServer:
        """Start the server; ServerError (with the end of its log) if it exits, does not answer in ``timeout`` s, or
        dies on its first decode."""
        if not self.available():
            raise UserError(f"{self.kind} is not installed here: {self.install_hint}")
        sink = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - the child holds it
        try:
            # Its own process group: vLLM's engine and workers are child processes, which ``stop`` kills too.
            self.proc = subprocess.Popen(self.argv(), stdout=sink, stderr=sink, env=self.env(), start_new_session=True)
        finally:
            if self.log:
                sink.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_running("while starting")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    self._first_decode(deadline)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise ServerError(f"{self.kind} did not answer within {timeout:g} s: {self._log_tail()}")

    def _first_decode(self, deadline: float) -> None:
        model = httpx.get(f"{self.url}/v1/models", timeout=5).json()["data"][0]["id"]
        try:
            httpx.post(f"{self.url}/v1/completions", json={"model": model, "prompt": "Hello", "max_tokens": 1,
                                                           "temperature": 0.0},
                       timeout=max(5.0, deadline - time.monotonic()))
        except httpx.HTTPError:
            pass
        self._check_running("on its first decode")

    def _check_running(self, when: str) -> None:
        code = self.proc.poll() if self.proc else None
        if code is None:
            return
        if code == -signal.SIGILL:
            raise ServerError(f"{self.kind} died with SIGILL (illegal instruction) {when}: it was built for "
                              f"instructions this CPU lacks; rebuild it for explicit instruction sets "
                              f"({self.install_hint})")
        raise ServerError(f"{self.kind} exited ({code}) {when}: {self._log_tail()}")

    def stop(self) -> None:
        """Kill the server and every process it started (as a crash would: nothing is shut down cleanly)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        deadline = time.monotonic() + 30
        while self.alive_in_group() and time.monotonic() < deadline:
            time.sleep(0.1)

    def alive_in_group(self) -> bool:
        """Is any process of the server's group still running?"""
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log and self.log.exists() else "(no log kept)"


class LlamaCppPythonServer(LocalServer):
    """llama-cpp-python's server on the GGUF file."""

    kind = "llama-cpp-python"
    install_hint = "pip install -e '.[server]' (make setup builds it for AVX2)"

    def available(self) -> bool:
        import importlib.util

        return importlib.util.find_spec("llama_cpp") is not None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf_file()), "--host",
                "127.0.0.1", "--port", str(self.port), "--n_ctx", str(CONTEXT_TOKENS), "--n_threads",
                str(self.threads)]
        return argv + (["--model_alias", self.alias] if self.alias else []) + ["--verbose", "False"]


class LlamaServer(LocalServer):
    """llama.cpp's ``llama-server`` on the GGUF file (4 slots sharing one unified KV cache)."""

    kind = "llama-server"
    install_hint = "make llama-server"

    def available(self) -> bool:
        return llama_server_binary().is_file()

    def argv(self) -> list[str]:
        argv = [str(llama_server_binary()), "--model", str(embedded_gguf_file()), "--host", "127.0.0.1", "--port",
                str(self.port), "--ctx-size", str(CONTEXT_TOKENS), "--threads", str(self.threads), "--parallel", "4",
                "--kv-unified", "--no-webui"]
        return argv + (["--alias", self.alias] if self.alias else [])


class VllmProcess(LocalServer):
    """vLLM's OpenAI server on the converted Hugging Face folder, from its own environment."""

    kind = "vllm"
    install_hint = "make vllm"
    backend = "vllm"

    def available(self) -> bool:
        return vllm_python().is_file()

    def argv(self) -> list[str]:
        return [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(embedded_model_path(DEFAULT_MODEL)), "--served-model-name", self.alias or DEFAULT_MODEL,
                "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
                "--max-model-len", str(CONTEXT_TOKENS), "--enforce-eager", "--enable-prefix-caching",
                "--enable-prompt-tokens-details", "--disable-uvicorn-access-log"]

    def env(self) -> dict[str, str]:
        # 1 GiB of KV cache holds 55K tokens of the embedded model; the CPU backend's threads are this server's.
        return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": str(self.threads),
                "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1"}


SERVERS = {cls.kind: cls for cls in (LlamaCppPythonServer, LlamaServer, VllmProcess)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve the embedded model at 127.0.0.1 (Ctrl-C stops it).")
    ap.add_argument("--server", choices=tuple(SERVERS), default="llama-cpp-python")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)
    server = SERVERS[args.server](port=args.port, threads=args.threads, alias=DEFAULT_MODEL)
    if not server.available():
        sys.exit(f"--server {args.server}: not installed here; {server.install_hint}")
    print(f"serving {DEFAULT_MODEL} on {args.server} at {server.url} (--backend {server.backend} --server_url "
          f"{server.url})", flush=True)
    os.execve(server.argv()[0], server.argv(), server.env())


if __name__ == "__main__":
    main()
