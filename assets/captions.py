"""Stage 2, ``captions``: one sentence per image from BLIP-2."""

import pyarrow as pa
from dagster import AssetExecutionContext, AssetsDefinition, ResourceParam

from assets.batch_range import per_batch
from assets.per_image import assemble, image_step_fingerprint, run_image_model
from assets.prompts import CAPTION_PROMPT
from assets.reuse import ModelStep
from assets.parquet_schemas import CAPTIONS
from assets.random_weights import note_random_weights
from resources.concurrency import model_step
from resources.partitions import batch_partitions
from resources.backends import Caption, Captioner, fingerprint
from resources.model_names import portable_model_name
from resources.settings import PixelsiftSettings


def captions_fingerprint(captioner: Captioner) -> str:
    """What every caption row computed now is stamped with (reuse, and finding stale batches)."""
    return image_step_fingerprint(fingerprint(model=captioner.fingerprint(), prompt=CAPTION_PROMPT))


def _captions(
    context: AssetExecutionContext,
    images: pa.Table,
    settings: PixelsiftSettings,
    captioner: ResourceParam[Captioner],
) -> pa.Table:
    """A caption per decodable image (BLIP-2, greedy), with the model id and time per image."""
    note_random_weights(context, "captioner", captioner.model_id)

    def to_fields(c: Caption) -> dict:
        return {"caption": c.text, "model_id": portable_model_name(captioner.model_id), "ms": c.ms, "new_tokens": c.new_tokens}

    results, reused = run_image_model(
        images, ModelStep.of(context, settings, CAPTIONS),
        fingerprint=captions_fingerprint(captioner),
        infer=lambda ims: captioner.caption(ims, CAPTION_PROMPT), to_fields=to_fields,
        chunk_size=captioner.items_per_call,
    )
    context.add_output_metadata({"model_id": portable_model_name(captioner.model_id), "reused": reused})
    return assemble(images, results, CAPTIONS)


def captions_asset(in_process: bool = True) -> AssetsDefinition:
    """The asset; ``in_process`` False (the captioner is on a model server) frees it of the large-model slot."""
    return model_step(in_process, name="captions", partitions_def=batch_partitions, group_name="pipeline",
                      kinds={"parquet", "pytorch" if in_process else "openai"})(per_batch(_captions))


captions = captions_asset()
