"""Deterministic results used when the LLM's output cannot be used (documented in docs/pipeline.md).

They are built from the caption text alone with fixed word lists, always validate against
the same schema as the LLM's output, and are marked ``fallback_used = true`` with the reason.
"""

from __future__ import annotations

import re
from collections import Counter

from pydantic import BaseModel

from assets.llm_schemas import ClusterLabelOutput, ImageMetadataOutput

# First match wins, in this order; a caption matching nothing is 'objects'.
CATEGORY_WORDS: dict[str, tuple[str, ...]] = {
    "people": ("man", "woman", "person", "people", "boy", "girl", "child", "men", "women", "astronaut", "player"),
    "animals": ("cat", "dog", "bird", "horse", "animal", "cow", "sheep", "fish", "kitten", "puppy", "bear"),
    "vehicles": ("car", "bus", "truck", "motorcycle", "bike", "bicycle", "train", "plane", "boat", "rocket", "ship"),
    "food": ("food", "coffee", "cup", "plate", "pizza", "cake", "fruit", "bread", "meal", "drink", "tea"),
    "architecture": ("building", "house", "bridge", "wall", "brick", "church", "tower", "city", "street", "room"),
    "nature": ("tree", "grass", "sky", "mountain", "sea", "beach", "forest", "flower", "field", "river", "space"),
    "abstract": ("pattern", "texture", "abstract", "shape", "lines", "design"),
}
SCENE_WORDS: dict[str, tuple[str, ...]] = {
    "portrait": ("portrait", "face", "posing", "smiling"),
    "indoor": ("room", "kitchen", "table", "indoor", "inside", "desk"),
    "landscape": ("landscape", "mountain", "field", "sky", "beach", "valley"),
    "action": ("running", "jumping", "riding", "playing", "flying", "launch"),
}
STOPWORDS = frozenset(
    "a an the of in on at with and or to is are was were be it its this that there their his her "
    "for from by as some two three one into over near next up down out very image photo picture of".split()
)
FILLER_TAGS = ("photo", "image", "picture", "scene", "subject")


def caption_words(text: str) -> list[str]:
    """Lower-case content words of a caption, in order, without duplicates."""
    words = re.findall(r"[a-zß-öø-ÿ]+", text.lower())  # the letters a tag may hold (assets/llm_schemas.py)
    return list(dict.fromkeys(w[:24] for w in words if w not in STOPWORDS and len(w) > 1))


def category_for(words: list[str]) -> str:
    present = set(words)
    for category, vocab in CATEGORY_WORDS.items():
        if present.intersection(vocab):
            return category
    return "objects"


def scene_for(words: list[str], category: str) -> str:
    present = set(words)
    for scene, vocab in SCENE_WORDS.items():
        if present.intersection(vocab):
            return scene
    return "portrait" if category == "people" else "outdoor" if category == "nature" else "still_life"


def list_bounds(schema: type[BaseModel], field: str) -> tuple[int, int]:
    """(min, max) length of a list field, read from the schema so the fallback follows it."""
    meta = schema.model_fields[field].metadata
    return (next(m.min_length for m in meta if hasattr(m, "min_length")),
            next(m.max_length for m in meta if hasattr(m, "max_length")))


def _tags(words: list[str], low: int, high: int) -> list[str]:
    tags = words[:high]
    tags += [f for f in FILLER_TAGS if f not in tags][: max(0, low - len(tags))]
    return tags


def _name(words: list[str], category: str) -> str:
    head = [w.capitalize() for w in words[:2]] or [category.capitalize()]
    return " ".join(head + (["Images"] if len(head) < 2 else []))


def image_metadata_fallback(caption: str) -> ImageMetadataOutput:
    words = caption_words(caption)
    category = category_for(words)
    return ImageMetadataOutput(
        primary_category=category,
        tags=_tags(words, *list_bounds(ImageMetadataOutput, "tags")),
        detected_objects=[{"name": w, "confidence": 0.0} for w in words[:3]] or [{"name": category, "confidence": 0.0}],
        scene_type=scene_for(words, category),
        suggested_cluster_name=_name(words, category),
    )


def cluster_label_fallback(captions: list[str]) -> ClusterLabelOutput:
    """The most frequent caption words across the cluster name and tag it."""
    counts = Counter(w for c in captions for w in caption_words(c))
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    category = category_for(words)
    return ClusterLabelOutput(
        cluster_name=_name(words, category),
        description=f"Photos that share {', '.join(words[:3]) or category}.",
        tags=_tags(words, *list_bounds(ClusterLabelOutput, "tags")),
        primary_category=category,
    )
