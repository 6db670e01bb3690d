"""Stage 2, ``captions``: one sentence per image from BLIP-2."""

import pyarrow as pa
from dagster import AssetExecutionContext, ResourceParam, asset

from assets.per_image import assemble, run_image_model
from assets.prompts import CAPTION_PROMPT
from assets.reuse import ModelStep
from assets.parquet_schemas import CAPTIONS
from resources.concurrency import LARGE_MODEL, LARGE_MODEL_POOL
from resources.partitions import batch_partitions
from resources.backends import Caption, Captioner, fingerprint
from resources.model_names import portable_model_name
from resources.settings import PixelsiftSettings


@asset(partitions_def=batch_partitions, group_name="pipeline", kinds={"parquet", "pytorch"},
       op_tags=LARGE_MODEL, pool=LARGE_MODEL_POOL)
def captions(
    context: AssetExecutionContext,
    images: pa.Table,
    settings: PixelsiftSettings,
    captioner: ResourceParam[Captioner],
) -> pa.Table:
    """A caption per decodable image (BLIP-2, greedy), with the model id and time per image."""
    def to_fields(c: Caption) -> dict:
        return {"caption": c.text, "model_id": portable_model_name(captioner.model_id), "ms": c.ms, "new_tokens": c.new_tokens}

    results, reused = run_image_model(
        images, ModelStep.of(context, settings, CAPTIONS),
        fingerprint=fingerprint(model=captioner.fingerprint(), prompt=CAPTION_PROMPT),
        infer=lambda ims: captioner.caption(ims, CAPTION_PROMPT), to_fields=to_fields,
        chunk_size=captioner.items_per_call,
    )
    context.add_output_metadata({"model_id": portable_model_name(captioner.model_id), "reused": reused})
    return assemble(images, results, CAPTIONS)
