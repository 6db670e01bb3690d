"""The eval assets, checks and report through Dagster, on pipeline tables written by hand.

Three sample photos: one answered exactly as the reference, one with a planted wrong
category, and one whose file our pipeline could not read; plus a photo with no
baseline record. Every figure below follows from those choices.
"""

import base64
import io
import json
import re
import shutil
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from dagster import AssetCheckSeverity, AssetSpec, DagsterInstance, UrlMetadataValue, materialize
from PIL import Image

from assets import parquet_schemas as tables
from assets.parquet_schemas import DETECTED_OBJECT
from benchmarks.ports import free_port
from dagster_project.report_server import serve_reports
from resources.partitions import batch_partitions
from evals.baseline import load_baseline
from evals.checks import THRESHOLDS, evaluate
from evals.cli import eval_group
from evals.compare import Run, compare_runs
from evals.definitions import eval_asset_checks, eval_assets, eval_resources
from evals.parquet_schemas import EVAL_SCHEMAS
from evals.report import REPORT_FILE, SECTIONS, thumbnail_base64
from evals.settings import EvalSettings
from resources.settings import PixelsiftSettings
from resources.warehouse import ParquetWarehouse, column_description, partition_file, read_table, write_table
from tests.conftest import exif_rotated_jpeg

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "images" / "sample"
BATCH = "evalcheck"
UPSTREAM = ["images", "captions", "image_metadata", "color_palettes", "clip_embeddings", "clusters", "cluster_labels"]
# path -> end-to-end ms; decode/caption/palette/llm split it 10/50/10/30 %.
TIMES = {"chelsea.png": 1000.0, "coffee.png": 3000.0, "rocket.jpg": 2000.0}
REFERENCE = {r.path: r for _, r in load_baseline(ROOT / "data" / "baselines" / "sample.jsonl").images}


def key(path, ok=True, error=None):
    return {"image_id": REFERENCE[path].sha256 if path in REFERENCE else "f" * 64, "path": path,
            "status": "ok" if ok else "error", "error": error}


def metadata_row(path, **changes):
    ref = REFERENCE[path]
    row = {**key(path), "primary_category": ref.primary_category, "tags": ref.tags, "description": ref.description,
           "detected_objects": [o.model_dump() for o in ref.detected_objects], "scene_type": ref.scene_type,
           "color_palette": ref.color_palette, "suggested_cluster_name": ref.suggested_cluster_name,
           "vlm_model": "test-captioner + test-llm", "fallback_used": False, "json_valid": True,
           "llm_ms": 0.3 * TIMES.get(path, 0.0), "processing_time_ms": TIMES.get(path), "fingerprint": "fp",
           "reused": False}
    return row | changes


def pipeline_tables(category_of_coffee="objects", rerun=False):
    """Our pipeline's outputs for the batch: chelsea exact, coffee's category planted wrong,
    rocket unreadable by us, grass answered but absent from the baseline file.
    ``rerun``: the batch run again unchanged, so every model result is reused from the first run."""
    paths = ["chelsea.png", "coffee.png", "grass.png", "rocket.jpg"]
    ok = [p for p in paths if p != "rocket.jpg"]
    failed = key("rocket.jpg", ok=False, error="cannot decode")
    grass = metadata_row("grass.png", llm_ms=None, processing_time_ms=None, reused=True)
    chelsea, coffee = metadata_row("chelsea.png", reused=rerun), metadata_row(
        "coffee.png", primary_category=category_of_coffee, reused=rerun)
    ms = lambda p, share: share * TIMES.get(p, 0.0)  # noqa: E731
    vectors = {"chelsea.png": [1.0, 0.0], "coffee.png": [0.0, 1.0], "grass.png": [0.1, 1.0]}
    return {
        "images": pa.Table.from_pylist(
            [{**key(p), "bytes": 1, "ms": ms(p, 0.1)} for p in ok] + [{**failed, "bytes": 1}], schema=tables.IMAGES),
        "captions": pa.Table.from_pylist(
            [{**key(p), "caption": "c", "model_id": "test-captioner", "ms": ms(p, 0.5), "fingerprint": "cfp",
              "reused": False} for p in ok] + [failed], schema=tables.CAPTIONS),
        "color_palettes": pa.Table.from_pylist(
            [{**key(p), "colors": ["#000000"], "shares": [1.0], "ms": ms(p, 0.1)} for p in ok] + [failed],
            schema=tables.COLOR_PALETTES),
        "image_metadata": pa.Table.from_pylist(
            [chelsea, coffee, grass, failed], schema=tables.IMAGE_METADATA),
        "clip_embeddings": pa.Table.from_pylist(
            [{**key(p), "embedding": vectors[p], "model_id": "test-clip", "ms": 5.0, "reused": False} for p in ok]
            + [failed], schema=tables.clip_embeddings_schema(2)),
        "clusters": pa.Table.from_pylist(
            [{**key("chelsea.png"), "cluster_id": -1}, {**key("coffee.png"), "cluster_id": 0},
             {**key("grass.png"), "cluster_id": 0}, failed], schema=tables.CLUSTERS),
        "cluster_labels": pa.Table.from_pylist(
            [{"cluster_id": 0, "cluster_name": "Coffee Moments", "description": "Cups of coffee.",
              "tags": ["coffee", "cup"], "primary_category": "food", "vlm_model": "test-llm", "fallback_used": False,
              "json_valid": True, "llm_ms": 700.0, "reused": rerun}], schema=tables.CLUSTER_LABELS),
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evals")
    batch_dir = root / "images" / BATCH
    batch_dir.mkdir(parents=True)
    for name in ("chelsea.png", "coffee.png", "grass.png"):
        shutil.copy(SAMPLE / name, batch_dir / name)
    baselines = root / "baselines"
    baselines.mkdir()
    lines = (ROOT / "data" / "baselines" / "sample.jsonl").read_text().splitlines()
    keep = [line for line in lines if '"record": "source"' in line or any(
        f'"path": "{p}"' in line for p in ("chelsea.png", "coffee.png", "rocket.jpg"))]
    (baselines / f"{BATCH}.jsonl").write_text("\n".join(keep + ["{broken"]) + "\n")
    return root


def run_evals(workspace: Path, warehouse: str, eval_settings: EvalSettings | None = None,
              baselines: str = "baselines", **table_options):
    root = workspace / warehouse
    for asset, table in pipeline_tables(**table_options).items():
        write_table(table, partition_file(root, asset, BATCH))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(batch_partitions.name, [BATCH])
    settings = PixelsiftSettings(images_root=str(workspace / "images"), warehouse_dir=str(root),
                                 baselines_dir=str(workspace / baselines),
                                 reports_dir=str(workspace / "reports" / warehouse))  # one report per run
    resources = {**eval_resources(), "settings": settings, "io_manager": ParquetWarehouse(root=str(root))}
    if eval_settings is not None:
        resources["eval_settings"] = eval_settings
    result = materialize([*(AssetSpec(a, partitions_def=batch_partitions) for a in UPSTREAM), *eval_assets,
                          *eval_asset_checks], partition_key=BATCH, instance=instance, resources=resources)
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    out = {asset: read_table(partition_file(root, asset, BATCH)).to_pylist()
           for asset in ("gemini_baseline", "metadata_eval", "cluster_eval", "eval_summary", "eval_report")}
    return out, checks, result


@pytest.fixture(scope="module")
def default_run(workspace):
    return run_evals(workspace, "warehouse")


def test_metadata_eval_rows(default_run):
    rows = {r["path"]: r for r in default_run[0]["metadata_eval"]}
    assert rows["chelsea.png"]["score"] == pytest.approx(1.0)
    coffee = rows["coffee.png"]
    assert (coffee["category_reference"], coffee["category_ours"], coffee["category_score"]) == ("food", "objects", 0.0)
    assert coffee["score"] == pytest.approx(0.8)  # everything else agrees; category weighs 0.2
    assert rows["rocket.jpg"]["status"] == "error" and rows["rocket.jpg"]["score"] == 0.0
    assert (rows["grass.png"]["covered"], rows["grass.png"]["uncovered_reason"]) == (False, "no baseline record")


def test_eval_summary_figures(default_run):
    summary = default_run[0]["eval_summary"][0]
    assert (summary["n_images"], summary["n_covered"], summary["n_uncovered"]) == (4, 3, 1)
    assert summary["metadata_accuracy"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)
    assert summary["metadata_accuracy_ci_low"] <= summary["metadata_accuracy"] <= summary["metadata_accuracy_ci_high"]
    assert summary["category_accuracy"] == pytest.approx(1 / 3)
    assert (summary["baseline_source"], summary["baseline_records"], summary["baseline_problems"]) == (
        "hand-written reference", 3, 1)
    # Timed images: chelsea and coffee (grass reused, rocket failed). p95 of [1000, 3000] = 2900.
    assert summary["timed_images"] == 2
    assert summary["end_to_end_p50_ms"] == pytest.approx(2000.0)
    assert summary["end_to_end_p95_ms"] == pytest.approx(2900.0)
    assert summary["llm_p50_ms"] == pytest.approx(600.0)
    assert summary["images_per_second"] == pytest.approx(0.5)
    assert summary["cluster_label_p50_ms"] == pytest.approx(700.0)
    # LLM outputs: three image records with metadata and one cluster label, all valid, none a fallback.
    assert (summary["json_validity"], summary["n_llm_outputs"], summary["fallback_rate"]) == (1.0, 4, 0.0)
    assert summary["error_rate"] == pytest.approx(0.25)
    assert summary["metadata_model"] == "test-captioner + test-llm"
    assert json.loads(summary["eval_settings"])["min_metadata_accuracy"] == 0.9


def test_cluster_eval(default_run):
    row = default_run[0]["cluster_eval"][0]
    assert (row["n_images"], row["n_clusters"], row["noise_share"]) == (3, 1, pytest.approx(1 / 3))
    (cluster,) = row["clusters"]
    assert cluster["cluster_name"] == "Coffee Moments"
    assert cluster["member_name_similarity"] == pytest.approx(1.0, abs=1e-5)  # coffee's reference name; grass has none


def test_checks_show_the_figures(default_run):
    checks = default_run[1]
    assert set(checks) == {t.check for t in THRESHOLDS} | {"baseline_loads_cleanly"}
    accuracy = checks["metadata_accuracy_meets_target"]
    assert not accuracy.passed and accuracy.severity == AssetCheckSeverity.ERROR  # a measured miss stays red
    assert accuracy.metadata["measured"].value is True
    assert accuracy.metadata["value"].value == pytest.approx(0.6)
    assert "< min_metadata_accuracy = 0.9" in accuracy.description
    assert checks["p95_latency_within_limit"].passed  # 2.9 s
    assert checks["llm_outputs_schema_valid"].passed and checks["fallback_rate_within_limit"].passed
    baseline = checks["baseline_loads_cleanly"]
    assert not baseline.passed and baseline.severity == AssetCheckSeverity.WARN
    assert "invalid JSON" in baseline.metadata["lines"].value


def test_checks_fail_when_a_threshold_is_missed_and_pass_when_met(workspace):
    strict = EvalSettings(min_metadata_accuracy=0.5, max_p95_latency_s=2.0)
    _, checks, _ = run_evals(workspace, "warehouse-strict", eval_settings=strict)
    assert checks["metadata_accuracy_meets_target"].passed  # 0.6 >= 0.5
    latency = checks["p95_latency_within_limit"]
    assert not latency.passed and latency.metadata["value"].value == pytest.approx(2.9)


def test_a_batch_without_a_reference_is_not_measured_rather_than_failed(workspace):
    # The batch run again unchanged (every result reused) and with no reference file: neither the
    # accuracy nor the latency could be measured, and neither is a miss.
    (workspace / "no-baselines").mkdir()
    out, checks, _ = run_evals(workspace, "warehouse-rerun", baselines="no-baselines", rerun=True)
    summary = out["eval_summary"][0]
    assert (summary["metadata_accuracy"], summary["n_covered"], summary["baseline_file"]) == (None, 0, None)
    assert (summary["timed_images"], summary["reused_images"], summary["end_to_end_p95_ms"]) == (0, 3, None)

    accuracy = checks["metadata_accuracy_meets_target"]
    assert accuracy.passed and accuracy.severity == AssetCheckSeverity.WARN
    assert accuracy.metadata["measured"].value is False
    missing = workspace / "no-baselines" / f"{BATCH}.jsonl"
    assert accuracy.description == f"not measured because there is no reference file {missing} (or .parquet) " \
                                   "to compare with"
    latency = checks["p95_latency_within_limit"]
    assert latency.passed and latency.severity == AssetCheckSeverity.WARN
    assert latency.metadata["measured"].value is False
    assert latency.description == ("not measured because every result was reused from an earlier run "
                                   "(3 of 4 images; the other 1 got no metadata), so no image was timed in this run")
    # No file is not a file with bad lines.
    baseline = checks["baseline_loads_cleanly"]
    assert baseline.passed and baseline.metadata["measured"].value is False
    assert baseline.description == f"not measured because there is no reference file {missing} (or .parquet)"
    # Validity is still measured on reused outputs, so that check is a real pass.
    assert checks["llm_outputs_schema_valid"].metadata["measured"].value is True


def test_a_reference_that_covers_no_image_warns(workspace):
    # A reference file for other photos: nothing to compare, and a file worth looking at.
    other = workspace / "other-baselines"
    other.mkdir()
    lines = (ROOT / "data" / "baselines" / "sample.jsonl").read_text().splitlines()
    keep = [line for line in lines if '"path"' in line and not any(
        f'"path": "{p}"' in line for p in ("chelsea.png", "coffee.png", "grass.png", "rocket.jpg"))]
    (other / f"{BATCH}.jsonl").write_text("\n".join(keep) + "\n")
    _, checks, _ = run_evals(workspace, "warehouse-other", baselines="other-baselines")
    accuracy = checks["metadata_accuracy_meets_target"]
    assert not accuracy.passed and accuracy.severity == AssetCheckSeverity.WARN
    assert accuracy.metadata["measured"].value is False
    assert accuracy.description == (
        f"not measured because the reference file {other / f'{BATCH}.jsonl'} covers none of the batch's 4 images "
        f"({len(keep)} image records loaded, {len(keep)} match no image of the batch, 0 lines did not load)")


def test_only_a_measured_miss_is_an_error():
    measured = evaluate(THRESHOLDS[0], {"metadata_accuracy": 0.5}, EvalSettings(), "b")
    assert (measured.passed, measured.severity, measured.measured) == (False, AssetCheckSeverity.ERROR, True)
    assert evaluate(THRESHOLDS[0], {"metadata_accuracy": 0.9}, EvalSettings(), "b").passed  # the target is inclusive
    # Every image failed: nothing to judge, and that is worth a warning on every threshold.
    failed = {"batch": "b", "n_images": 2, "error_rate": 1.0, "reused_images": 0, "baseline_file": "b.jsonl",
              "baseline_records": 0, "baseline_orphans": 0, "baseline_problems": 0}
    for threshold in THRESHOLDS[1:]:
        outcome = evaluate(threshold, failed, EvalSettings(), "b")
        assert (outcome.passed, outcome.severity, outcome.measured) == (False, AssetCheckSeverity.WARN, False)
        assert outcome.message.startswith("not measured because") and "2 of 2 images got no metadata" in outcome.message
    empty = evaluate(THRESHOLDS[0], {"batch": "b", "n_images": 0}, EvalSettings(), "b")
    assert empty.passed and empty.message == "not measured because the batch has no image"


def test_every_eval_column_says_what_it_means():
    def undescribed(fields, prefix=""):
        for f in fields:
            if not column_description(f):
                yield prefix + f.name
            kind = f.type.value_type if pa.types.is_list(f.type) else f.type
            if pa.types.is_struct(kind) and kind != DETECTED_OBJECT:  # the pipeline's own struct
                yield from undescribed([kind.field(i) for i in range(kind.num_fields)], f"{prefix}{f.name}.")

    assert [name for schema in EVAL_SCHEMAS.values() for name in undescribed(schema)] == []
    assert sum(len(schema) for schema in EVAL_SCHEMAS.values()) > 130  # every eval asset is listed


def test_the_ui_shows_what_each_eval_column_means(default_run):
    result = default_run[2]
    events = {m.asset_key.to_user_string(): m.materialization for m in result.get_asset_materialization_events()}
    assert set(EVAL_SCHEMAS) <= set(events)
    for asset, schema in EVAL_SCHEMAS.items():
        shown = {c.name: c.description for c in events[asset].metadata["dagster/column_schema"].value.columns}
        assert shown == {f.name: column_description(f) for f in schema}, asset
    summary_columns = events["eval_summary"].metadata["dagster/column_schema"].value.columns
    assert next(c for c in summary_columns if c.name == "reused_images").description.startswith("images whose")


def test_materialization_metadata_has_the_headline_and_a_plot(default_run):
    result = default_run[2]
    (summary_event,) = [m for m in result.get_asset_materialization_events()
                        if m.asset_key.to_user_string() == "eval_summary"]
    metadata = summary_event.materialization.metadata
    assert "| metadata_accuracy | 0.600 (95% CI" in metadata["headline"].value
    assert metadata["per_field_scores"].value.startswith("![per-field scores](data:image/png;base64,")


def test_the_report_renders_every_section(default_run, workspace):
    report = default_run[0]["eval_report"][0]
    path = Path(report["path"])
    assert path == workspace / "reports" / "warehouse" / BATCH / REPORT_FILE
    html = path.read_text()
    assert re.findall(r'<section id="(\w+)">', html) == list(SECTIONS) == report["sections"]
    assert html.count("data:image/png;base64,") == 4  # per-field bars, confusion matrix, tag F1, latency
    worst = html[html.index('id="worst"'):html.index('id="clusters"')]
    assert worst.index("rocket.jpg") < worst.index("coffee.png") < worst.index("chelsea.png")  # worst first
    assert worst.count("data:image/jpeg;base64,") == 2  # rocket.jpg is not in the batch folder: no thumbnail
    assert "our pipeline failed: cannot decode" in worst
    assert "no baseline record" in html and "invalid JSON" in html


def test_the_report_is_one_click_from_its_asset_page(default_run, workspace):
    # The link points where `pixelsift ui` serves reports_dir; here the same folder is served at a
    # free port (the default one may be taken by a UI on this machine) and the link's path fetched.
    result = default_run[2]
    (event,) = [m for m in result.get_asset_materialization_events() if m.asset_key.to_user_string() == "eval_report"]
    link = event.materialization.metadata["report_url"]
    assert isinstance(link, UrlMetadataValue)
    assert link.value == f"{PixelsiftSettings().reports_url}/{BATCH}/{REPORT_FILE}"
    url = f"http://127.0.0.1:{free_port()}"
    server = serve_reports(workspace / "reports" / "warehouse", url)
    try:
        with urllib.request.urlopen(url + urlsplit(link.value).path, timeout=10) as response:
            assert response.status == 200
            assert '<section id="headline">' in response.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_report_thumbnails_show_the_image_as_the_models_saw_it(tmp_path):
    (tmp_path / "rotated.jpg").write_bytes(exif_rotated_jpeg())
    thumb = Image.open(io.BytesIO(base64.b64decode(thumbnail_base64(tmp_path, "rotated.jpg", 10**6))))
    assert thumb.size == (20, 40)  # upright, as in the pipeline
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    assert thumbnail_base64(tmp_path, "bad.jpg", 10**6) is None
    assert thumbnail_base64(tmp_path, "missing.jpg", 10**6) is None


def test_compare_cli_on_two_warehouses(workspace, default_run):
    run_evals(workspace, "warehouse-fixed", category_of_coffee="food")
    result = CliRunner().invoke(eval_group, ["compare", str(workspace / "warehouse"),
                                             str(workspace / "warehouse-fixed"), "--batch", BATCH])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("primary_category accuracy"))
    assert line.split()[2:5] == ["0.333", "0.667", "+0.333"]
    assert "Compared on 3 images" in result.output
    missing = CliRunner().invoke(eval_group, ["compare", str(workspace), str(workspace), "--batch", BATCH])
    assert missing.exit_code != 0 and "materialize" in missing.output


def test_compare_verdicts_follow_the_paired_interval():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, 40)
    make = lambda scores, delta: Run(  # noqa: E731
        Path("x"), {f"{i}.jpg": {"image_id": str(i), "covered": True, "score": s, "palette_delta_e": delta}
                    for i, s in enumerate(scores)}, {}, {})
    better = {d.figure: d for d in compare_runs(make(base, 10.0), make(base + 0.05, 12.0), samples=500)}
    assert better["metadata_accuracy (per-image score)"].verdict == "B better"
    assert better["palette CIEDE2000"].verdict == "B worse"  # a larger colour difference is worse
    noisy = {d.figure: d for d in compare_runs(make(base, 10.0), make(base + rng.normal(0, 0.1, 40), 10.0))}
    assert noisy["metadata_accuracy (per-image score)"].verdict == "within noise"
    assert noisy["primary_category accuracy"].verdict == "not measured"
