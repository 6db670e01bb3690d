"""Stage 5, ``clip_embeddings``: an L2-normalised open_clip image embedding per image."""

import numpy as np
import pyarrow as pa
from dagster import AssetExecutionContext, ResourceParam, asset

from assets.batch_range import per_batch
from assets.per_image import assemble, image_step_fingerprint, run_image_model
from assets.reuse import ModelStep
from assets.parquet_schemas import clip_embeddings_schema
from assets.random_weights import note_random_weights
from resources.partitions import batch_partitions
from resources.backends import Embeddings, ImageEmbedder
from resources.model_names import portable_model_name
from resources.settings import PixelsiftSettings


def _split(e: Embeddings) -> list[tuple[np.ndarray, float]]:
    return list(zip(e.vectors, e.ms))


def clip_fingerprint(clip_embedder: ImageEmbedder) -> str:
    """What every embedding row computed now is stamped with (reuse, and finding stale batches)."""
    return image_step_fingerprint(clip_embedder.fingerprint())


@asset(partitions_def=batch_partitions, group_name="pipeline", kinds={"parquet", "pytorch"})
@per_batch
def clip_embeddings(
    context: AssetExecutionContext,
    images: pa.Table,
    settings: PixelsiftSettings,
    clip_embedder: ResourceParam[ImageEmbedder],
) -> pa.Table:
    """One float32 unit vector per decodable image (fixed-size list), with the model id."""
    note_random_weights(context, "clip_embedder", clip_embedder.model_id)

    def to_fields(item: tuple[np.ndarray, float]) -> dict:
        vector, ms = item
        return {"embedding": vector.astype(np.float32).tolist(), "model_id": portable_model_name(clip_embedder.model_id), "ms": ms}

    schema = clip_embeddings_schema(clip_embedder.dim)
    results, reused = run_image_model(
        images, ModelStep.of(context, settings, schema), fingerprint=clip_fingerprint(clip_embedder),
        infer=lambda ims: _split(clip_embedder.embed(ims)), to_fields=to_fields,
        chunk_size=clip_embedder.items_per_call,
    )
    context.add_output_metadata(
        {"model_id": portable_model_name(clip_embedder.model_id), "dim": clip_embedder.dim, "reused": reused}
    )
    return assemble(images, results, schema)
