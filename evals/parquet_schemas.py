"""The explicit pyarrow schema of every eval asset's Parquet file, with what each column means.

Each column's description travels in the field's metadata, as in ``assets.parquet_schemas``: the
warehouse shows it in the Dagster UI's column schema, and the column reference of
docs/evaluation.md is generated from it (``python -m evals.column_reference``).
"""

from __future__ import annotations

import pyarrow as pa

from assets.parquet_schemas import DETECTED_OBJECT
from resources.warehouse import column, column_description

# Record kinds in the loaded baseline. A "problem" row is a line that did not load, with why.
IMAGE, CLUSTER, PROBLEM = "image", "cluster", "problem"

_FOR_IMAGES = "image records only"
_FOR_CLUSTERS = "cluster records only"

GEMINI_BASELINE = pa.schema(
    [
        column("record", pa.string(), "'image', 'cluster', or 'problem' (a line that did not load)", nullable=False),
        column("line", pa.int32(),
               "line of the JSON Lines file, or row of the Parquet file (1-based; 0: the whole file)"),
        column("path", pa.string(), f"the image, relative to the batch folder ({_FOR_IMAGES})"),
        column("sha256", pa.string(), f"sha256 of the labelled file's bytes ({_FOR_IMAGES})"),
        column("primary_category", pa.string(), "the reference's category for the image, or the cluster's"),
        column("tags", pa.list_(pa.string()), "the reference's tags for the image, or the cluster's"),
        column("description", pa.string(), "the reference's description of the image, or of the cluster"),
        column("detected_objects", pa.list_(DETECTED_OBJECT),
               f"objects the reference names, with confidence ({_FOR_IMAGES})"),
        column("scene_type", pa.string(), f"the reference's scene type ({_FOR_IMAGES})"),
        column("color_palette", pa.list_(pa.string()),
               f"'#RRGGBB' colours; colour names are converted on load ({_FOR_IMAGES})"),
        column("suggested_cluster_name", pa.string(),
               f"the group name the reference suggests for the image ({_FOR_IMAGES})"),
        column("vlm_model", pa.string(), f"the model (or person) that produced the reference record ({_FOR_IMAGES})"),
        column("cluster_name", pa.string(), f"the reference cluster's name ({_FOR_CLUSTERS})"),
        column("members", pa.list_(pa.string()),
               f"the reference cluster's images, by path or sha256 ({_FOR_CLUSTERS})"),
        column("problem", pa.string(), "why the line did not load (problem rows only)"),
        column("source", pa.string(), "what the file says it is, e.g. 'hand-written reference' (its source record)"),
        column("file", pa.string(), "the reference file loaded; empty when the batch has none"),
    ]
)

_PRF = ["precision", "recall", "f1"]
_PRF_MEANING = {
    "precision": "share of our {what} that match a reference one",
    "recall": "share of the reference's {what} that ours match",
    "f1": "harmonic mean of precision and recall",
}
_MATCH = {
    "exact": "equal normalised terms match",
    "semantic": "terms match one-to-one when their embedding cosine reaches semantic_match_threshold",
}


def _prf_fields(prefix: str, what: str) -> list[pa.Field]:
    return [column(f"{prefix}_{kind}_{m}", pa.float64(), f"{_PRF_MEANING[m].format(what=what)}; {_MATCH[kind]}")
            for kind in ("exact", "semantic") for m in _PRF]


METADATA_EVAL = pa.schema(
    [
        column("image_id", pa.string(), "sha256 of the file's bytes", nullable=False),
        column("path", pa.string(), "the image, relative to the batch folder", nullable=False),
        column("status", pa.string(),
               "our pipeline's status for the image: 'ok', or 'error' (it scores 0 when covered)",
               nullable=False),
        column("covered", pa.bool_(), "a reference record applies to this image, so it is scored", nullable=False),
        column("matched_by", pa.string(), "how the reference record was found: 'path' or 'sha256'"),
        column("uncovered_reason", pa.string(), "why no reference record applies, e.g. 'no baseline record'"),
        column("category_reference", pa.string(), "the reference's primary_category, normalised onto our vocabulary"),
        column("category_ours", pa.string(), "our primary_category, normalised"),
        column("category_score", pa.float64(), "1 when the two categories agree, else 0"),
        column("scene_type_reference", pa.string(), "the reference's scene_type, normalised onto our vocabulary"),
        column("scene_type_ours", pa.string(), "our scene_type, normalised"),
        column("scene_type_score", pa.float64(), "1 when the two scene types agree, else 0"),
        *_prf_fields("tags", "tags"),
        *_prf_fields("objects", "detected object names"),
        column("description_similarity", pa.float64(),
               "cosine of the sentence embeddings of our and the reference description"),
        column("description_score", pa.float64(),
               "description_similarity through the calibrated ramp (0 at similarity_floor, 1 at similarity_ceiling)"),
        column("cluster_name_similarity", pa.float64(), "cosine of our and the reference suggested_cluster_name"),
        column("cluster_name_score", pa.float64(), "cluster_name_similarity through the calibrated ramp"),
        column("palette_delta_e", pa.float64(),
               "mean CIEDE2000 difference of the palettes' colours after optimal matching"),
        column("palette_score", pa.float64(), "max(0, 1 - palette_delta_e / palette_max_delta_e)"),
        column("score", pa.float64(),
               "weighted mean of the field scores the reference has (the per-image figure behind metadata_accuracy)"),
    ]
)

_FOR_LABELS = "when the baseline has cluster records"

CLUSTER_DETAIL = pa.struct(
    [
        column("cluster_id", pa.int32(), "our cluster's id"),
        column("size", pa.int32(), "images in our cluster"),
        column("cluster_name", pa.string(), "our cluster label's name"),
        column("member_name_similarity", pa.float64(),
               "mean cosine between our cluster name and each member's reference suggested_cluster_name"),
        column("reference_cluster_name", pa.string(),
               f"the reference cluster sharing most members (Jaccard), {_FOR_LABELS}"),
        column("reference_overlap", pa.float64(), "Jaccard overlap of our members with that reference cluster's"),
        column("name_similarity", pa.float64(), "cosine between our cluster name and the reference cluster's"),
        column("description_similarity", pa.float64(),
               "cosine between our label's description and the reference cluster's"),
        column("tags_semantic_f1", pa.float64(), "semantic F1 of our label's tags against the reference cluster's"),
        column("category_score", pa.float64(),
               "1 when our label's category agrees with the reference cluster's, else 0"),
    ]
)

CLUSTER_EVAL = pa.schema(
    [
        column("n_images", pa.int32(), "images with a cluster assignment (status ok)"),
        column("n_clusters", pa.int32(), "our clusters, noise left out"),
        column("noise_share", pa.float64(), "share of those images left as noise (cluster -1)"),
        column("n_compared", pa.int32(), "of those, images with a reference suggested_cluster_name"),
        column("ari_cluster_name", pa.float64(),
               "adjusted Rand index of our clusters against the groups sharing a reference suggested_cluster_name"),
        column("nmi_cluster_name", pa.float64(), "normalised mutual information, same comparison"),
        column("ari_category", pa.float64(),
               "adjusted Rand index of our clusters against the reference primary_category"),
        column("nmi_category", pa.float64(), "normalised mutual information, same comparison"),
        column("silhouette", pa.float64(),
               "mean silhouette of our clusters on the CLIP embeddings, cosine distance, noise left out"),
        column("label_member_similarity", pa.float64(), "mean over clusters of member_name_similarity"),
        column("label_name_similarity", pa.float64(), f"mean over clusters of name_similarity ({_FOR_LABELS})"),
        column("label_description_similarity", pa.float64(),
               f"mean over clusters of description_similarity ({_FOR_LABELS})"),
        column("label_tags_f1", pa.float64(), f"mean over clusters of tags_semantic_f1 ({_FOR_LABELS})"),
        column("label_category_score", pa.float64(), f"mean over clusters of category_score ({_FOR_LABELS})"),
        column("clusters", pa.list_(CLUSTER_DETAIL), "one entry per cluster: its label against the reference"),
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


def _field_mean(name: str, source: str) -> pa.Field:
    meaning = column_description(METADATA_EVAL.field(source))
    return column(name, pa.float64(), f"mean over covered images of metadata_eval.{source}: {meaning}")


def _latency(stage: str, asset: str, source: str, q: int) -> pa.Field:
    return column(f"{stage}_p{q}_ms", pa.float64(),
                  f"p{q} of {asset}.{source}, milliseconds per image, over images computed in this run")


_FROM_CLUSTER_EVAL = "as in cluster_eval"

EVAL_SUMMARY = pa.schema(
    [
        column("batch", pa.string(), "the batch evaluated", nullable=False),
        column("evaluated_at", pa.timestamp("s", tz="UTC"), "when these figures were computed"),
        column("baseline_source", pa.string(), "what the reference file says it is (its source record)"),
        column("baseline_file", pa.string(), "the reference file used; empty when the batch has none"),
        column("baseline_records", pa.int32(), "image records loaded from the reference file"),
        column("baseline_problems", pa.int32(), "lines of the reference file that did not load (or 1: no file)"),
        column("baseline_orphans", pa.int32(), "image records matching no image of the batch"),
        column("n_images", pa.int32(), "images in the batch"),
        column("n_covered", pa.int32(), "images a reference record applies to (scored)"),
        column("n_uncovered", pa.int32(), "images without a reference record (listed in metadata_eval, not scored)"),
        column("metadata_accuracy", pa.float64(),
               "the headline: mean per-image score over covered images (target: min_metadata_accuracy)"),
        column("metadata_accuracy_ci_low", pa.float64(), "lower end of its percentile-bootstrap confidence interval"),
        column("metadata_accuracy_ci_high", pa.float64(), "upper end of that interval"),
        column("category_kappa", pa.float64(), "Cohen's kappa of primary_category against the reference (empty when "
               "both sides use one label)"),
        column("scene_type_kappa", pa.float64(), "Cohen's kappa of scene_type against the reference"),
        *[_field_mean(name, source) for name, source in FIELD_MEANS],
        column("ari_cluster_name", pa.float64(), f"adjusted Rand index vs reference names, {_FROM_CLUSTER_EVAL}"),
        column("nmi_cluster_name", pa.float64(),
               f"normalised mutual information vs reference names, {_FROM_CLUSTER_EVAL}"),
        column("ari_category", pa.float64(), f"adjusted Rand index vs reference categories, {_FROM_CLUSTER_EVAL}"),
        column("nmi_category", pa.float64(),
               f"normalised mutual information vs reference categories, {_FROM_CLUSTER_EVAL}"),
        column("silhouette", pa.float64(), f"silhouette of our clusters, {_FROM_CLUSTER_EVAL}"),
        column("n_clusters", pa.int32(), f"our clusters, noise left out, {_FROM_CLUSTER_EVAL}"),
        column("label_member_similarity", pa.float64(),
               f"cluster names against their members' reference names, {_FROM_CLUSTER_EVAL}"),
        column("label_name_similarity", pa.float64(),
               f"cluster names against the best-matching reference cluster's, {_FROM_CLUSTER_EVAL}"),
        *[_latency(stage, asset, source, q) for stage, asset, source in LATENCY_STAGES for q in (50, 95)],
        column("cluster_label_p50_ms", pa.float64(), "p50 of cluster_labels.llm_ms over labels made in this run"),
        column("cluster_label_p95_ms", pa.float64(), "p95 of cluster_labels.llm_ms over labels made in this run"),
        column("images_per_second", pa.float64(), "1000 / mean end-to-end milliseconds of the timed images"),
        column("timed_images", pa.int32(),
               "images whose metadata was computed in this run: the latency figures rest on these"),
        column("reused_images", pa.int32(),
               "images whose metadata was reused from an earlier run: not timed, as their times are old"),
        column("json_validity", pa.float64(),
               "share of LLM outputs (image metadata and cluster labels) that parsed and validated against "
               "their schema"),
        column("n_llm_outputs", pa.int32(), "LLM outputs json_validity and fallback_rate are shares of"),
        column("fallback_rate", pa.float64(), "share of LLM outputs replaced by the rule-based fallback"),
        column("error_rate", pa.float64(), "share of images without metadata (status error)"),
        column("n_model_outputs", pa.int32(),
               "image metadata written by the model itself (json_valid): the quality figures below are shares of these"),
        column("duplicate_rate", pa.float64(), "share of the model's outputs that repeated a tag or an object "
               "(dropped after validation: image_metadata.duplicates_removed)"),
        column("tag_grounding", pa.float64(), "share of the model's tags with a word (singular or plural) in the "
               "image's caption"),
        column("option_echo_rate", pa.float64(), "share of the model's tags made of the prompt's option words "
               "(categories, scene types) that the caption does not contain"),
        column("constant_confidence_rate", pa.float64(),
               "share of outputs with two or more objects that gave them all the same confidence"),
        column("category_entropy", pa.float64(), "Shannon entropy of primary_category over the model's outputs, "
               "divided by its maximum: 0 = one category for every image (empty under 8 outputs)"),
        column("degenerate_caption_rate", pa.float64(), "share of the batch's captions that are empty, have no words, "
               "are mostly undecodable or loop over few words"),
        column("caption_model", pa.string(), "captioning model(s) of the batch's captions, most used first"),
        column("metadata_model", pa.string(), "vlm_model(s) of the batch's metadata, most used first"),
        column("clip_model", pa.string(), "CLIP model(s) of the embeddings the clusters rest on"),
        column("cluster_label_model", pa.string(), "model(s) that named the clusters"),
        column("caption_fingerprint", pa.string(), "fingerprint(s) of the captions: model, settings and prompt"),
        column("metadata_fingerprint", pa.string(),
               "fingerprint(s) of the metadata: model, settings, prompt, decoding"),
        column("sentence_model", pa.string(), "the sentence-embedding model of the semantic comparisons"),
        column("eval_settings", pa.string(),
               "JSON of the EvalSettings (thresholds, weights) that produced these figures"),
    ]
)

EVAL_REPORT = pa.schema(
    [
        column("batch", pa.string(), "the batch reported on", nullable=False),
        column("path", pa.string(), "where the HTML report was written", nullable=False),
        column("sections", pa.list_(pa.string()), "the report's sections, in order"),
        column("generated_at", pa.timestamp("s", tz="UTC"), "when the figures it shows were computed"),
    ]
)

# Every eval asset's schema, by asset name, in the order data moves through them.
EVAL_SCHEMAS: dict[str, pa.Schema] = {
    "gemini_baseline": GEMINI_BASELINE,
    "metadata_eval": METADATA_EVAL,
    "cluster_eval": CLUSTER_EVAL,
    "eval_summary": EVAL_SUMMARY,
    "eval_report": EVAL_REPORT,
}
