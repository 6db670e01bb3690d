"""One row of headline figures per batch: accuracy, agreement, latency, validity, and what produced them."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from assets.parquet_schemas import OK
from evals.metrics import bootstrap_mean_ci, cohen_kappa, percentiles
from evals.output_quality import quality_figures
from evals.settings import EvalSettings
from evals.parquet_schemas import EVAL_SUMMARY, FIELD_MEANS, LATENCY_STAGES


def _column(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def _mean(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(present)) if present else None


def _none_if_nan(value: float) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def _models(table: pa.Table, column: str) -> str | None:
    """The model ids in a column, most used first (several when results were reused across versions)."""
    counts = Counter(v for v in _column(table, column) if v)
    return ", ".join(v for v, _ in counts.most_common()) or None


def ok_rows(table: pa.Table) -> pa.Table:
    return table.filter(pc.equal(table.column("status"), OK))


def fresh_rows(table: pa.Table) -> pa.Table:
    """Rows computed in their own run: status ok and not reused from an earlier one (whose timing is old)."""
    ok = ok_rows(table)
    if "reused" not in ok.column_names:
        return ok
    return ok.filter(pc.invert(pc.fill_null(ok.column("reused"), False)))


def latency_figures(stages: dict[str, pa.Table], cluster_labels: pa.Table) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for prefix, asset, column in LATENCY_STAGES:
        values = _column(fresh_rows(stages[asset]), column)
        p50, p95 = percentiles([np.nan if v is None else v for v in values])
        out[f"{prefix}_p50_ms"], out[f"{prefix}_p95_ms"] = _none_if_nan(p50), _none_if_nan(p95)
    fresh_labels = [
        ms for ms, reused in zip(_column(cluster_labels, "llm_ms"), _column(cluster_labels, "reused"))
        if ms is not None and not reused
    ]
    p50, p95 = percentiles(fresh_labels)
    out["cluster_label_p50_ms"], out["cluster_label_p95_ms"] = _none_if_nan(p50), _none_if_nan(p95)
    end_to_end = [v for v in _column(fresh_rows(stages["image_metadata"]), "processing_time_ms") if v is not None]
    out["timed_images"] = len(end_to_end)
    # Said apart from failures, so a check can tell "all reused" (nothing to time) from "all failed".
    out["reused_images"] = sum(bool(v) for v in _column(ok_rows(stages["image_metadata"]), "reused"))
    out["images_per_second"] = 1000.0 / float(np.mean(end_to_end)) if end_to_end and np.mean(end_to_end) > 0 else None
    return out


def validity_figures(image_metadata: pa.Table, cluster_labels: pa.Table) -> dict[str, Any]:
    """JSON validity and fallback rate over every LLM output: image metadata (ok rows) and cluster labels."""
    metadata_ok = ok_rows(image_metadata)
    outputs = [metadata_ok, cluster_labels]
    valid = [v for t in outputs for v in _column(t, "json_valid") if v is not None]
    fallback = [bool(v) for t in outputs for v in _column(t, "fallback_used") if v is not None]
    n = image_metadata.num_rows
    return {
        "json_validity": sum(valid) / len(valid) if valid else None,
        "n_llm_outputs": len(valid),
        "fallback_rate": sum(fallback) / len(fallback) if fallback else None,
        "error_rate": (n - metadata_ok.num_rows) / n if n else None,
    }


def accuracy_figures(metadata_eval: pa.Table, settings: EvalSettings) -> dict[str, Any]:
    covered = metadata_eval.filter(metadata_eval.column("covered")).to_pylist()
    scores = [r["score"] for r in covered if r["score"] is not None]
    low, high = bootstrap_mean_ci(scores, settings.bootstrap_samples, settings.bootstrap_seed, settings.confidence)
    out: dict[str, Any] = {
        "n_images": metadata_eval.num_rows,
        "n_covered": len(covered),
        "n_uncovered": metadata_eval.num_rows - len(covered),
        "metadata_accuracy": _mean(scores),
        "metadata_accuracy_ci_low": _none_if_nan(low),
        "metadata_accuracy_ci_high": _none_if_nan(high),
    }
    for field in ("category", "scene_type"):
        pairs = [(r[f"{field}_reference"], r[f"{field}_ours"]) for r in covered if r[f"{field}_reference"]]
        out[f"{field}_kappa"] = _none_if_nan(cohen_kappa([t for t, _ in pairs], [p for _, p in pairs]))
    for name, column in FIELD_MEANS:
        out[name] = _mean([r[column] for r in covered])
    return out


CLUSTER_FIGURES = ("ari_cluster_name", "nmi_cluster_name", "ari_category", "nmi_category", "silhouette",
                   "n_clusters", "label_member_similarity", "label_name_similarity")


def summarize(
    *,
    batch: str,
    metadata_eval: pa.Table,
    cluster_eval: pa.Table,
    stages: dict[str, pa.Table],
    cluster_labels: pa.Table,
    baseline_info: dict[str, Any],
    sentence_model: str,
    settings: EvalSettings,
) -> pa.Table:
    """The one-row ``eval_summary``. ``stages`` holds the per-image pipeline tables by asset name;
    ``baseline_info`` the baseline_* columns."""
    image_metadata = stages["image_metadata"]
    cluster_row = cluster_eval.to_pylist()[0] if cluster_eval.num_rows else {}
    row = {
        "batch": batch,
        "evaluated_at": datetime.now(timezone.utc).replace(microsecond=0),
        **baseline_info,
        **accuracy_figures(metadata_eval, settings),
        **{name: cluster_row.get(name) for name in CLUSTER_FIGURES},
        **latency_figures(stages, cluster_labels),
        **validity_figures(image_metadata, cluster_labels),
        **quality_figures(image_metadata.to_pylist(), stages["captions"].to_pylist()),
        "caption_model": _models(stages["captions"], "model_id"),
        "metadata_model": _models(image_metadata, "vlm_model"),
        "clip_model": _models(stages["clip_embeddings"], "model_id"),
        "cluster_label_model": _models(cluster_labels, "vlm_model"),
        "caption_fingerprint": _models(stages["captions"], "fingerprint"),
        "metadata_fingerprint": _models(image_metadata, "fingerprint"),
        "sentence_model": sentence_model,
        "eval_settings": settings.to_json(),
    }
    return pa.Table.from_pylist([row], schema=EVAL_SUMMARY)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def headline_rows(s: dict[str, Any], settings: EvalSettings) -> list[tuple[str, str, str]]:
    """(figure, value, target) for the summary tables of the UI and the report."""
    ci = f" (95% CI {_fmt(s['metadata_accuracy_ci_low'])}–{_fmt(s['metadata_accuracy_ci_high'])})"
    seconds = lambda ms: None if ms is None else ms / 1000  # noqa: E731
    return [
        ("metadata_accuracy", _fmt(s["metadata_accuracy"]) + (ci if s["metadata_accuracy"] is not None else ""),
         f"≥ {settings.min_metadata_accuracy:.2f}"),
        ("images covered by the baseline", f"{s['n_covered']} of {s['n_images']}", ""),
        ("primary_category accuracy / kappa", f"{_fmt(s['category_accuracy'])} / {_fmt(s['category_kappa'])}", ""),
        ("scene_type accuracy / kappa", f"{_fmt(s['scene_type_accuracy'])} / {_fmt(s['scene_type_kappa'])}", ""),
        ("tags F1 exact / semantic", f"{_fmt(s['tags_exact_f1'])} / {_fmt(s['tags_semantic_f1'])}", ""),
        ("detected objects F1 exact / semantic",
         f"{_fmt(s['objects_exact_f1'])} / {_fmt(s['objects_semantic_f1'])}", ""),
        ("description similarity (score)", f"{_fmt(s['description_similarity'])} ({_fmt(s['description_score'])})", ""),
        ("cluster name similarity (score)",
         f"{_fmt(s['cluster_name_similarity'])} ({_fmt(s['cluster_name_score'])})", ""),
        ("palette CIEDE2000 (score)", f"{_fmt(s['palette_delta_e'], 1)} ({_fmt(s['palette_score'])})", ""),
        ("clusters: ARI / NMI vs reference names",
         f"{_fmt(s['ari_cluster_name'])} / {_fmt(s['nmi_cluster_name'])}", ""),
        ("clusters: ARI / NMI vs reference categories", f"{_fmt(s['ari_category'])} / {_fmt(s['nmi_category'])}", ""),
        ("clusters: silhouette (count)", f"{_fmt(s['silhouette'])} ({_fmt(s['n_clusters'])})", ""),
        ("cluster label ~ members' reference names", _fmt(s["label_member_similarity"]), ""),
        ("end-to-end s per image p50 / p95",
         f"{_fmt(seconds(s['end_to_end_p50_ms']), 2)} / {_fmt(seconds(s['end_to_end_p95_ms']), 2)}",
         f"p95 ≤ {settings.max_p95_latency_s:g}"),
        ("images per second", _fmt(s["images_per_second"], 2), ""),
        ("schema-valid LLM outputs", _fmt(s["json_validity"]), f"≥ {settings.min_json_validity:g}"),
        ("fallback rate", _fmt(s["fallback_rate"]), f"≤ {settings.max_fallback_rate:g}"),
        ("repeated tags or objects (share of outputs)", _fmt(s["duplicate_rate"]),
         f"≤ {settings.max_duplicate_rate:g}"),
        ("tags grounded in the caption", _fmt(s["tag_grounding"]), f"≥ {settings.min_tag_grounding:g}"),
        ("tags echoing the prompt's options", _fmt(s["option_echo_rate"]), f"≤ {settings.max_option_echo_rate:g}"),
        ("outputs with one confidence for all objects", _fmt(s["constant_confidence_rate"]),
         f"≤ {settings.max_constant_confidence_rate:g}"),
        ("category entropy", _fmt(s["category_entropy"]), f"≥ {settings.min_category_entropy:g}"),
        ("degenerate captions", _fmt(s["degenerate_caption_rate"]), f"≤ {settings.max_degenerate_caption_rate:g}"),
        ("models", f"captions {s['caption_model']}; metadata {s['metadata_model']}; clip {s['clip_model']}", ""),
        ("baseline", f"{s['baseline_source']} ({_fmt(s['baseline_records'])} records, "
                     f"{_fmt(s['baseline_problems'])} problems)", ""),
    ]


def headline_markdown(summary: dict[str, Any], settings: EvalSettings) -> str:
    lines = ["| figure | value | target |", "|---|---|---|"]
    lines += [f"| {f} | {v.replace('|', '/')} | {t} |" for f, v, t in headline_rows(summary, settings)]
    return "\n".join(lines)
