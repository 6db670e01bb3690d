"""Stage 3, ``image_metadata``: the LLM turns each caption into schema-valid structured metadata.

Carries the fields of the record the Gemini step used to return (category, tags, objects,
scene type, palette, suggested cluster name) plus how it was produced.
"""

import pyarrow as pa
from dagster import AssetExecutionContext, AssetsDefinition, Config, ResourceParam
from pydantic import Field

from assets.batch_range import per_batch
from assets.caption_checks import unusable_caption
from assets.fallbacks import image_metadata_fallback
from assets.llm_schemas import ImageMetadataOutput
from assets.parquet_schemas import IMAGE_METADATA, OK
from assets.per_image import Failed, assemble, unique_ok_images
from assets.prompts import PROMPT_VERSION, metadata_chat
from assets.random_weights import note_random_weights
from assets.reuse import ModelStep
from assets.structured_output import run_structured_stage
from resources.backends import StructuredGenerator, fingerprint
from resources.concurrency import model_step
from resources.model_names import portable_model_name
from resources.partitions import batch_partitions
from resources.settings import PixelsiftSettings


class MetadataConfig(Config):
    """Token budgets of the metadata LLM (first attempt, then one retry for invalid output)."""

    max_new_tokens: int = Field(default=384, description="Token budget of the first LLM attempt per image.")
    retry_max_new_tokens: int = Field(default=768, description="Budget of the single retry for invalid output.")


def metadata_fingerprint(metadata_llm: StructuredGenerator, config: MetadataConfig, caption_fingerprints: set[str]) -> str:
    """What every metadata row computed now is stamped with: the LLM, the prompt, the token budgets
    and the captions' own fingerprints (reuse, and finding stale batches)."""
    return fingerprint(llm=metadata_llm.fingerprint(), prompt=PROMPT_VERSION,
                       budgets=[config.max_new_tokens, config.retry_max_new_tokens], captioner=sorted(caption_fingerprints))


def _ok_rows(table: pa.Table, *columns: str) -> dict[str, dict]:
    return {r["image_id"]: r for r in table.select(["image_id", "status", *columns]).to_pylist() if r["status"] == OK}


def _image_metadata(
    context: AssetExecutionContext,
    config: MetadataConfig,
    images: pa.Table,
    captions: pa.Table,
    color_palettes: pa.Table,
    settings: PixelsiftSettings,
    metadata_llm: ResourceParam[StructuredGenerator],
) -> pa.Table:
    """Category, tags, objects with confidence, scene type, palette and a cluster name per image."""
    note_random_weights(context, "metadata_llm", metadata_llm.model_id)
    caps = _ok_rows(captions, "caption", "model_id", "ms", "fingerprint", "error")
    caption_errors = {r["image_id"]: r["error"] for r in captions.select(["image_id", "status", "error"]).to_pylist()
                      if r["status"] != OK}
    palettes = _ok_rows(color_palettes, "colors", "ms")
    decode_ms = {r["image_id"]: r["ms"] for r in images.select(["image_id", "ms"]).to_pylist()}
    budgets = [config.max_new_tokens, config.retry_max_new_tokens]
    fp = metadata_fingerprint(metadata_llm, config, {c["fingerprint"] for c in caps.values()})
    path_of = unique_ok_images(images)

    def saved_row(image_id: str, fields: dict) -> dict:
        # Only the LLM's fields: a resumed step rebuilds the rest, as for any reused row.
        return {"image_id": image_id, "path": path_of[image_id], "status": OK, **fields, "fingerprint": fp}

    llm_fields, reused = run_structured_stage(
        metadata_llm, ModelStep.of(context, settings, IMAGE_METADATA),
        {image_id: metadata_chat(cap["caption"]) for image_id, cap in caps.items()},
        fingerprints=dict.fromkeys(caps, fp), key_column="image_id", schema=ImageMetadataOutput, budgets=budgets,
        fallback=lambda image_id: image_metadata_fallback(caps[image_id]["caption"]), saved_row=saved_row,
        unusable={i: reason for i, cap in caps.items() if (reason := unusable_caption(cap["caption"]))},
    )

    results: dict[str, dict | Failed] = {i: Failed(f"no caption: {reason}") for i, reason in caption_errors.items()}
    for image_id, fields in llm_fields.items():
        cap, palette = caps[image_id], palettes.get(image_id)
        results[image_id] = fields | {
            "description": cap["caption"],
            "color_palette": palette["colors"] if palette else [],
            "vlm_model": f"{portable_model_name(cap['model_id'])} + {portable_model_name(metadata_llm.model_id)}",
            "processing_time_ms": decode_ms[image_id] + cap["ms"] + (palette["ms"] if palette else 0.0)
            + fields["llm_ms"],
            "fingerprint": fp,
        }
    fallbacks = sum(1 for f in llm_fields.values() if f["fallback_used"])
    context.add_output_metadata(
        {"model_id": portable_model_name(metadata_llm.model_id), "reused": reused, "fallbacks": fallbacks}
    )
    return assemble(images, results, IMAGE_METADATA)


def image_metadata_asset(in_process: bool = True) -> AssetsDefinition:
    """The asset; ``in_process`` False (the LLM is on a model server) frees it of the large-model slot."""
    return model_step(in_process, name="image_metadata", partitions_def=batch_partitions, group_name="pipeline",
                      kinds={"parquet", "pytorch" if in_process else "openai"})(per_batch(_image_metadata))


image_metadata = image_metadata_asset()
