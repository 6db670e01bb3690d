"""The explicit pyarrow schema of every eval asset's Parquet file."""

from __future__ import annotations

import pyarrow as pa

from assets.parquet_schemas import DETECTED_OBJECT

# Record kinds in the loaded baseline. A "problem" row is a line that did not load, with why.
IMAGE, CLUSTER, PROBLEM = "image", "cluster", "problem"

GEMINI_BASELINE = pa.schema(
    [
        pa.field("record", pa.string(), nullable=False),
        pa.field("line", pa.int32()),  # line of the JSONL file, or row of the Parquet file (1-based)
        pa.field("path", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("primary_category", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("description", pa.string()),
        pa.field("detected_objects", pa.list_(DETECTED_OBJECT)),
        pa.field("scene_type", pa.string()),
        pa.field("color_palette", pa.list_(pa.string())),  # '#RRGGBB'; colour names converted on load
        pa.field("suggested_cluster_name", pa.string()),
        pa.field("vlm_model", pa.string()),
        pa.field("cluster_name", pa.string()),
        pa.field("members", pa.list_(pa.string())),  # a cluster record's images, by path or sha256
        pa.field("problem", pa.string()),
        pa.field("source", pa.string()),  # what the file says it is, e.g. "hand-written reference"
        pa.field("file", pa.string()),  # the baseline file loaded
    ]
)

_PRF = ["precision", "recall", "f1"]


def _prf_fields(prefix: str) -> list[pa.Field]:
    return [pa.field(f"{prefix}_{kind}_{m}", pa.float64()) for kind in ("exact", "semantic") for m in _PRF]


METADATA_EVAL = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # our pipeline's status for the image
        pa.field("covered", pa.bool_(), nullable=False),  # a baseline record applies to this image
        pa.field("matched_by", pa.string()),  # 'path' or 'sha256'
        pa.field("uncovered_reason", pa.string()),
        pa.field("category_reference", pa.string()),  # normalised onto the vocabulary
        pa.field("category_ours", pa.string()),
        pa.field("category_score", pa.float64()),  # 1 agree, 0 disagree
        pa.field("scene_type_reference", pa.string()),
        pa.field("scene_type_ours", pa.string()),
        pa.field("scene_type_score", pa.float64()),
        *_prf_fields("tags"),
        *_prf_fields("objects"),
        pa.field("description_similarity", pa.float64()),  # cosine
        pa.field("description_score", pa.float64()),  # cosine through the calibrated ramp
        pa.field("cluster_name_similarity", pa.float64()),
        pa.field("cluster_name_score", pa.float64()),
        pa.field("palette_delta_e", pa.float64()),  # mean CIEDE2000 after optimal matching
        pa.field("palette_score", pa.float64()),
        pa.field("score", pa.float64()),  # the weighted per-image score behind metadata_accuracy
    ]
)

CLUSTER_DETAIL = pa.struct(
    [
        pa.field("cluster_id", pa.int32()),
        pa.field("size", pa.int32()),
        pa.field("cluster_name", pa.string()),
        # Mean cosine between our cluster name and each member's reference suggested_cluster_name.
        pa.field("member_name_similarity", pa.float64()),
        # The reference cluster sharing most members (Jaccard), when the baseline has cluster records.
        pa.field("reference_cluster_name", pa.string()),
        pa.field("reference_overlap", pa.float64()),
        pa.field("name_similarity", pa.float64()),
        pa.field("description_similarity", pa.float64()),
        pa.field("tags_semantic_f1", pa.float64()),
        pa.field("category_score", pa.float64()),
    ]
)

CLUSTER_EVAL = pa.schema(
    [
        pa.field("n_images", pa.int32()),  # images with a cluster assignment (status ok)
        pa.field("n_clusters", pa.int32()),
        pa.field("noise_share", pa.float64()),
        pa.field("n_compared", pa.int32()),  # of those, images with a reference suggested_cluster_name
        pa.field("ari_cluster_name", pa.float64()),
        pa.field("nmi_cluster_name", pa.float64()),
        pa.field("ari_category", pa.float64()),
        pa.field("nmi_category", pa.float64()),
        pa.field("silhouette", pa.float64()),
        pa.field("label_member_similarity", pa.float64()),
        pa.field("label_name_similarity", pa.float64()),
        pa.field("label_description_similarity", pa.float64()),
        pa.field("label_tags_f1", pa.float64()),
        pa.field("label_category_score", pa.float64()),
        pa.field("clusters", pa.list_(CLUSTER_DETAIL)),
    ]
)

# Per-image latency stages: (summary column prefix, source asset, its column).
LATENCY_STAGES: list[tuple[str, str, str]] = [
    ("decode", "images", "ms"),
    ("caption", "captions", "ms"),
    ("palette", "color_palettes", "ms"),
    ("llm", "image_metadata", "llm_ms"),
    ("clip", "clip_embeddings", "ms"),
    ("end_to_end", "image_metadata", "processing_time_ms"),
]

# Headline per-field figures: (summary column, metadata_eval column averaged over covered images).
FIELD_MEANS: list[tuple[str, str]] = [
    ("category_accuracy", "category_score"),
    ("scene_type_accuracy", "scene_type_score"),
    *[(f"tags_{k}_{m}", f"tags_{k}_{m}") for k in ("exact", "semantic") for m in _PRF],
    *[(f"objects_{k}_{m}", f"objects_{k}_{m}") for k in ("exact", "semantic") for m in _PRF],
    ("description_similarity", "description_similarity"),
    ("description_score", "description_score"),
    ("cluster_name_similarity", "cluster_name_similarity"),
    ("cluster_name_score", "cluster_name_score"),
    ("palette_delta_e", "palette_delta_e"),
    ("palette_score", "palette_score"),
]

EVAL_SUMMARY = pa.schema(
    [
        pa.field("batch", pa.string(), nullable=False),
        pa.field("evaluated_at", pa.timestamp("s", tz="UTC")),
        pa.field("baseline_source", pa.string()),
        pa.field("baseline_file", pa.string()),
        pa.field("baseline_records", pa.int32()),
        pa.field("baseline_problems", pa.int32()),
        pa.field("baseline_orphans", pa.int32()),  # records matching no image of the batch
        pa.field("n_images", pa.int32()),
        pa.field("n_covered", pa.int32()),
        pa.field("n_uncovered", pa.int32()),
        pa.field("metadata_accuracy", pa.float64()),
        pa.field("metadata_accuracy_ci_low", pa.float64()),
        pa.field("metadata_accuracy_ci_high", pa.float64()),
        pa.field("category_kappa", pa.float64()),
        pa.field("scene_type_kappa", pa.float64()),
        *[pa.field(name, pa.float64()) for name, _ in FIELD_MEANS],
        pa.field("ari_cluster_name", pa.float64()),
        pa.field("nmi_cluster_name", pa.float64()),
        pa.field("ari_category", pa.float64()),
        pa.field("nmi_category", pa.float64()),
        pa.field("silhouette", pa.float64()),
        pa.field("n_clusters", pa.int32()),
        pa.field("label_member_similarity", pa.float64()),
        pa.field("label_name_similarity", pa.float64()),
        *[pa.field(f"{stage}_p{q}_ms", pa.float64()) for stage, _, _ in LATENCY_STAGES for q in (50, 95)],
        pa.field("cluster_label_p50_ms", pa.float64()),
        pa.field("cluster_label_p95_ms", pa.float64()),
        pa.field("images_per_second", pa.float64()),
        pa.field("timed_images", pa.int32()),  # images whose metadata was computed in this run (not reused)
        pa.field("json_validity", pa.float64()),  # share of schema-valid LLM outputs, metadata and labels
        pa.field("n_llm_outputs", pa.int32()),
        pa.field("fallback_rate", pa.float64()),
        pa.field("error_rate", pa.float64()),
        pa.field("caption_model", pa.string()),
        pa.field("metadata_model", pa.string()),
        pa.field("clip_model", pa.string()),
        pa.field("cluster_label_model", pa.string()),
        pa.field("caption_fingerprint", pa.string()),
        pa.field("metadata_fingerprint", pa.string()),
        pa.field("sentence_model", pa.string()),
        pa.field("eval_settings", pa.string()),  # JSON of the EvalSettings that produced these figures
    ]
)

EVAL_REPORT = pa.schema(
    [
        pa.field("batch", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("sections", pa.list_(pa.string())),
        pa.field("generated_at", pa.timestamp("s", tz="UTC")),
    ]
)
