import pytest

from assets.llm_schemas import CATEGORIES, SCENE_TYPES
from evals import normalize
from evals.normalize import LABEL_SYNONYMS, canonical_label, normalize_term, normalize_terms, singular


@pytest.mark.parametrize(
    "label, field, expected",
    [
        ("animal", "primary_category", "animals"),
        ("Animals", "primary_category", "animals"),
        ("person", "primary_category", "people"),
        ("People", "primary_category", "people"),
        ("building", "primary_category", "architecture"),
        ("Buildings", "primary_category", "architecture"),
        ("vehicle", "primary_category", "vehicles"),
        ("Food & Drink", "primary_category", "food"),
        ("still life", "scene_type", "still_life"),
        ("Still-Life", "scene_type", "still_life"),
        ("still_life", "scene_type", "still_life"),
        ("Indoors", "scene_type", "indoor"),
        ("exterior", "scene_type", "outdoor"),
    ],
)
def test_known_synonyms_map_to_the_vocabulary(label, field, expected):
    assert canonical_label(label, field) == expected


def test_every_vocabulary_label_maps_to_itself():
    assert [canonical_label(c, "primary_category") for c in CATEGORIES] == list(CATEGORIES)
    assert [canonical_label(s, "scene_type") for s in SCENE_TYPES] == list(SCENE_TYPES)


def test_the_table_covers_exactly_the_vocabulary():
    assert set(LABEL_SYNONYMS["primary_category"]) == set(CATEGORIES)
    assert set(LABEL_SYNONYMS["scene_type"]) == set(SCENE_TYPES)


def test_unknown_labels_stay_and_disagree():
    # "landscape" is a scene type, not a category: as a category it is kept and matches nothing.
    assert canonical_label("Landscape", "primary_category") == "landscape"
    assert canonical_label("", "scene_type") is None
    assert canonical_label(None, "scene_type") is None


def test_a_synonym_listed_under_two_labels_is_rejected(monkeypatch):
    broken = {**LABEL_SYNONYMS, "scene_type": {**LABEL_SYNONYMS["scene_type"], "outdoor": ("inside",)}}
    monkeypatch.setattr(normalize, "LABEL_SYNONYMS", broken)
    with pytest.raises(ValueError, match="inside"):
        normalize._build_index()


@pytest.mark.parametrize(
    "plural, singular_form",
    [("cats", "cat"), ("berries", "berry"), ("boxes", "box"), ("dishes", "dish"), ("dresses", "dress"),
     ("leaves", "leaf"), ("people", "person"), ("children", "child"), ("photos", "photo"), ("buses", "bus"),
     ("cookies", "cookie"), ("grass", "grass"), ("glass", "glass"), ("lens", "lens"), ("cactus", "cactus"),
     ("cat", "cat"), ("sky", "sky")],
)
def test_singular(plural, singular_form):
    assert singular(plural) == singular_form


def test_terms_lose_case_punctuation_articles_and_plurals():
    assert normalize_term("The Coffee-Cups!") == "coffee cup"
    assert normalize_term("  RED   bus. ") == "red bus"
    assert normalize_term("Café") == "cafe"
    assert normalize_term("black & white") == "black and white"
    assert normalize_term("") == ""


def test_term_lists_become_sets_in_order():
    assert normalize_terms(["Cats", "cat", "", "!!", "Dogs"]) == ["cat", "dog"]
    assert normalize_terms(None) == []
