"""The realistic text the benchmark's language models produce, since random weights produce none.

Random weights never stop and never write sensible JSON, so generation lengths are pinned
to realistic values instead: captions are 20 tokens (BLIP-2's typical length with the
pipeline's ``max_new_tokens``), and the metadata LLM is steered to write the hand-written
documents below, one per sample photo, valid against the real schema. The decode loop,
grammar, jump-forward and every forward call run as they would; only the argmax is
replaced by the next piece of the target document (see ``benchmarks/steering.py``).
Captions fed to the LLM are the realistic ones below, not the random model's.
"""

from __future__ import annotations

from dataclasses import dataclass

from assets.llm_schemas import ClusterLabelOutput, ImageMetadataOutput
from resources.json_text import json_text

CAPTION_TOKENS = 20


@dataclass(frozen=True)
class Example:
    caption: str
    metadata: ImageMetadataOutput


def _meta(category, tags, objects, scene, name) -> ImageMetadataOutput:
    return ImageMetadataOutput(
        primary_category=category,
        tags=tags,
        detected_objects=[{"name": n, "confidence": c} for n, c in objects],
        scene_type=scene,
        suggested_cluster_name=name,
    )


# BLIP-2-style captions of the ten `sample` photos and the metadata a good model writes for them.
EXAMPLES: tuple[Example, ...] = (
    Example("an astronaut in an orange suit posing in front of an american flag", _meta(
        "people", ["astronaut", "space suit", "portrait", "flag", "nasa", "orange", "woman"],
        [("person", 0.96), ("space suit", 0.91), ("flag", 0.84), ("helmet", 0.55)], "portrait", "Astronaut Portraits")),
    Example("a close up of a red brick wall", _meta(
        "architecture", ["brick", "wall", "texture", "red", "masonry", "pattern"],
        [("brick wall", 0.93)], "abstract", "Brick Textures")),
    Example("a black and white photo of a man with a camera on a tripod", _meta(
        "people", ["photographer", "camera", "tripod", "black and white", "man", "outdoor", "vintage"],
        [("man", 0.94), ("camera", 0.9), ("tripod", 0.82), ("coat", 0.47)], "portrait", "Photographers at Work")),
    Example("a tabby cat sitting on a wooden floor looking up", _meta(
        "animals", ["cat", "tabby cat", "pet", "kitten", "whiskers", "indoor", "cute", "animal"],
        [("cat", 0.97), ("floor", 0.61)], "indoor", "Tabby Cats")),
    Example("a cup of coffee on a saucer with a spoon", _meta(
        "food", ["coffee", "cup", "saucer", "drink", "cafe", "latte", "breakfast"],
        [("cup", 0.95), ("saucer", 0.88), ("spoon", 0.72), ("coffee", 0.9)], "still_life", "Coffee Cups")),
    Example("a bunch of old coins on a black background", _meta(
        "objects", ["coins", "money", "currency", "metal", "old", "collection", "round"],
        [("coin", 0.92), ("coin", 0.89), ("coin", 0.86)], "still_life", "Coin Collections")),
    Example("a close up of green grass", _meta(
        "nature", ["grass", "green", "lawn", "plants", "texture", "field"],
        [("grass", 0.95)], "outdoor", "Green Grass Textures")),
    Example("a photo of many galaxies in deep space", _meta(
        "nature", ["space", "galaxies", "stars", "astronomy", "universe", "night sky", "hubble"],
        [("galaxy", 0.88), ("star", 0.74)], "abstract", "Deep Space Images")),
    Example("a red motorcycle parked on a white background", _meta(
        "vehicles", ["motorcycle", "motorbike", "red", "bike", "vehicle", "sport bike", "studio"],
        [("motorcycle", 0.97), ("wheel", 0.81), ("seat", 0.63)], "still_life", "Red Motorcycles")),
    Example("a rocket launching into the sky with smoke and fire", _meta(
        "vehicles", ["rocket", "launch", "space", "smoke", "fire", "sky", "nasa", "spacecraft"],
        [("rocket", 0.95), ("smoke", 0.87), ("launch pad", 0.58)], "action", "Rocket Launches")),
)

# Cluster labels are written from the captions of a cluster's representatives (three here).
CLUSTER_EXAMPLES: tuple[tuple[tuple[str, ...], ClusterLabelOutput], ...] = (
    ((EXAMPLES[0].caption, EXAMPLES[9].caption, EXAMPLES[7].caption), ClusterLabelOutput(
        cluster_name="Space Exploration Photos",
        description="Photos about space travel, from astronauts and rocket launches to distant galaxies.",
        tags=["space", "nasa", "astronaut", "rocket", "galaxies", "exploration"], primary_category="vehicles")),
    ((EXAMPLES[1].caption, EXAMPLES[6].caption, EXAMPLES[5].caption), ClusterLabelOutput(
        cluster_name="Close Up Textures",
        description="Close up shots of repeating surfaces such as bricks, grass and coins.",
        tags=["texture", "close up", "pattern", "surface", "detail"], primary_category="abstract")),
)

IMAGES_PER_CLUSTER = 10  # assumption for amortising cluster labels: one cluster per ten images


def document(value) -> str:
    """The JSON text the grammar allows for a value: fields in schema order, as ``json_text`` writes it."""
    return json_text(value.model_dump())
