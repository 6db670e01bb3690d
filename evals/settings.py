"""Every threshold and weight of the quality evaluation, in one resource (key ``eval_settings``)."""

from __future__ import annotations

import json

from dagster import ConfigurableResource
from pydantic import Field

# The fields of the headline score, in order: (weight setting, metadata_eval score column).
HEADLINE_FIELDS: list[tuple[str, str]] = [
    ("weight_primary_category", "category_score"),
    ("weight_scene_type", "scene_type_score"),
    ("weight_tags", "tags_semantic_f1"),
    ("weight_detected_objects", "objects_semantic_f1"),
    ("weight_description", "description_score"),
    ("weight_suggested_cluster_name", "cluster_name_score"),
    ("weight_color_palette", "palette_score"),
]


class EvalSettings(ConfigurableResource):
    """Thresholds of the eval checks, the calibrated semantic cut-offs and the headline weights."""

    min_metadata_accuracy: float = Field(
        default=0.90, description="Check: metadata_accuracy must reach this (the migration's acceptance target)."
    )
    max_fallback_rate: float = Field(
        default=0.05, description="Check: at most this share of images may get fallback metadata instead of the LLM's."
    )
    min_json_validity: float = Field(
        default=1.0, description="Check: share of LLM outputs (metadata and cluster labels) that parse and validate."
    )
    max_p95_latency_s: float = Field(
        default=5.0,
        description="Check: 95th percentile of end-to-end seconds per image (decode, caption, palette, LLM).",
    )
    # Reference-free output quality (evals/output_quality.py), checked on every batch.
    max_duplicate_rate: float = Field(
        default=0.2, description="Check: at most this share of the model's outputs may repeat a tag or an object."
    )
    min_tag_grounding: float = Field(
        default=0.3, description="Check: at least this share of the model's tags must share a word with the caption."
    )
    max_option_echo_rate: float = Field(
        default=0.2, description="Check: at most this share of tags may be the prompt's option words, absent from "
        "the caption.",
    )
    max_constant_confidence_rate: float = Field(
        default=0.5, description="Check: at most this share of outputs with several objects may give them all the "
        "same confidence.",
    )
    min_category_entropy: float = Field(
        default=0.1, description="Check (warning): normalised entropy of primary_category over a batch of 8 or more "
        "outputs; 0 means every image got the same category.",
    )
    max_degenerate_caption_rate: float = Field(
        default=0.1, description="Check: at most this share of captions may be empty, wordless, undecodable or a "
        "loop of few words.",
    )
    semantic_match_threshold: float = Field(
        default=0.68,
        description="Two tags or object names match when their sentence-embedding cosine is at least this "
        "(calibrated on labelled term pairs: `pixelsift eval calibrate`).",
    )
    similarity_floor: float = Field(
        default=0.29,
        description="Description and cluster-name cosine at or below this earns 0 (95th percentile of texts about "
        "different photos; calibrated).",
    )
    similarity_ceiling: float = Field(
        default=0.56,
        description="Description and cluster-name cosine at or above this earns 1 (median of two texts about the same "
        "photo; calibrated).",
    )
    palette_max_delta_e: float = Field(
        default=30.0,
        description="A palette whose mean CIEDE2000 to the reference is this or more scores 0; 0 scores 1, linear "
        "between (2.3 is a just noticeable difference; palettes of different photos differ by about 18).",
    )
    weight_primary_category: float = Field(default=0.20, description="Headline weight of primary_category agreement.")
    weight_scene_type: float = Field(default=0.10, description="Headline weight of scene_type agreement.")
    weight_tags: float = Field(default=0.20, description="Headline weight of the tags' semantic F1.")
    weight_detected_objects: float = Field(
        default=0.15, description="Headline weight of detected objects' semantic F1."
    )
    weight_description: float = Field(
        default=0.15, description="Headline weight of the description's similarity score."
    )
    weight_suggested_cluster_name: float = Field(
        default=0.05, description="Headline weight of the suggested cluster name's similarity score."
    )
    weight_color_palette: float = Field(default=0.15, description="Headline weight of the colour palette score.")
    bootstrap_samples: int = Field(default=1000, description="Bootstrap resamples for confidence intervals.")
    bootstrap_seed: int = Field(default=0, description="Seed of the bootstrap, so intervals are reproducible.")
    confidence: float = Field(default=0.95, description="Coverage of the confidence intervals.")
    silhouette_max_images: int = Field(
        default=5000, description="Silhouette is computed on a seeded sample of at most this many images (O(n^2))."
    )
    report_worst_images: int = Field(default=10, description="How many lowest-scoring images the HTML report shows.")

    def weights(self) -> dict[str, float]:
        """metadata_eval score column -> weight, normalised to sum to 1."""
        raw = {column: float(getattr(self, setting)) for setting, column in HEADLINE_FIELDS}
        if any(w < 0 for w in raw.values()) or sum(raw.values()) <= 0:
            raise ValueError(f"headline weights must be non-negative and not all zero, got {raw}")
        total = sum(raw.values())
        return {column: w / total for column, w in raw.items()}

    def to_json(self) -> str:
        return json.dumps({name: getattr(self, name) for name in type(self).model_fields}, sort_keys=True)
