"""The explicit pyarrow schema of every pipeline asset's Parquet file, with what each column means.

Per-image assets share the key columns: ``image_id`` (sha256 of the file's bytes),
``path`` (relative to the batch folder, unique within a batch), ``status``
(``ok`` or ``error``) and ``error`` (why, when status is ``error``). Every image of
the batch appears in every per-image asset exactly once, keyed by ``path``.

Each column's description travels in the field's metadata: the warehouse shows it in the
Dagster UI's column schema of every materialization.
"""

from __future__ import annotations

import pyarrow as pa

from resources.warehouse import column


def bookkeeping(name: str, kind: pa.DataType, description: str, nullable: bool = True) -> pa.Field:
    """A column about how a row was made (hashes, timings, model ids): kept out of the UI's preview table."""
    return column(name, kind, description, nullable, preview=False)


KEY_FIELDS = [
    bookkeeping("image_id", pa.string(), "sha256 of the file's bytes: identical files share it", nullable=False),
    column("path", pa.string(), "the file, relative to the batch folder ('/'-separated)", nullable=False),
    bookkeeping("status", pa.string(), "'ok', or 'error' when this stage has no result for the file", nullable=False),
    column("error", pa.string(), "why there is no result (status 'error')"),
]

OK = "ok"
ERROR = "error"


def _model_id(what: str) -> pa.Field:
    return bookkeeping("model_id", pa.string(), f"the {what} (hub id, or a local model's portable name: never a machine path)")


def _stage_ms(what: str) -> pa.Field:
    return bookkeeping("ms", pa.float64(), f"milliseconds spent on this image: {what}")


# The last columns of every model result: what made it, and whether this run made it.
FINGERPRINT = bookkeeping("fingerprint", pa.string(),
                     "hash of the model, its settings, the prompt and the decoding that made this result")
REUSED = bookkeeping("reused", pa.bool_(), "taken from an earlier run with the same fingerprint, not computed again")


def structured_output_columns(what: str) -> list[pa.Field]:
    """How a language model's structured output was produced, the same for image metadata and
    cluster labels; ``assets.structured_output.Structured`` has an attribute of each name."""
    return [
        bookkeeping("fallback_used", pa.bool_(),
                    f"the {what} comes from the rule-based fallback, not the language model"),
        bookkeeping("fallback_reason", pa.string(), "why the fallback was used"),
        bookkeeping("attempts", pa.int32(), "generation attempts made (a second one has a larger token budget)"),
        bookkeeping("json_valid", pa.bool_(), "the language model's own output parsed and validated"),
        bookkeeping("llm_ms", pa.float64(), "milliseconds of language model time, all attempts"),
        bookkeeping("new_tokens", pa.int32(), "tokens the language model generated, all attempts"),
        bookkeeping("duplicates_removed", pa.int32(),
                    "repeated tags or objects the language model wrote, dropped after validation"),
    ]


IMAGES = pa.schema(
    KEY_FIELDS
    + [
        column("format", pa.string(), "file format as Pillow reports it (JPEG, PNG, HEIF, ...)"),
        column("width", pa.int32(), "full width in pixels, after EXIF orientation"),
        column("height", pa.int32(), "full height in pixels, after EXIF orientation"),
        column("mode", pa.string(), "Pillow's pixel mode (RGB, L, CMYK, ...)"),
        column("taken_at", pa.timestamp("us"),
               "when the photo was taken, from EXIF, in the camera's local time (no zone)"),
        column("bytes", pa.int64(), "file size", nullable=False),
        _stage_ms("reading, hashing and decoding the file"),
    ]
)

CAPTIONS = pa.schema(
    KEY_FIELDS
    + [
        column("caption", pa.string(), "one sentence describing the image"),
        _model_id("captioning model"),
        _stage_ms("the captioning model's share of its batch"),
        bookkeeping("new_tokens", pa.int32(), "tokens the model generated"),
        FINGERPRINT,
        REUSED,
    ]
)

DETECTED_OBJECT = pa.struct([pa.field("name", pa.string()), pa.field("confidence", pa.float32())])

IMAGE_METADATA = pa.schema(
    KEY_FIELDS
    + [
        column("primary_category", pa.string(), "one of the schema's categories"),
        column("tags", pa.list_(pa.string()), "5-15 lower-case keywords"),
        column("description", pa.string(), "the image's caption"),
        column("detected_objects", pa.list_(DETECTED_OBJECT), "objects named in the image, each with a confidence"),
        column("scene_type", pa.string(), "one of the schema's scene types"),
        column("color_palette", pa.list_(pa.string()), "dominant colours '#RRGGBB', from color_palettes"),
        column("suggested_cluster_name", pa.string(), "a short name for a group of images like this one"),
        bookkeeping("vlm_model", pa.string(), "the captioning model + the language model"),
        *structured_output_columns("record"),
        bookkeeping("processing_time_ms", pa.float64(),
               "milliseconds this record took end to end: decode + caption + palette + language model"),
        FINGERPRINT,
        REUSED,
    ]
)

COLOR_PALETTES = pa.schema(
    KEY_FIELDS
    + [
        column("colors", pa.list_(pa.string()), "3-5 dominant colours '#RRGGBB', most common first"),
        column("shares", pa.list_(pa.float32()), "share of the pixels of each colour, same order; sums to 1"),
        _stage_ms("decoding and k-means"),
    ]
)


def clip_embeddings_schema(dim: int) -> pa.Schema:
    return pa.schema(
        KEY_FIELDS
        + [
            column("embedding", pa.list_(pa.float32(), dim), f"unit-length CLIP image vector ({dim} floats)"),
            _model_id("CLIP model"),
            _stage_ms("the model's share of its batch"),
            FINGERPRINT,
            REUSED,
        ]
    )


CLUSTERS = pa.schema(
    KEY_FIELDS
    + [
        column("cluster_id", pa.int32(), "the image's cluster, numbered by size from 0; -1 is noise (an outlier)"),
        column("distance", pa.float32(), "cosine distance to the cluster's centroid"),
        column("is_representative", pa.bool_(), "among the images nearest the centroid that name the cluster"),
    ]
)

CLUSTER_LABELS = pa.schema(
    [
        column("cluster_id", pa.int32(), "the cluster, as in clusters.cluster_id", nullable=False),
        column("cluster_name", pa.string(), "a 2-4 word name"),
        column("description", pa.string(), "what the cluster's images have in common"),
        column("tags", pa.list_(pa.string()), "5-10 lower-case keywords for the cluster"),
        column("primary_category", pa.string(), "one of the schema's categories"),
        bookkeeping("vlm_model", pa.string(), "the language model"),
        column("images_analyzed", pa.int32(), "representative captions the label was written from"),
        column("total_images", pa.int32(), "images in the cluster"),
        *structured_output_columns("label"),
        bookkeeping("fingerprint", pa.string(),
               "hash of the model, its settings, the prompt and the representative captions: same inputs, same label"),
        REUSED,
    ]
)

# The whole collection, not one batch: ``batch`` here is the copy's batch.
NEAR_DUPLICATES = pa.schema([
    column("group_id", pa.int32(), "one group of copies of a photo, numbered largest group first", nullable=False),
    column("batch", pa.string(), "the batch holding this copy", nullable=False),
    column("path", pa.string(), "the copy, relative to its batch folder", nullable=False),
    bookkeeping("image_id", pa.string(), "sha256 of the copy's bytes", nullable=False),
    column("match", pa.string(), "'best' (the copy to keep), 'exact' (same bytes as it) or 'near' (resized, "
           "re-encoded or cropped)", nullable=False),
    column("is_best", pa.bool_(), "the suggested copy to keep: most pixels, then sharpest, then taken earliest",
           nullable=False),
    column("width", pa.int32(), "width in pixels"),
    column("height", pa.int32(), "height in pixels"),
    column("bytes", pa.int64(), "file size"),
    column("taken_at", pa.timestamp("us"), "when the photo was taken (EXIF)"),
    bookkeeping("sharpness", pa.float64(), "variance of the Laplacian at 256x256 grey: higher is sharper"),
    bookkeeping("phash", pa.string(), "64-bit perceptual hash (DCT), hex"),
    column("hash_distance", pa.int32(), "perceptual-hash bits that differ from the best copy's (0-64)"),
    column("cosine", pa.float32(), "CLIP cosine similarity with the best copy"),
])

# A cache of the near-duplicate step (under the warehouse's hidden .cache/), by file content.
PERCEPTUAL_HASHES = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("phash", pa.string(), nullable=False),
    pa.field("sharpness", pa.float64(), nullable=False),
])

# Clusters of the whole collection (``assets/collection_clusters.py``): ids keep their meaning across updates.
COLLECTION_CLUSTERS = pa.schema([
    column("cluster_id", pa.int32(), "the image's cluster in the whole collection; -1 is noise. An id never "
           "changes meaning: updates add images to clusters or make new ones, never renumber", nullable=False),
    column("batch", pa.string(), "the batch holding this copy", nullable=False),
    column("path", pa.string(), "the file, relative to its batch folder", nullable=False),
    bookkeeping("image_id", pa.string(), "sha256 of the file's bytes", nullable=False),
    bookkeeping("model_id", pa.string(), "the CLIP model whose vectors were clustered: clusters never mix models",
                nullable=False),
    column("distance", pa.float32(), "cosine distance to the cluster's centroid"),
    column("is_representative", pa.bool_(), "among the images nearest the centroid that name the cluster"),
    column("change", pa.string(), "what the last update did: 'kept' (same cluster as before), 'joined' (came "
           "into an existing cluster), 'new' (in a cluster made by this update) or 'noise'", nullable=False),
])

COLLECTION_CLUSTER_CENTROIDS = pa.schema([
    column("cluster_id", pa.int32(), "the cluster, as in collection_clusters.cluster_id", nullable=False),
    bookkeeping("model_id", pa.string(), "the CLIP model of the cluster's vectors", nullable=False),
    column("images", pa.int32(), "distinct images (by sha256) in the cluster; 0 once all left (the id stays "
           "reserved, and images like them join it again)", nullable=False),
    column("joined", pa.int32(), "images that came into the cluster in the last update", nullable=False),
    column("left", pa.int32(), "images that went out of it in the last update (their batch was removed)",
           nullable=False),
    bookkeeping("centroid", pa.list_(pa.float32()), "mean of the members' unit CLIP vectors, not normalised: "
                "its dot product with an image's vector is that image's average similarity to the members",
                nullable=False),
])

COLLECTION_CLUSTER_LABELS = pa.schema(
    [column("cluster_id", pa.int32(), "the cluster, as in collection_clusters.cluster_id", nullable=False),
     *[f for f in CLUSTER_LABELS if f.name != "cluster_id"]])
