"""Talking to OpenAI-compatible model servers (vLLM, SGLang, llama.cpp, Ollama): requests, retries, probes.

Standard library only (urllib + threads): a request is I/O, so a few threads keep a bounded
window of requests in flight, spread round-robin over the configured base URLs. Timeouts,
429 and 5xx are retried with exponential backoff; any other 4xx is the request's own error.
A server that cannot be reached, or that does not serve the configured model, is a
``ModelLoadError``: the step fails at once instead of recording a failure per image.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from resources.backends import ModelLoadError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


class ServerError(RuntimeError):
    """A request the server answered with an error, or did not answer in time, after every retry."""


class ServerUnreachable(ServerError):
    """No connection could be made (refused, no route, DNS)."""


def server_root(url: str) -> str:
    """``http://host:port`` with any trailing ``/`` or ``/v1`` removed: paths are added per request."""
    url = url.strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


@dataclass(frozen=True)
class ServedModel:
    id: str
    owned_by: str


class ServerPool:
    """One or more servers of the same model, called with a bounded number of requests in flight."""

    def __init__(self, base_urls: Sequence[str], *, api_key: str = "", timeout_s: float = 120.0,
                 concurrency: int = 4, retries: int = 3, backoff_s: float = 0.5) -> None:
        if not base_urls:
            raise ModelLoadError("no base_urls configured for the model server")
        self.roots = [server_root(u) for u in base_urls]
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.concurrency = max(1, concurrency)
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self._next = itertools.cycle(range(len(self.roots)))
        self._lock = threading.Lock()

    def _pick(self) -> str:
        with self._lock:
            return self.roots[next(self._next)]

    def request(self, path: str, body: dict | None = None, *, root: str | None = None, retries: int | None = None,
                timeout_s: float | None = None) -> dict:
        """JSON in, JSON out; GET when ``body`` is None. Retries what a busy or restarting server returns."""
        retries = self.retries if retries is None else retries
        error: ServerError | None = None
        for attempt in range(1 + retries):
            target = root or self._pick()
            try:
                return _http_json(target + path, body, self.api_key, timeout_s or self.timeout_s)
            except ServerError as exc:
                error = exc
                if not getattr(exc, "retryable", True):
                    raise
            if attempt < retries:
                delay = self.backoff_s * (2 ** attempt)
                log.warning("%s (attempt %d of %d); retrying in %.1f s", error, attempt + 1, 1 + retries, delay)
                time.sleep(delay)
        assert error is not None
        raise error

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``fn`` over ``items`` with at most ``concurrency`` running at once, results in order.
        The first exception is raised after the others finished (their work is not left running)."""
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            futures = [pool.submit(fn, item) for item in items]
        return [f.result() for f in futures]

    def served_models(self, root: str) -> list[ServedModel]:
        """``GET /v1/models`` of one server; unreachable or unanswered -> ``ModelLoadError``."""
        try:
            answer = self.request("/v1/models", root=root, retries=1, timeout_s=min(self.timeout_s, 10.0))
        except ServerError as exc:
            raise ModelLoadError(f"model server {root} is not answering: {exc}") from None
        return [ServedModel(str(m.get("id", "")), str(m.get("owned_by", ""))) for m in answer.get("data", [])]

    def answers(self, root: str, path: str) -> bool:
        """Whether ``GET path`` answers 2xx (used to tell server kinds apart)."""
        try:
            self.request(path, root=root, retries=0, timeout_s=min(self.timeout_s, 5.0))
            return True
        except ServerError:
            return False

    def check_model(self, model: str) -> list[ServedModel]:
        """Every server answers and serves ``model`` (any model when empty); returns the first's list."""
        first: list[ServedModel] | None = None
        for root in self.roots:
            served = self.served_models(root)
            ids = [m.id for m in served]
            if model and model not in ids:
                raise ModelLoadError(
                    f"model server {root} does not serve model {model!r}; it serves "
                    f"{', '.join(map(repr, ids)) or 'none'}"
                    " (set the task's model to one of these)"
                )
            if not model and len(ids) != 1:
                raise ModelLoadError(f"model server {root} serves {len(ids)} models ({', '.join(ids)}): name one")
            first = first if first is not None else served
        assert first is not None
        return first


def api_key_from_env(variable: str) -> str:
    """The API key held in environment variable ``variable`` (empty name: no key). A named variable that
    is unset is a configuration error, said at once."""
    if not variable:
        return ""
    key = os.environ.get(variable)
    if key is None:
        raise ModelLoadError(f"the API key variable {variable} is not set")
    return key


def _http_json(url: str, body: dict | None, api_key: str, timeout_s: float) -> dict:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as response:  # noqa: S310 - configured server URL
            raw = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace")
        error = ServerError(f"{url}: HTTP {exc.code}: {detail}")
        error.retryable = exc.code in RETRYABLE_STATUS  # type: ignore[attr-defined]
        raise error from None
    except (TimeoutError, socket.timeout) as exc:
        raise ServerError(f"{url}: no answer within {timeout_s:g} s ({exc})") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (TimeoutError, socket.timeout)):
            raise ServerError(f"{url}: no answer within {timeout_s:g} s") from None
        raise ServerUnreachable(f"{url}: cannot connect ({exc.reason})") from None
    except (ConnectionError, OSError) as exc:  # reset or closed mid-answer
        raise ServerError(f"{url}: connection failed ({exc})") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise ServerError(f"{url}: answer is not JSON: {raw[:200]!r}") from None
