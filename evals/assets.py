"""The eval assets, one partition per batch: the loaded baseline, per-image and cluster scores,
the headline summary, and the HTML report."""

from pathlib import Path

import numpy as np
import pyarrow as pa
from dagster import AssetExecutionContext, AssetKey, AssetRecordsFilter, DagsterInstance, MetadataValue, asset

from assets.parquet_schemas import OK
from assets.random_weights import RANDOM_WEIGHTS_TAG
from resources.partitions import batch_partitions
from evals.baseline import (
    Baseline, Problem, baseline_from_table, baseline_table, find_baseline_file, load_baseline, match_images,
)
from evals.cluster_scoring import ClusteredImage, score_clusters
from evals.metadata_scoring import Answer, ImageToScore, score_images
from evals.report import SECTIONS, ReportInputs, field_bars, png_base64, report_url, write_report
from evals.semantic import SentenceEncoder
from evals.settings import EvalSettings
from evals.summary import fresh_rows, headline_markdown, ok_rows, summarize
from evals.parquet_schemas import EVAL_REPORT, PROBLEM
from resources.settings import PixelsiftSettings

GROUP = "evals"


def _md_list(rows: list[tuple], header: tuple[str, ...], limit: int = 50) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"| … {len(rows) - limit} more |" + " |" * (len(header) - 1))
    return "\n".join(lines)


def _number(value: float | None) -> MetadataValue:
    # Three decimals, as the headline shows it: the UI prints every digit of a float (0.08943890227003708).
    return MetadataValue.text("not measured") if value is None else MetadataValue.float(round(float(value), 3))


def _images(table: pa.Table) -> list[tuple[str, str]]:
    return list(zip(table.column("path").to_pylist(), table.column("image_id").to_pylist()))


@asset(partitions_def=batch_partitions, group_name=GROUP, kinds={"parquet"})
def gemini_baseline(context: AssetExecutionContext, settings: PixelsiftSettings) -> pa.Table:
    """The reference for the batch, `<baselines_dir>/<batch>.jsonl` or `.parquet`, validated line by line.

    Lines that do not load are kept as `problem` rows (line and reason); a missing file
    is one problem row, so the evals still run and every image counts as uncovered."""
    batch = context.partition_key
    directory = Path(settings.baselines_dir)
    file = find_baseline_file(directory, batch)
    if file is None:
        baseline = Baseline(problems=[Problem(0, f"no baseline file {batch}.jsonl or {batch}.parquet in {directory}")])
    else:
        baseline = load_baseline(file)
    context.add_output_metadata({
        "file": MetadataValue.path(str(file)) if file else MetadataValue.text("none"),
        "source": MetadataValue.text(baseline.source or "not stated"),
        "image_records": MetadataValue.int(len(baseline.images)),
        "cluster_records": MetadataValue.int(len(baseline.clusters)),
        "problems": MetadataValue.md(
            _md_list([(p.line, p.reason) for p in baseline.problems], ("line", "reason")) if baseline.problems
            else "none"
        ),
    })
    return baseline_table(baseline)


@asset(partitions_def=batch_partitions, group_name=GROUP, kinds={"parquet"})
def metadata_eval(
    context: AssetExecutionContext,
    images: pa.Table,
    image_metadata: pa.Table,
    gemini_baseline: pa.Table,
    eval_settings: EvalSettings,
    sentence_encoder: SentenceEncoder,
) -> pa.Table:
    """Per image: our metadata scored field by field against its baseline record (uncovered images are listed)."""
    coverage, orphans = match_images(_images(images), baseline_from_table(gemini_baseline))
    ours = {row["path"]: row for row in image_metadata.to_pylist()}
    items = [
        ImageToScore(image_id, path, ours.get(path, {}).get("status", "missing"), coverage[path],
                     Answer.from_metadata_row(ours.get(path, {})))
        for path, image_id in _images(images)
    ]
    table = score_images(items, sentence_encoder, eval_settings)
    uncovered = [(r["path"], r["uncovered_reason"]) for r in table.to_pylist() if not r["covered"]]
    scores = [s for s in table.column("score").to_pylist() if s is not None]
    context.add_output_metadata({
        "covered": MetadataValue.int(len(items) - len(uncovered)),
        "uncovered": MetadataValue.md(_md_list(uncovered, ("image", "why")) if uncovered else "none"),
        "baseline_records_matching_no_image": MetadataValue.int(orphans),
        "mean_score": _number(float(np.mean(scores)) if scores else None),
    })
    return table


@asset(partitions_def=batch_partitions, group_name=GROUP, kinds={"parquet"})
def cluster_eval(
    context: AssetExecutionContext,
    clusters: pa.Table,
    clip_embeddings: pa.Table,
    cluster_labels: pa.Table,
    gemini_baseline: pa.Table,
    eval_settings: EvalSettings,
    sentence_encoder: SentenceEncoder,
) -> pa.Table:
    """Our clusters against the baseline's groups (ARI, NMI), their separation (silhouette), and
    each cluster label against the reference names of its members and the best-matching reference cluster."""
    baseline = baseline_from_table(gemini_baseline)
    coverage, _ = match_images(_images(clusters), baseline)
    vectors = {r["path"]: np.asarray(r["embedding"], dtype=np.float32)
               for r in ok_rows(clip_embeddings).to_pylist() if r["embedding"] is not None}
    clustered = [
        ClusteredImage(r["path"], r["image_id"], int(r["cluster_id"]), vectors.get(r["path"]))
        for r in clusters.to_pylist() if r["status"] == OK and r["cluster_id"] is not None
    ]
    labels = {int(r["cluster_id"]): r for r in cluster_labels.to_pylist()}
    table = score_clusters(clustered, labels, coverage, baseline, sentence_encoder, eval_settings)
    row = table.to_pylist()[0]
    context.add_output_metadata({
        "ari_cluster_name": _number(row["ari_cluster_name"]),
        "nmi_cluster_name": _number(row["nmi_cluster_name"]),
        "silhouette": _number(row["silhouette"]),
        "clusters": MetadataValue.md(_md_list(
            [(c["cluster_id"], c["size"], c["cluster_name"], c["member_name_similarity"], c["reference_cluster_name"])
             for c in row["clusters"]],
            ("id", "size", "label", "similarity to members' reference names", "reference cluster"),
        )),
    })
    return table


@asset(partitions_def=batch_partitions, group_name=GROUP, kinds={"parquet"})
def eval_summary(
    context: AssetExecutionContext,
    metadata_eval: pa.Table,
    cluster_eval: pa.Table,
    gemini_baseline: pa.Table,
    images: pa.Table,
    captions: pa.Table,
    image_metadata: pa.Table,
    color_palettes: pa.Table,
    clip_embeddings: pa.Table,
    cluster_labels: pa.Table,
    eval_settings: EvalSettings,
    sentence_encoder: SentenceEncoder,
) -> pa.Table:
    """One row per batch with every headline figure, and the model ids and settings that produced it."""
    baseline = baseline_from_table(gemini_baseline)
    _, orphans = match_images(_images(images), baseline)
    table = summarize(
        batch=context.partition_key,
        metadata_eval=metadata_eval,
        cluster_eval=cluster_eval,
        stages={"images": images, "captions": captions, "image_metadata": image_metadata,
                "color_palettes": color_palettes, "clip_embeddings": clip_embeddings},
        cluster_labels=cluster_labels,
        baseline_info={
            "baseline_source": baseline.source,
            "baseline_file": None if baseline.file is None else str(baseline.file),
            "baseline_records": len(baseline.images),
            "baseline_problems": len(baseline.problems),
            "baseline_orphans": orphans,
        },
        sentence_model=sentence_encoder.model_id,
        settings=eval_settings,
    )
    summary = table.to_pylist()[0]
    plot = png_base64(field_bars(summary, eval_settings))
    context.add_output_metadata({
        "headline": MetadataValue.md(headline_markdown(summary, eval_settings)),
        "per_field_scores": MetadataValue.md(f"![per-field scores](data:image/png;base64,{plot})"),
        "metadata_accuracy": _number(summary["metadata_accuracy"]),
    })
    return table


MODEL_ASSETS = ("captions", "image_metadata", "clip_embeddings", "cluster_labels")


def random_weight_models(instance: DagsterInstance, batch: str) -> tuple[str, ...]:
    """The random-weight models behind the batch's model outputs: from the tags of the runs that last
    materialized them (``assets/random_weights.py``), whichever way those runs were started."""
    names = set()
    for asset in MODEL_ASSETS:
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[batch]), limit=1).records
        run = instance.get_run_by_id(records[0].run_id) if records else None
        if run is not None:
            names |= {value for tag, value in run.tags.items() if tag.startswith(f"{RANDOM_WEIGHTS_TAG}_")}
    return tuple(sorted(names))


@asset(partitions_def=batch_partitions, group_name=GROUP, kinds={"parquet"})
def eval_report(
    context: AssetExecutionContext,
    eval_summary: pa.Table,
    metadata_eval: pa.Table,
    cluster_eval: pa.Table,
    image_metadata: pa.Table,
    gemini_baseline: pa.Table,
    settings: PixelsiftSettings,
    eval_settings: EvalSettings,
) -> pa.Table:
    """The quality-eval HTML report: `<reports_dir>/<batch>/report.html`, self-contained; its link
    (`report_url`) opens it from the page `pixelsift ui` serves the reports on."""
    batch = context.partition_key
    coverage, _ = match_images(_images(metadata_eval), baseline_from_table(gemini_baseline))
    reference = {path: c.reference.model_dump() for path, c in coverage.items() if c.reference is not None}
    end_to_end = [v / 1000 for v in fresh_rows(image_metadata).column("processing_time_ms").to_pylist()
                  if v is not None]
    inputs = ReportInputs(
        batch=batch,
        summary=eval_summary.to_pylist()[0],
        metadata_eval=metadata_eval.to_pylist(),
        cluster_eval=cluster_eval.to_pylist()[0] if cluster_eval.num_rows else None,
        ours={r["path"]: r for r in image_metadata.to_pylist()},
        reference=reference,
        problems=[(r["line"], r["problem"]) for r in gemini_baseline.to_pylist() if r["record"] == PROBLEM],
        end_to_end_s=end_to_end,
        images_dir=Path(settings.images_root) / batch,
        max_image_pixels=settings.max_image_pixels,
        random_weight_models=random_weight_models(context.instance, batch),
    )
    path = write_report(inputs, eval_settings, Path(settings.reports_dir))
    context.add_output_metadata({
        # One click from the asset page: `pixelsift ui` serves reports_dir at reports_url, so the link
        # also works for a report written by `pixelsift run` once the UI is started.
        "report_url": MetadataValue.url(report_url(settings.reports_url, batch)),
        "report": MetadataValue.path(str(path)),
    })
    return pa.Table.from_pylist(
        [{"batch": batch, "path": str(path), "sections": list(SECTIONS),
          "generated_at": inputs.summary["evaluated_at"]}],
        schema=EVAL_REPORT,
    )


eval_assets = [gemini_baseline, metadata_eval, cluster_eval, eval_summary, eval_report]
