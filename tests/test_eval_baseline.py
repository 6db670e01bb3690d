import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evals.baseline import (
    baseline_from_table, baseline_table, find_baseline_file, load_baseline, match_images, to_hex_color,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_BASELINE = ROOT / "data" / "baselines" / "sample.jsonl"
SAMPLE_IMAGES = ROOT / "data" / "images" / "sample"
SHA_A = "a" * 64


def record(path="cat.jpg", **fields):
    return {"path": path, "primary_category": "animals", "tags": ["cat"], **fields}


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


@pytest.fixture
def load_lines(tmp_path):
    return lambda lines: load_baseline(write_jsonl(tmp_path / "b.jsonl", lines))


def test_the_shipped_sample_baseline_is_a_hand_written_reference_for_every_sample_photo():
    baseline = load_baseline(SAMPLE_BASELINE)
    assert baseline.problems == []
    assert baseline.source == "hand-written reference"
    assert {r.vlm_model for _, r in baseline.images} == {"hand-written reference"}
    photos = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in SAMPLE_IMAGES.iterdir()}
    assert {r.path: r.sha256 for _, r in baseline.images} == photos
    assert len(baseline.clusters) == 3


def test_bad_lines_are_reported_by_line_and_the_good_ones_load(tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", [
        {"record": "source", "source": "hand labels"},
        record("a.jpg"),
        "{not json",
        "[1, 2]",
        {"primary_category": "animals"},  # no key
        record("b.jpg", tags="cat, dog"),  # tags must be a list
        record("c.jpg", color_palette=["#FF0000", "not-a-colour"]),
        record("d.jpg", sha256="xyz"),
        record("a.jpg", tags=["dog"]),  # duplicate path
        {"path": "e.jpg"},  # no reference field
        {"record": "thumbnail", "path": "f.jpg"},
        {"record": "source", "source": "again"},
        record("../outside.jpg"),
        "",
        record("g.jpg", detected_objects=["cat", {"name": "sofa", "confidence": 0.5}]),
    ])
    baseline = load_baseline(path)
    assert [r.path for _, r in baseline.images] == ["a.jpg", "g.jpg"]
    assert baseline.images[0][1].tags == ["cat"]  # the first of two duplicates stands
    reasons = {p.line: p.reason for p in baseline.problems}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert "invalid JSON" in reasons[3]
    assert "not a JSON object" in reasons[4]
    assert "'path' or 'sha256'" in reasons[5]
    assert reasons[6].startswith("tags")
    assert "not-a-colour" in reasons[7]
    assert reasons[8].startswith("sha256")
    assert reasons[9] == "duplicate of line 2 (same path 'a.jpg')"
    assert "at least one of" in reasons[10]
    assert "unknown record kind 'thumbnail'" in reasons[11]
    assert "second 'source'" in reasons[12]
    assert "relative to the batch folder" in reasons[13]
    assert baseline.source == "hand labels"


def test_a_line_that_is_not_utf8_costs_only_that_line(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_bytes(json.dumps(record("a.jpg")).encode() + b"\n\xff\xfe{}\n" + json.dumps(record("b.jpg")).encode())
    baseline = load_baseline(path)
    assert [r.path for _, r in baseline.images] == ["a.jpg", "b.jpg"]
    assert [(p.line, p.reason) for p in baseline.problems] == [(2, "not UTF-8 text")]


def test_plain_string_objects_and_colour_names_are_accepted(load_lines):
    baseline = load_lines([record(detected_objects=["cat", {"name": "sofa", "confidence": 0.5}],
                                           color_palette=["navy", "#abc", "#00ff00"])])
    image = baseline.images[0][1]
    assert image.object_names == ["cat", "sofa"]
    assert [o.confidence for o in image.detected_objects] == [None, 0.5]
    assert image.color_palette == ["#000080", "#AABBCC", "#00FF00"]


def test_to_hex_color_rejects_non_colours():
    with pytest.raises(ValueError, match="not a colour"):
        to_hex_color("blurple-ish")


def test_parquet_baselines_load_like_jsonl(tmp_path):
    rows = [
        {"record": "source", "source": "hand labels", "path": None, "sha256": None, "tags": None},
        {"record": None, "source": None, "path": "a.jpg", "sha256": SHA_A, "tags": ["cat", "sofa"]},
        {"record": None, "source": None, "path": "a.jpg", "sha256": None, "tags": ["dup"]},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet")
    baseline = load_baseline(tmp_path / "b.parquet")
    assert baseline.source == "hand labels"
    assert [(r.path, r.sha256, r.tags) for _, r in baseline.images] == [("a.jpg", SHA_A, ["cat", "sofa"])]
    assert [(p.line, p.reason) for p in baseline.problems] == [(3, "duplicate of line 2 (same path 'a.jpg')")]


def test_finding_the_file_of_a_batch(tmp_path):
    assert find_baseline_file(tmp_path, "b1") is None
    (tmp_path / "b1.jsonl").write_text("")
    assert find_baseline_file(tmp_path, "b1") == tmp_path / "b1.jsonl"
    (tmp_path / "b1.parquet").write_text("")
    with pytest.raises(ValueError, match="keep one"):
        find_baseline_file(tmp_path, "b1")


def test_matching_records_to_images(load_lines):
    sha = lambda c: c * 64  # noqa: E731
    baseline = load_lines([
        record("same.jpg", sha256=sha("1")),
        record("changed.jpg", sha256=sha("2")),
        record("old_name.jpg", sha256=sha("3")),  # the file was renamed since
        {"sha256": sha("4"), "tags": ["x"]},  # keyed by content only
        record("gone.jpg"),  # not in the batch any more
        record("pathonly.jpg"),
    ])
    images = [("same.jpg", sha("1")), ("changed.jpg", sha("9")), ("new_name.jpg", sha("3")),
              ("copy_a.jpg", sha("4")), ("copy_b.jpg", sha("4")), ("pathonly.jpg", sha("5")),
              ("unlabelled.jpg", sha("6"))]
    coverage, orphans = match_images(images, baseline)
    assert {p: c.matched_by for p, c in coverage.items()} == {
        "same.jpg": "path", "changed.jpg": None, "new_name.jpg": "sha256", "copy_a.jpg": "sha256",
        "copy_b.jpg": "sha256", "pathonly.jpg": "path", "unlabelled.jpg": None,
    }
    assert coverage["changed.jpg"].reason == "file changed since it was labelled (sha256 differs)"
    assert coverage["unlabelled.jpg"].reason == "no baseline record"
    assert orphans == 1  # gone.jpg


def comparable(image):
    # Confidences are stored as float32, like the pipeline's own detected_objects.
    data = image.model_dump()
    data["detected_objects"] = [(o["name"], round(o["confidence"], 5)) for o in data["detected_objects"]]
    return data


def test_table_round_trip_keeps_records_and_problems(load_lines):
    baseline = load_lines(SAMPLE_BASELINE.read_text().splitlines() + ['{"path": "x.png", "tags": 3}'])
    assert len(baseline.problems) == 1
    table = baseline_table(baseline)
    again = baseline_from_table(table)
    assert again.source == baseline.source
    assert [(line, comparable(r)) for line, r in again.images] == [(line, comparable(r)) for line, r in baseline.images]
    assert [c.cluster_name for _, c in again.clusters] == [c.cluster_name for _, c in baseline.clusters]
    assert again.problems == baseline.problems
