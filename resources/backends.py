"""The three model interfaces the assets depend on, one per task, and what every backend shares.

Assets call only these methods, so an in-process transformers model, a tiny test
model or an HTTP endpoint can stand behind them without touching asset code.
Each result carries the wall time the model spent on that item (its batch's time
divided by the batch size), so assets can account latency per image.

Nothing here imports torch: a backend that talks to a server needs only this module.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
from PIL import Image
from pydantic import BaseModel


class ModelLoadError(RuntimeError):
    """A model could not be loaded. Not a per-image failure: the step fails at once, with this message."""


def fingerprint(**settings: Any) -> str:
    """A short stable hash of the settings that determine a model's output."""
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Chat:
    """One chat prompt, as every backend receives it: built in ``assets/prompts.py``, sent as given.

    ``shared`` is the start of ``user`` that every prompt of the same task has (the instruction);
    an in-process backend prefills it once, a server may cache it. It never changes the text.
    """

    system: str
    user: str
    shared: str = ""

    def __post_init__(self) -> None:
        if not self.user.startswith(self.shared):
            raise ValueError("a chat's shared part must be the start of its user message")

    def messages(self) -> list[dict[str, str]]:
        """The OpenAI-style message list (what a chat template or a chat API takes)."""
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user}]


@dataclass(frozen=True)
class Caption:
    text: str
    ms: float
    new_tokens: int


@dataclass(frozen=True)
class Generation:
    text: str  # the raw decoded text; parsed and validated by the caller
    ms: float
    new_tokens: int
    finished: bool  # False when the token budget ran out before the JSON was complete


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # (n, dim) float32, each row L2-normalised
    ms: list[float]


# Every task: callers pass at most ``items_per_call`` items per call (the assets chunk, retry and
# save progress by that size) and the backend runs them as one batch, without splitting again.


class Captioner(Protocol):
    @property
    def items_per_call(self) -> int:
        """The most items one call takes."""

    @property
    def model_id(self) -> str: ...

    def fingerprint(self) -> str:
        """Identifies the model and every setting that changes its output (for reuse)."""

    def caption(self, images: Sequence[Image.Image], prompt: str) -> list[Caption]:
        """One caption per image, continuing ``prompt`` (empty: unconditional)."""


class StructuredGenerator(Protocol):
    @property
    def items_per_call(self) -> int:
        """The most items one call takes."""

    @property
    def model_id(self) -> str: ...

    def fingerprint(self) -> str: ...

    def generate_json(self, chats: Sequence[Chat], *, schema: type[BaseModel], max_new_tokens: int) -> list[Generation]:
        """One JSON document per chat, constrained by ``schema``."""


class ImageEmbedder(Protocol):
    @property
    def items_per_call(self) -> int:
        """The most items one call takes."""

    @property
    def model_id(self) -> str: ...

    def fingerprint(self) -> str: ...

    @property
    def dim(self) -> int:
        """Length of each embedding vector."""

    def embed(self, images: Sequence[Image.Image]) -> Embeddings: ...
