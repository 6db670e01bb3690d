"""Per-image and cluster scoring with the real sentence model (all-MiniLM-L6-v2, loaded once)."""

import re

import numpy as np
import pytest
from click.testing import CliRunner

from evals.baseline import Baseline, ClusterReference, Coverage, ImageReference
from evals.cli import eval_group
from evals.cluster_scoring import ClusteredImage, score_clusters
from evals.metadata_scoring import Answer, ImageToScore, score_images, weighted_score
from evals.semantic import SentenceEncoder, TextVectors
from evals.settings import EvalSettings

SETTINGS = EvalSettings()
SCORE_COLUMNS = [
    "category_score", "scene_type_score", "tags_exact_f1", "tags_semantic_f1", "objects_exact_f1",
    "objects_semantic_f1", "description_score", "cluster_name_score", "palette_score",
]


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


REFERENCE = dict(
    primary_category="animals", scene_type="indoor", tags=["cat", "sofa", "cushion"],
    detected_objects=[{"name": "cat", "confidence": 0.9}, {"name": "sofa", "confidence": 0.8}],
    description="A tabby cat asleep on a grey sofa.", color_palette=["#808080", "#B07A4E"],
    suggested_cluster_name="Cats At Home",
)


def ours_row(**changes):
    """Our image_metadata row that agrees with REFERENCE, except for ``changes``."""
    return {"status": "ok", **REFERENCE, **changes}


def score_one(encoder, row, reference=REFERENCE, settings=SETTINGS):
    ref = ImageReference(path="cat.jpg", **reference)
    item = ImageToScore("id", "cat.jpg", row.get("status", "ok"), Coverage(ref, "path", None),
                        Answer.from_metadata_row(row))
    return score_images([item], encoder, settings).to_pylist()[0]


def test_identical_answers_score_one_everywhere(encoder):
    row = score_one(encoder, ours_row())
    assert {c: row[c] for c in SCORE_COLUMNS} == {c: pytest.approx(1.0) for c in SCORE_COLUMNS}
    assert row["score"] == pytest.approx(1.0)
    assert row["palette_delta_e"] == pytest.approx(0.0, abs=1e-9)


def changed_columns(encoder, **changes):
    row = score_one(encoder, ours_row(**changes))
    return {c for c in SCORE_COLUMNS if row[c] != pytest.approx(1.0)}, row


@pytest.mark.parametrize(
    "change, lowered",
    [
        ({"primary_category": "vehicles"}, {"category_score"}),
        ({"scene_type": "outdoor"}, {"scene_type_score"}),
        ({"tags": ["cat", "sofa", "rocket"]}, {"tags_exact_f1", "tags_semantic_f1"}),
        ({"detected_objects": [{"name": "motorcycle", "confidence": 1.0}]},
         {"objects_exact_f1", "objects_semantic_f1"}),
        ({"description": "A red motorcycle parked in a garage."}, {"description_score"}),
        ({"suggested_cluster_name": "Rocket Launches"}, {"cluster_name_score"}),
        ({"color_palette": ["#0000FF", "#00FF00"]}, {"palette_score"}),
    ],
)
def test_a_planted_disagreement_lowers_exactly_its_field(encoder, change, lowered):
    changed, row = changed_columns(encoder, **change)
    assert changed == lowered
    assert row["score"] < 1.0


def test_synonyms_plurals_and_case_keep_scores(encoder):
    # Plural/case differences vanish in normalisation; a synonym lowers exact F1 but not semantic F1.
    changed, row = changed_columns(encoder, primary_category="Animal", scene_type="Indoors",
                                   tags=["Cats", "couch", "cushions"])
    assert changed == {"tags_exact_f1"}
    assert row["tags_exact_precision"] == pytest.approx(2 / 3)
    assert row["tags_semantic_f1"] == pytest.approx(1.0)


def test_an_image_our_pipeline_failed_on_scores_zero(encoder):
    row = score_one(encoder, {"status": "error"})
    assert row["covered"] and row["status"] == "error"
    assert {c: row[c] for c in SCORE_COLUMNS} == {c: 0.0 for c in SCORE_COLUMNS}
    assert row["score"] == 0.0


def test_fields_the_reference_leaves_out_are_not_scored(encoder):
    reference = {"primary_category": "animals", "tags": ["cat"]}
    row = score_one(encoder, ours_row(primary_category="people", tags=["cat"]), reference=reference)
    assert row["description_score"] is None and row["palette_score"] is None
    # Only category (0, weight .2) and tags (1, weight .2) count: 0.5.
    assert row["score"] == pytest.approx(0.5)


def test_weighted_score_by_hand():
    weights = SETTINGS.weights()
    assert sum(weights.values()) == pytest.approx(1.0)
    row = {"category_score": 1.0, "scene_type_score": 0.0, "tags_semantic_f1": 0.5}
    # (0.2*1 + 0.1*0 + 0.2*0.5) / (0.2 + 0.1 + 0.2) = 0.3 / 0.5
    assert weighted_score(row, weights) == pytest.approx(0.6)
    assert weighted_score({}, weights) is None
    with pytest.raises(ValueError):
        EvalSettings(weight_primary_category=-1.0).weights()


def test_uncovered_images_are_kept_and_explained(encoder):
    item = ImageToScore("id", "new.jpg", "ok", Coverage(None, None, "no baseline record"),
                        Answer.from_metadata_row(ours_row()))
    row = score_images([item], encoder, SETTINGS).to_pylist()[0]
    assert (row["covered"], row["uncovered_reason"], row["score"]) == (False, "no baseline record", None)


def test_the_default_thresholds_are_the_calibrated_ones(encoder):
    output = CliRunner().invoke(eval_group, ["calibrate"]).output
    lines = re.findall(r"(\w+) = ([0-9.]+) \(default ([0-9.]+)", output)
    assert {name for name, _, _ in lines} == {"semantic_match_threshold", "similarity_floor", "similarity_ceiling"}
    for name, calibrated, default in lines:
        assert float(calibrated) == float(default) == getattr(SETTINGS, name), name
    assert int(re.search(r"classifies (\d+)%", output).group(1)) >= 75


def test_encoder_gives_unit_vectors_and_meaningful_similarity(encoder):
    vectors = TextVectors(encoder, ["car", "automobile", "banana"])
    assert np.allclose(np.linalg.norm(vectors.matrix(["car", "banana"]), axis=1), 1.0, atol=1e-5)
    assert vectors.cosine("car", "automobile") > SETTINGS.semantic_match_threshold > vectors.cosine("car", "banana")
    assert encoder.encode([]).shape == (0, 384)


def test_cluster_scoring(encoder):
    ref = lambda path, name, category: Coverage(  # noqa: E731
        ImageReference(path=path, suggested_cluster_name=name, primary_category=category), "path", None)
    coverage = {"c1.jpg": ref("c1.jpg", "Cats At Home", "animals"), "c2.jpg": ref("c2.jpg", "cats at home", "animals"),
                "r1.jpg": ref("r1.jpg", "Rocket Launches", "vehicles"),
                "r2.jpg": ref("r2.jpg", "Rocket Launches", "vehicles"),
                "x.jpg": ref("x.jpg", "Deep Space", "nature")}
    axis = lambda i: np.eye(4, dtype=np.float32)[i]  # noqa: E731
    images = [ClusteredImage("c1.jpg", "h1", 0, axis(0)), ClusteredImage("c2.jpg", "h2", 0, axis(0) + 0.1 * axis(1)),
              ClusteredImage("r1.jpg", "h3", 1, axis(2)), ClusteredImage("r2.jpg", "h4", 1, axis(2) + 0.1 * axis(3)),
              ClusteredImage("x.jpg", "h5", -1, axis(3))]
    labels = {0: {"cluster_name": "Cats at home", "description": "Cats indoors.", "tags": ["cat", "sofa"],
                  "primary_category": "animals"},
              1: {"cluster_name": "Space Rockets", "description": None, "tags": [], "primary_category": "objects"}}
    baseline = Baseline(clusters=[(1, ClusterReference(cluster_name="Cats At Home", description="Cats inside.",
                                                       tags=["cat", "sofas"], primary_category="animal",
                                                       members=["c1.jpg", "h2", "other.jpg"]))])
    row = score_clusters(images, labels, coverage, baseline, encoder, SETTINGS).to_pylist()[0]
    # Our grouping equals the reference names' grouping (noise is a singleton, as is "Deep Space").
    assert row["ari_cluster_name"] == pytest.approx(1.0) and row["nmi_cluster_name"] == pytest.approx(1.0)
    assert row["ari_category"] == pytest.approx(1.0)
    assert row["silhouette"] > 0.9
    assert (row["n_images"], row["n_clusters"], row["noise_share"], row["n_compared"]) == (5, 2, 0.2, 5)
    cats, rockets = row["clusters"]
    assert cats["member_name_similarity"] == pytest.approx(1.0, abs=1e-5)  # same words after normalising
    assert cats["reference_overlap"] == pytest.approx(2 / 3)  # members c1, c2 (by sha) of c1, h2, other.jpg
    assert (cats["name_similarity"], cats["tags_semantic_f1"], cats["category_score"]) == (
        pytest.approx(1.0, abs=1e-5), pytest.approx(1.0), 1.0)
    assert 0 < rockets["member_name_similarity"] < 1
    assert rockets["reference_cluster_name"] is None and rockets["name_similarity"] is None
    assert row["label_category_score"] == 1.0  # only the cats cluster has a reference to compare with


def test_a_stricter_threshold_stops_synonyms_matching(encoder):
    stricter = EvalSettings(semantic_match_threshold=0.99)
    row = score_one(encoder, ours_row(tags=["cat", "couch", "cushion"]), settings=stricter)
    assert row["tags_semantic_f1"] < 1.0  # couch ~ sofa no longer counts as a match


def test_a_cluster_without_a_label_scores_zero(encoder):
    coverage = {"a.jpg": Coverage(ImageReference(path="a.jpg", suggested_cluster_name="Cats"), "path", None)}
    images = [ClusteredImage("a.jpg", "h1", 0, None), ClusteredImage("b.jpg", "h2", 0, None)]
    baseline = Baseline(clusters=[(1, ClusterReference(cluster_name="Cats", description="Cats.", members=["a.jpg"]))])
    row = score_clusters(images, {}, coverage, baseline, encoder, SETTINGS).to_pylist()[0]
    (cluster,) = row["clusters"]
    assert (cluster["member_name_similarity"], cluster["name_similarity"], cluster["description_similarity"]) == (
        0.0, 0.0, 0.0)
    assert cluster["tags_semantic_f1"] is None and cluster["category_score"] is None  # the reference has neither
    assert row["silhouette"] is None  # no embeddings, one cluster
