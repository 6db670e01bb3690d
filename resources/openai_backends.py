"""The ``openai`` backend: captions and structured output from OpenAI-compatible model servers.

Implements ``Captioner`` and ``StructuredGenerator`` (``resources/backends.py``) over HTTP, for
vLLM, SGLang, llama.cpp (llama-server, llama-cpp-python) and Ollama; see docs/serving.md. The
first call checks every server answers and serves the model (else ``ModelLoadError``) and picks
the dialect; each call then sends its items as concurrent requests (``openai_client.py``).
No torch here: the step runs no model of its own, so it does not take the large-model slot.
"""

from __future__ import annotations

import base64
import io
import json
import time
from typing import ClassVar, Literal, Sequence

from dagster import ConfigurableResource
from PIL import Image
from pydantic import BaseModel, Field, PrivateAttr

from resources.backends import Caption, Chat, Generation, ModelLoadError, fingerprint
from resources.openai_client import ServerError, ServerPool, ServerUnreachable, api_key_from_env
from resources.openai_dialects import (
    DIALECTS,
    answer_text,
    dialect_of,
    image_request,
    request_schema,
    structured_request,
    unsupported_constructs,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"


class _Connection:
    """A checked pool of servers: the model id they report and the dialect they speak."""

    def __init__(self, pool: ServerPool, model: str, dialect: str) -> None:
        self.pool, self.model, self.dialect = pool, model, dialect

    def call(self, path: str, body: dict) -> tuple[str, bool, int]:
        try:
            answer = self.pool.request(path, body)
        except ServerUnreachable as exc:
            # The server went away mid-step (stopped, crashed): every further item would fail the same
            # way, so the step stops here; its finished chunks are saved and the next run resumes.
            raise ModelLoadError(f"model server stopped answering: {exc}") from None
        try:
            return answer_text(self.dialect, answer)
        except (KeyError, IndexError, TypeError) as exc:
            raise ServerError(f"malformed answer from the model server ({type(exc).__name__}: {exc}): "
                              f"{json.dumps(answer)[:200]}") from None


class OpenAIServerResource(ConfigurableResource):
    """Settings shared by every task served over HTTP."""

    # Read by the definitions: a step whose model is on a server does not take the large-model slot.
    runs_in_process: ClassVar[bool] = False

    base_urls: list[str] = Field(
        default=[DEFAULT_BASE_URL],
        description="The servers' base URLs (`http://host:port` or `.../v1`); requests are spread over all "
        "of them, which must serve the same model.",
    )
    model: str = Field(default="", description="The model name the servers serve (empty: the only model "
                       "they serve). Checked against `GET /v1/models` before the first request.")
    api_key_env: str = Field(default="", description="Name of the environment variable holding the API key "
                             "(empty: no key is sent).")
    dialect: Literal["auto", "json_schema", "llama_cpp", "ollama"] = Field(
        default="auto", description="How to ask for schema-constrained output: `json_schema` (OpenAI's form: "
        "vLLM, SGLang), `llama_cpp` (`json_object` + schema), `ollama` (`/api/chat` `format`); `auto` asks the "
        "server what it is.",
    )
    concurrency: int = Field(default=4, ge=1, description="Requests in flight at once, over all base URLs.")
    chunk_size: int = Field(default=16, ge=1, description="Items per saved chunk (a stopped step resumes "
                            "after the last saved chunk).")
    timeout_s: float = Field(default=120.0, gt=0, description="Seconds to wait for one answer.")
    retries: int = Field(default=2, ge=0, description="Retries of a request that timed out or got HTTP "
                         "408/429/5xx, with exponential backoff.")
    backoff_s: float = Field(default=0.5, ge=0, description="Wait before the first retry; doubles each retry.")

    _connection: _Connection | None = PrivateAttr(default=None)

    @property
    def items_per_call(self) -> int:
        return self.chunk_size

    @property
    def model_id(self) -> str:
        return self._connect().model

    def _connect(self) -> _Connection:
        if self._connection is None:
            pool = ServerPool(self.base_urls, api_key=api_key_from_env(self.api_key_env), timeout_s=self.timeout_s,
                              concurrency=self.concurrency, retries=self.retries, backoff_s=self.backoff_s)
            served = pool.check_model(self.model)
            entry = next((m for m in served if m.id == self.model), served[0])
            dialect = self.dialect
            if dialect == "auto":
                dialect = dialect_of(entry.owned_by, pool.answers(pool.roots[0], "/api/version"))
            assert dialect in DIALECTS
            self._connection = _Connection(pool, entry.id, dialect)
        return self._connection

    def _server_settings(self) -> dict:
        connection = self._connect()
        return {"backend": "openai", "model": connection.model, "dialect": connection.dialect, "decoding": "greedy"}


class OpenAIStructuredResource(OpenAIServerResource):
    """Schema-constrained JSON (metadata, cluster labels) from a chat model on a server."""

    def fingerprint(self) -> str:
        # The dialect is part of it: it decides the grammar the server enforces (openai_dialects.py).
        return fingerprint(kind="metadata_llm", **self._server_settings())

    def generate_json(self, chats: Sequence[Chat], *, schema: type[BaseModel], max_new_tokens: int) -> list[Generation]:
        if not chats:
            return []
        connection = self._connect()
        json_schema = request_schema(schema.model_json_schema(), connection.dialect)
        problems = unsupported_constructs(json_schema, connection.dialect)
        if problems:
            raise ModelLoadError(
                f"the model server at {', '.join(connection.pool.roots)} ({connection.dialect} dialect) cannot "
                f"constrain output to {schema.__name__}: " + "; ".join(problems)
            )

        def one(chat: Chat) -> Generation:
            path, body = structured_request(connection.dialect, connection.model, chat.messages(), json_schema,
                                            schema.__name__, max_new_tokens)
            started = time.perf_counter()
            text, finished, tokens = connection.call(path, body)
            return Generation(text, (time.perf_counter() - started) * 1000.0, tokens, finished)

        return connection.pool.map(one, list(chats))


class OpenAICaptionerResource(OpenAIServerResource):
    """Captions from a vision-language model on a server (BLIP-2 on vLLM, or any VLM)."""

    instruction: str = Field(default="Describe this photo in one short sentence.",
                             description="What the server's model is asked, with the image.")
    max_new_tokens: int = Field(default=40, ge=1, description="Caption length limit in tokens.")
    image_max_side: int = Field(default=448, ge=32, description="The image is scaled down to fit this many pixels "
                                "per side and sent as JPEG, to keep requests small.")
    jpeg_quality: int = Field(default=90, ge=1, le=100, description="JPEG quality of the image sent.")

    def fingerprint(self) -> str:
        return fingerprint(kind="caption", **self._server_settings(), instruction=self.instruction,
                           max_new_tokens=self.max_new_tokens, image_max_side=self.image_max_side,
                           jpeg_quality=self.jpeg_quality)

    def encode(self, image: Image.Image) -> str:
        """The image as base64 JPEG, scaled down to ``image_max_side`` (the server sees exactly this)."""
        small = image.convert("RGB")
        small.thumbnail((self.image_max_side, self.image_max_side), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=self.jpeg_quality)
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def caption(self, images: Sequence[Image.Image], prompt: str) -> list[Caption]:
        if not images:
            return []
        connection = self._connect()
        # A non-empty prompt is the start the caption must continue (as BLIP-2's text prompt is).
        instruction = self.instruction + (f' Begin with "{prompt}".' if prompt else "")

        def one(image: Image.Image) -> Caption:
            path, body = image_request(connection.dialect, connection.model, instruction, self.encode(image),
                                       self.max_new_tokens)
            started = time.perf_counter()
            text, _, tokens = connection.call(path, body)
            return Caption(text.strip(), (time.perf_counter() - started) * 1000.0, tokens)

        return connection.pool.map(one, list(images))
