"""The explicit pyarrow schema of every pipeline asset's Parquet file.

Per-image assets share the key columns: ``image_id`` (sha256 of the file's bytes),
``path`` (relative to the batch folder, unique within a batch), ``status``
(``ok`` or ``error``) and ``error`` (why, when status is ``error``). Every image of
the batch appears in every per-image asset exactly once, keyed by ``path``.
"""

from __future__ import annotations

import pyarrow as pa

KEY_FIELDS = [
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
]

OK = "ok"
ERROR = "error"

IMAGES = pa.schema(
    KEY_FIELDS
    + [
        pa.field("format", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("mode", pa.string()),
        pa.field("taken_at", pa.timestamp("us")),  # EXIF capture time, camera-local (no zone)
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("ms", pa.float64()),  # reading, hashing and decoding the file
    ]
)

CAPTIONS = pa.schema(
    KEY_FIELDS
    + [
        pa.field("caption", pa.string()),
        pa.field("model_id", pa.string()),
        pa.field("ms", pa.float64()),
        pa.field("new_tokens", pa.int32()),
        pa.field("fingerprint", pa.string()),
        pa.field("reused", pa.bool_()),
    ]
)

DETECTED_OBJECT = pa.struct([pa.field("name", pa.string()), pa.field("confidence", pa.float32())])

IMAGE_METADATA = pa.schema(
    KEY_FIELDS
    + [
        pa.field("primary_category", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("description", pa.string()),
        pa.field("detected_objects", pa.list_(DETECTED_OBJECT)),
        pa.field("scene_type", pa.string()),
        pa.field("color_palette", pa.list_(pa.string())),
        pa.field("suggested_cluster_name", pa.string()),
        pa.field("vlm_model", pa.string()),
        pa.field("fallback_used", pa.bool_()),
        pa.field("fallback_reason", pa.string()),
        pa.field("attempts", pa.int32()),
        pa.field("json_valid", pa.bool_()),  # the LLM's own output parsed and validated
        pa.field("llm_ms", pa.float64()),
        pa.field("new_tokens", pa.int32()),
        # The stages that produced this record: decode + caption + palette + LLM.
        pa.field("processing_time_ms", pa.float64()),
        pa.field("fingerprint", pa.string()),
        pa.field("reused", pa.bool_()),
    ]
)

COLOR_PALETTES = pa.schema(
    KEY_FIELDS
    + [
        pa.field("colors", pa.list_(pa.string())),  # '#RRGGBB', most common first
        pa.field("shares", pa.list_(pa.float32())),  # share of pixels, same order, sums to 1
        pa.field("ms", pa.float64()),
    ]
)


def clip_embeddings_schema(dim: int) -> pa.Schema:
    return pa.schema(
        KEY_FIELDS
        + [
            pa.field("embedding", pa.list_(pa.float32(), dim)),
            pa.field("model_id", pa.string()),
            pa.field("ms", pa.float64()),
            pa.field("fingerprint", pa.string()),
            pa.field("reused", pa.bool_()),
        ]
    )


CLUSTERS = pa.schema(
    KEY_FIELDS
    + [
        pa.field("cluster_id", pa.int32()),  # -1 is noise: an outlier kept out of every cluster
        pa.field("distance", pa.float32()),  # cosine distance to the cluster's centroid
        pa.field("is_representative", pa.bool_()),
    ]
)

CLUSTER_LABELS = pa.schema(
    [
        pa.field("cluster_id", pa.int32(), nullable=False),
        pa.field("cluster_name", pa.string()),
        pa.field("description", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
        pa.field("primary_category", pa.string()),
        pa.field("vlm_model", pa.string()),
        pa.field("images_analyzed", pa.int32()),
        pa.field("total_images", pa.int32()),
        pa.field("fallback_used", pa.bool_()),
        pa.field("fallback_reason", pa.string()),
        pa.field("attempts", pa.int32()),
        pa.field("json_valid", pa.bool_()),
        pa.field("llm_ms", pa.float64()),
        pa.field("new_tokens", pa.int32()),
        # Hash of the model settings, prompt and representative captions: same inputs, same label.
        pa.field("fingerprint", pa.string()),
        pa.field("reused", pa.bool_()),
    ]
)
