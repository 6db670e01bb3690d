"""Stage 3, ``image_metadata``: the LLM turns each caption into schema-valid structured metadata.

Carries the fields of the record the Gemini step used to return (category, tags, objects,
scene type, palette, suggested cluster name) plus how it was produced.
"""

import pyarrow as pa
from dagster import AssetExecutionContext, Config, ResourceParam, asset
from pydantic import Field

from assets.fallbacks import image_metadata_fallback
from assets.per_image import Failed, assemble, unique_ok_images
from assets.prompts import METADATA_INSTRUCTION, PROMPT_VERSION, SYSTEM, caption_input
from assets.reuse import Progress, previous_results
from assets.llm_schemas import ImageMetadataOutput
from assets.structured_output import generate_structured
from assets.parquet_schemas import IMAGE_METADATA, OK
from resources.concurrency import LARGE_MODEL
from resources.partitions import batch_partitions
from resources.backends import StructuredGenerator
from resources.settings import PixelsiftSettings
from resources.backends import fingerprint

# The fields the LLM decides; everything else in the row is derived in this run.
LLM_FIELDS = ["primary_category", "tags", "detected_objects", "scene_type", "suggested_cluster_name",
              "fallback_used", "fallback_reason", "attempts", "json_valid", "llm_ms", "new_tokens"]


class MetadataConfig(Config):
    """Token budgets of the metadata LLM (first attempt, then one retry for invalid output)."""

    max_new_tokens: int = Field(default=384, description="Token budget of the first LLM attempt per image.")
    retry_max_new_tokens: int = Field(default=768, description="Budget of the single retry for invalid output.")


def _ok_rows(table: pa.Table, *columns: str) -> dict[str, dict]:
    return {r["image_id"]: r for r in table.select(["image_id", "status", *columns]).to_pylist() if r["status"] == OK}


@asset(partitions_def=batch_partitions, group_name="pipeline", kinds={"parquet", "pytorch"}, op_tags=LARGE_MODEL)
def image_metadata(
    context: AssetExecutionContext,
    config: MetadataConfig,
    images: pa.Table,
    captions: pa.Table,
    color_palettes: pa.Table,
    settings: PixelsiftSettings,
    metadata_llm: ResourceParam[StructuredGenerator],
) -> pa.Table:
    """Category, tags, objects with confidence, scene type, palette and a cluster name per image."""
    caps = _ok_rows(captions, "caption", "model_id", "ms", "fingerprint", "error")
    caption_errors = {r["image_id"]: r["error"] for r in captions.select(["image_id", "status", "error"]).to_pylist()
                      if r["status"] != OK}
    palettes = _ok_rows(color_palettes, "colors", "ms")
    decode_ms = {r["image_id"]: r["ms"] for r in images.select(["image_id", "ms"]).to_pylist()}
    budgets = [config.max_new_tokens, config.retry_max_new_tokens]
    fp = fingerprint(llm=metadata_llm.fingerprint(), prompt=PROMPT_VERSION, budgets=budgets,
                     captioner=sorted({c["fingerprint"] for c in caps.values()}))

    llm_fields: dict[str, dict] = {}
    if settings.reuse_results:
        for image_id, row in previous_results(settings.warehouse_dir, "image_metadata", fp, list(caps)).items():
            llm_fields[image_id] = {k: row.get(k) for k in LLM_FIELDS} | {"reused": True}
    reused = len(llm_fields)
    todo = [i for i in caps if i not in llm_fields]
    path_of = unique_ok_images(images)
    progress = Progress(settings.warehouse_dir, "image_metadata", context.partition_key, IMAGE_METADATA, context.log,
                        total=len(todo))

    def save(valid: list) -> None:
        # Only the LLM's fields: a resumed step rebuilds the rest, as for any reused row.
        progress.save([{"image_id": todo[k], "path": path_of[todo[k]], "status": OK, **s.row(), "fingerprint": fp}
                       for k, s in valid])

    structured = generate_structured(
        metadata_llm,
        system=SYSTEM,
        instruction=METADATA_INSTRUCTION,
        inputs=[caption_input(caps[i]["caption"]) for i in todo],
        schema=ImageMetadataOutput,
        budgets=budgets,
        fallback=lambda k: image_metadata_fallback(caps[todo[k]]["caption"]),
        chunk_size=metadata_llm.items_per_call,
        retries=settings.model_retries,
        logger=context.log,
        on_valid=save,
    )
    llm_fields |= {image_id: s.row() for image_id, s in zip(todo, structured)}

    results: dict[str, dict | Failed] = {i: Failed(f"no caption: {reason}") for i, reason in caption_errors.items()}
    for image_id, fields in llm_fields.items():
        cap, palette = caps[image_id], palettes.get(image_id)
        results[image_id] = fields | {
            "description": cap["caption"],
            "color_palette": palette["colors"] if palette else [],
            "vlm_model": f"{cap['model_id']} + {metadata_llm.model_id}",
            "processing_time_ms": decode_ms[image_id] + cap["ms"] + (palette["ms"] if palette else 0.0)
            + fields["llm_ms"],
            "fingerprint": fp,
        }
    fallbacks = sum(1 for f in llm_fields.values() if f["fallback_used"])
    context.add_output_metadata({"model_id": metadata_llm.model_id, "reused": reused, "fallbacks": fallbacks})
    return assemble(images, results, IMAGE_METADATA)
