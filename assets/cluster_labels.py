"""Stage 7, ``cluster_labels``: the LLM names each cluster from its representatives' captions."""

from collections import defaultdict

import pyarrow as pa
from dagster import AssetExecutionContext, AssetsDefinition, Config, ResourceParam
from pydantic import Field

from assets.batch_range import per_batch
from assets.caption_checks import unusable_caption
from assets.fallbacks import cluster_label_fallback
from assets.llm_schemas import ClusterLabelOutput
from assets.parquet_schemas import CLUSTER_LABELS, OK
from assets.prompts import PROMPT_VERSION, cluster_chat
from assets.random_weights import note_random_weights
from assets.reuse import ModelStep
from assets.structured_output import run_structured_stage
from resources.backends import StructuredGenerator, fingerprint
from resources.concurrency import model_step
from resources.model_names import portable_model_name
from resources.partitions import batch_partitions
from resources.settings import PixelsiftSettings


class ClusterLabelConfig(Config):
    """Token budgets of the cluster-label LLM (first attempt, then one retry)."""

    max_new_tokens: int = Field(default=256, description="Token budget of the first LLM attempt per cluster.")
    retry_max_new_tokens: int = Field(default=512, description="Budget of the single retry for invalid output.")


def _cluster_labels(
    context: AssetExecutionContext,
    config: ClusterLabelConfig,
    clusters: pa.Table,
    captions: pa.Table,
    settings: PixelsiftSettings,
    metadata_llm: ResourceParam[StructuredGenerator],
) -> pa.Table:
    """A 2-4 word name, a description, tags and a category for every cluster (noise is not labelled)."""
    note_random_weights(context, "metadata_llm", metadata_llm.model_id)
    caption_of = {r["path"]: r["caption"] for r in captions.select(["path", "status", "caption"]).to_pylist()
                  if r["status"] == OK}
    members: dict[int, list[dict]] = defaultdict(list)
    for r in clusters.select(["path", "status", "cluster_id", "distance", "is_representative"]).to_pylist():
        if r["status"] == OK and r["cluster_id"] is not None and r["cluster_id"] >= 0:
            members[r["cluster_id"]].append(r)
    cluster_ids = sorted(members)
    reps = {
        c: [caption_of[m["path"]] for m in sorted(members[c], key=lambda m: (m["distance"], m["path"]))
            if m["is_representative"] and m["path"] in caption_of]
        for c in cluster_ids
    }
    rows, reused = label_clusters(config, ModelStep.of(context, settings, CLUSTER_LABELS), metadata_llm, reps,
                                  {c: len(members[c]) for c in cluster_ids})
    context.add_output_metadata({"clusters": len(rows), "reused": reused})
    return pa.Table.from_pylist(rows, schema=CLUSTER_LABELS)


def label_clusters(config: ClusterLabelConfig, step: ModelStep, metadata_llm: StructuredGenerator,
                   captions: dict[int, list[str]], total_images: dict[int, int]) -> tuple[list[dict], int]:
    """One label row per cluster (``step.table``'s columns), written from the representatives'
    ``captions`` (nearest the centroid first), and how many were reused: a cluster whose model,
    prompt and captions are unchanged keeps its label without a model call."""
    reps = {c: [text for text in texts if not unusable_caption(text)] for c, texts in captions.items()}
    cluster_ids = sorted(reps)
    budgets = [config.max_new_tokens, config.retry_max_new_tokens]
    base_fp = fingerprint(llm=metadata_llm.fingerprint(), prompt=PROMPT_VERSION, budgets=budgets)
    fps = {c: fingerprint(base=base_fp, captions=reps[c]) for c in cluster_ids}

    def row(c: int, llm_fields: dict) -> dict:
        return {"cluster_id": c, **llm_fields, "vlm_model": portable_model_name(metadata_llm.model_id),
                "images_analyzed": len(reps[c]), "total_images": total_images[c], "fingerprint": fps[c]}

    # A label is identified by its fingerprint alone: same model, prompt and captions, same label.
    fields, reused = run_structured_stage(
        metadata_llm, step, {c: cluster_chat(reps[c]) for c in cluster_ids},
        fingerprints=fps, key_column=None, schema=ClusterLabelOutput, budgets=budgets,
        fallback=lambda c: cluster_label_fallback(reps[c]), saved_row=row,
        unusable={c: "no usable caption among the representatives" for c in cluster_ids if not reps[c]},
    )
    return [row(c, fields[c]) for c in cluster_ids], reused


def cluster_labels_asset(in_process: bool = True) -> AssetsDefinition:
    """The asset; ``in_process`` False (the LLM is on a model server) frees it of the large-model slot."""
    return model_step(in_process, name="cluster_labels", partitions_def=batch_partitions, group_name="pipeline",
                      kinds={"parquet", "pytorch" if in_process else "openai"})(per_batch(_cluster_labels))


cluster_labels = cluster_labels_asset()
