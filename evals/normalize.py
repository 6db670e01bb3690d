"""Normalising labels and terms before they are compared.

Two outputs should not disagree because one says "Cats" and the other "cat", or one
says "still life" and the other "still_life". Terms (tags, object names, cluster
names) are lower-cased, stripped of punctuation and leading articles, and each word
is made singular. Single-choice labels (``primary_category``, ``scene_type``) are
then mapped onto pixelsift's vocabulary through ``LABEL_SYNONYMS``, the one table of
known synonyms; a label that is neither in the vocabulary nor a known synonym is
kept (normalised) and simply disagrees.
"""

from __future__ import annotations

import re
import unicodedata

from assets.llm_schemas import CATEGORIES, SCENE_TYPES

# Each canonical label of the vocabulary, with the other words that mean the same.
# Only true synonyms belong here: "landscape" is not "nature", it is a disagreement.
LABEL_SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "primary_category": {
        "animals": ("animal", "pet", "wildlife", "fauna"),
        "people": ("person", "human", "humans"),
        "vehicles": ("vehicle", "transport", "transportation"),
        "nature": ("natural", "plant", "flora"),
        "food": ("food and drink", "food & drink", "food and beverage", "cuisine", "meal"),
        "architecture": ("building", "buildings", "architectural", "structure"),
        "objects": ("object", "thing", "item"),
        "abstract": ("abstract art",),
    },
    "scene_type": {
        "portrait": ("headshot",),
        "landscape": ("scenery", "landscape view"),
        "still_life": ("still life", "still-life", "stilllife", "product shot"),
        "action": ("action shot", "motion"),
        "abstract": ("abstract scene",),
        "indoor": ("indoors", "interior", "inside"),
        "outdoor": ("outdoors", "exterior", "outside"),
    },
}

VOCABULARIES: dict[str, tuple[str, ...]] = {"primary_category": CATEGORIES, "scene_type": SCENE_TYPES}

_ARTICLES = {"a", "an", "the"}
# Plurals no suffix rule gets right, and words that end in "s" without being plural.
_IRREGULAR_PLURALS = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
    "geese": "goose", "feet": "foot", "teeth": "tooth", "leaves": "leaf", "knives": "knife",
    "shelves": "shelf", "wolves": "wolf", "halves": "half", "loaves": "loaf", "scarves": "scarf",
    "calves": "calf", "lives": "life", "wives": "wife", "tomatoes": "tomato", "potatoes": "potato",
    "heroes": "hero", "cacti": "cactus", "fungi": "fungus", "buses": "bus", "gases": "gas",
    "lenses": "lens", "cookies": "cookie", "movies": "movie", "selfies": "selfie", "brownies": "brownie",
}
_NOT_PLURAL = {
    "glass", "grass", "gas", "lens", "canvas", "series", "species", "news", "chess", "jeans", "pants",
    "scissors", "clothes", "glasses", "physics", "cosmos", "christmas", "atlas", "chassis", "mathematics",
}
_WORD = re.compile(r"[a-z0-9]+")


def singular(word: str) -> str:
    """English singular of one lower-case word by suffix rules; good enough to match tags, not a lemmatizer."""
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if len(word) <= 3 or word in _NOT_PLURAL or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def normalize_term(text: str | None) -> str:
    """'The Coffee-Cups!' -> 'coffee cup'. Accents are folded, so 'Café' and 'cafe' agree."""
    if not text:
        return ""
    folded = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode().lower()
    words = _WORD.findall(folded.replace("&", " and "))
    while words and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(singular(w) for w in words)


def normalize_terms(terms: list[str] | None) -> list[str]:
    """Normalised, empty ones dropped, duplicates removed (first kept): a tag list is a set."""
    return list(dict.fromkeys(t for t in (normalize_term(x) for x in terms or []) if t))


def _build_index() -> dict[str, dict[str, str]]:
    index: dict[str, dict[str, str]] = {}
    for field, table in LABEL_SYNONYMS.items():
        missing = set(VOCABULARIES[field]) - set(table)
        if missing:
            raise ValueError(f"LABEL_SYNONYMS[{field!r}] lacks vocabulary labels {sorted(missing)}")
        index[field] = {}
        for canonical, synonyms in table.items():
            for word in (canonical, *synonyms):
                key = normalize_term(word)
                if index[field].get(key, canonical) != canonical:
                    raise ValueError(f"{word!r} is listed under both {index[field][key]!r} and {canonical!r}")
                index[field][key] = canonical
    return index


_INDEX = _build_index()


def canonical_label(value: str | None, field: str) -> str | None:
    """The vocabulary label that ``value`` means for ``field``; unknown labels come back normalised."""
    key = normalize_term(value)
    if not key:
        return None
    return _INDEX[field].get(key, key)
