import csv
import json
from pathlib import Path

from click.testing import CliRunner

from evals.baseline import load_baseline
from evals.cli import baseline as baseline_cli
from evals.legacy_import import convert_rows, read_rows

SHA = {name: name[0] * 64 for name in ("a", "b", "c", "d")}


def gemini_metadata(**overrides):
    meta = {
        "width": 640, "height": 480,  # the old system's own fields, ignored
        "vlm_primary_category": "animals",
        "vlm_tags": ["cat", "sofa"],
        "vlm_description": "A cat on a sofa.",
        "vlm_detected_objects": [{"name": "cat", "confidence": 0.9}],
        "vlm_scene_type": "indoor",
        "vlm_color_palette": ["#AA0000", "beige"],
        "vlm_model": "gemini-1.5-flash",
        "vlm_fallback_used": False,
        "vlm_processing_time_ms": 812.0,
    }
    return {**meta, **overrides}


def export_rows():
    return [
        {"id": "u1", "sha256": SHA["a"], "cluster_id": "k1", "metadata": json.dumps(gemini_metadata())},
        {"id": "u2", "sha256": SHA["b"], "cluster_id": "k1",
         "metadata": gemini_metadata(vlm_detected_objects=["cat", "blanket"])},  # older plain-string objects
        {"id": "u3", "sha256": SHA["c"], "metadata": gemini_metadata(vlm_fallback_used=True)},
        {"id": "u4", "sha256": SHA["d"], "metadata": gemini_metadata(vlm_color_palette=["#GG0000"])},
        {"id": "u5", "sha256": SHA["d"], "metadata": {"width": 10}},  # the VLM never ran
        {"id": "u6", "metadata": "{broken"},
        {"id": "k1", "name": "Cats At Home", "metadata": {"vlm_description": "Cats indoors.", "vlm_tags": ["cat"],
                                                          "vlm_primary_category": "animals"}},
        {"id": "k2", "name": "provisional-7", "metadata": {}},
    ]


def test_converting_an_export():
    result = convert_rows(export_rows())
    images = [r for r in result.records if r["record"] == "image"]
    clusters = [r for r in result.records if r["record"] == "cluster"]
    assert [r["sha256"] for r in images] == [SHA["a"], SHA["b"]]
    first = images[0]
    assert first["primary_category"] == "animals" and first["tags"] == ["cat", "sofa"]
    assert first["vlm_model"] == "gemini-1.5-flash"
    assert first["suggested_cluster_name"] == "Cats At Home"  # named after its cluster
    assert "width" not in first
    assert clusters == [{"record": "cluster", "cluster_name": "Cats At Home", "description": "Cats indoors.",
                         "tags": ["cat"], "primary_category": "animals", "members": [SHA["a"], SHA["b"]]}]
    assert {p.line: p.reason for p in result.skipped} == {
        3: "fallback output (vlm_fallback_used), not the reference model's",
        5: "no VLM metadata",
        8: "cluster without a VLM label",
    }
    reasons = {p.line: p.reason for p in result.problems}
    assert sorted(reasons) == [4, 6]
    assert "#GG0000" in reasons[4]
    assert reasons[6].startswith("metadata:")


def test_csv_exports_with_json_columns(tmp_path):
    path = tmp_path / "export.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["sha256", "metadata"])
        writer.writeheader()
        writer.writerow({"sha256": SHA["a"], "metadata": json.dumps(gemini_metadata(vlm_fallback_used="false"))})
        writer.writerow({"sha256": SHA["b"], "metadata": json.dumps(gemini_metadata(vlm_fallback_used="True"))})
    result = convert_rows(read_rows(path))
    assert [r["sha256"] for r in result.records] == [SHA["a"]]
    assert result.records[0]["detected_objects"] == [{"name": "cat", "confidence": 0.9}]


def test_json_array_and_object_of_arrays(tmp_path):
    rows = export_rows()
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.json").write_text(json.dumps({"assets": rows[:6], "clusters": rows[6:]}))
    assert convert_rows(read_rows(tmp_path / "a.json")).records == convert_rows(read_rows(tmp_path / "b.json")).records


def write_export(path: Path) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in export_rows()) + "\n{oops\n")
    return path


def test_cli_import_writes_a_loadable_baseline_and_refuses_to_overwrite(tmp_path):
    export = write_export(tmp_path / "assets.jsonl")
    runner = CliRunner()
    result = runner.invoke(baseline_cli, ["import", str(export), "--batch", "holiday", "--out", str(tmp_path / "bl")])
    assert result.exit_code == 0, result.output
    assert "2 image records, 1 cluster records" in result.output
    assert "line 9: invalid JSON" in result.output
    loaded = load_baseline(tmp_path / "bl" / "holiday.jsonl")
    assert loaded.problems == []
    assert loaded.source == "imported from assets.jsonl (export of the Gemini-based system)"
    assert [r.color_palette for _, r in loaded.images][0] == ["#AA0000", "#F5F5DC"]

    again = runner.invoke(baseline_cli, ["import", str(export), "--batch", "holiday", "--out", str(tmp_path / "bl")])
    assert again.exit_code != 0 and "--force" in again.output
    forced = runner.invoke(baseline_cli, ["import", str(export), "--batch", "holiday", "--out", str(tmp_path / "bl"),
                                          "--force"])
    assert forced.exit_code == 0


def test_cli_rejects_unsafe_batch_keys(tmp_path):
    export = write_export(tmp_path / "assets.jsonl")
    result = CliRunner().invoke(baseline_cli, ["import", str(export), "--batch", "../x", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "batch" in result.output


def test_cli_validate(tmp_path):
    good = Path(__file__).resolve().parents[1] / "data" / "baselines" / "sample.jsonl"
    runner = CliRunner()
    result = runner.invoke(baseline_cli, ["validate", str(good)])
    assert result.exit_code == 0 and "hand-written reference; 10 image records, 3 cluster records" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.png", "tags": ["x"]}\n{"path": "a.png", "tags": ["y"]}\n')
    result = runner.invoke(baseline_cli, ["validate", str(bad)])
    assert result.exit_code == 1 and "line 2: duplicate of line 1" in result.output
