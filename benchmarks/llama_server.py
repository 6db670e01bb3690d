"""llama-cpp-python's OpenAI-compatible server as the tests and ``pixelsift bench --side-by-side`` run it.

``python -m benchmarks.llama_server ARGS`` is ``python -m llama_cpp.server ARGS``, unchanged, with
llama.cpp's extra weight buffers (AMX tiles, repacking) turned off; ``LlamaServer`` starts it on
127.0.0.1 and stops it.

On the CI machines the CPU reports AMX but the virtual machine does not let a process use its tile
registers: llama.cpp's AMX kernels then die of a general protection fault on the first request
(``ldtilecfg`` in libggml-cpu). llama-server has ``--no-repack`` for this; llama-cpp-python's server
does not expose the setting, so it is set here in the model parameters the server asks for.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks.ports import free_port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class LlamaServer:
    """The server on 127.0.0.1:<port> (a free one by default) serving one GGUF model under ``alias``."""

    def __init__(self, model: Path, alias: str, port: int | None = None, log_path: Path | None = None,
                 threads: int = 2) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise ModuleNotFoundError("llama-cpp-python[server] is not installed (pip install -e '.[dev]')")
        self.model, self.alias, self.port = model, alias, port or free_port()
        self.log_path, self.threads = log_path, threads
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 120.0) -> "LlamaServer":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.llama_server", "--model", str(self.model), "--model_alias", self.alias,
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048", "--n_threads", str(self.threads),
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


def _serve_without_extra_buffers() -> None:
    import llama_cpp.llama_cpp as low_level

    defaults = low_level.llama_model_default_params

    def params():
        chosen = defaults()
        chosen.use_extra_bufts = False
        return chosen

    low_level.llama_model_default_params = params
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _serve_without_extra_buffers()
