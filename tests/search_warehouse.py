"""A warehouse with planted vectors, written in the pipeline's own Parquet schemas, for the search tests.

The tiny CLIP's ranking means nothing (random weights), so the search tests plant the vectors: each
image's vector is a known mix of a query direction and noise, which fixes the exact expected order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from assets.parquet_schemas import CAPTIONS, IMAGE_METADATA, IMAGES, clip_embeddings_schema
from resources.model_names import portable_model_name
from resources.warehouse import partition_file, write_table


@dataclass(frozen=True)
class Planted:
    batch: str
    path: str
    score: float  # cosine with the query direction
    category: str = "nature"
    tags: tuple[str, ...] = ("tree",)
    scene: str = "outdoor"
    taken_at: datetime | None = None
    caption: str = "a photo"
    image_id: str = ""
    size: tuple[int, int] = (64, 48)


def unit_with_cosine(direction: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector whose cosine with the unit ``direction`` is exactly ``cosine``."""
    noise = rng.normal(size=direction.shape)
    noise -= noise @ direction * direction
    noise /= np.linalg.norm(noise)
    return (cosine * direction + np.sqrt(1 - cosine**2) * noise).astype(np.float32)


def image_id(item: Planted) -> str:
    return item.image_id or f"{item.batch}/{item.path}".encode().hex().ljust(64, "0")[:64]


def write_planted(root: Path, direction: np.ndarray, items: list[Planted], model_id: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    dim = direction.shape[0]
    for batch in sorted({i.batch for i in items}):
        rows = [i for i in items if i.batch == batch]
        keys = [{"image_id": image_id(i), "path": i.path, "status": "ok", "error": None} for i in rows]
        write_table(pa.Table.from_pylist([
            k | {"embedding": unit_with_cosine(direction, i.score, rng).tolist(), "model_id": portable_model_name(model_id), "ms": 1.0,
                 "fingerprint": "f", "reused": False} for k, i in zip(keys, rows)
        ], schema=clip_embeddings_schema(dim)), partition_file(root, "clip_embeddings", batch))
        write_table(pa.Table.from_pylist([
            k | {"caption": i.caption, "model_id": "m", "ms": 1.0, "new_tokens": 3, "fingerprint": "f", "reused": False}
            for k, i in zip(keys, rows)], schema=CAPTIONS), partition_file(root, "captions", batch))
        write_table(pa.Table.from_pylist([
            k | {"primary_category": i.category, "tags": list(i.tags), "description": i.caption,
                 "scene_type": i.scene} for k, i in zip(keys, rows)], schema=IMAGE_METADATA),
            partition_file(root, "image_metadata", batch))
        write_table(pa.Table.from_pylist([
            k | {"format": "PNG", "width": i.size[0], "height": i.size[1], "mode": "RGB", "taken_at": i.taken_at,
                 "bytes": 1000, "ms": 1.0} for k, i in zip(keys, rows)], schema=IMAGES),
            partition_file(root, "images", batch))
