"""N images from a folder of fewer, each a different set of pixels: the originals, then mirrored
and turned copies. A benchmark's repeated image must not be served from a cache (the warehouse
reuses rows by content hash), and the models' cost does not depend on what the pixels show."""

from __future__ import annotations

from typing import Sequence

from PIL import Image

VARIANTS = (None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180)


def distinct_copies(images: Sequence[Image.Image], count: int) -> list[Image.Image]:
    """``count`` images cycling through ``images``, each pass in the next variant: all distinct up to
    ``most_distinct(images)``, repeating after that."""
    if not images:
        raise ValueError("no images to copy")
    out = []
    for i in range(count):
        image, variant = images[i % len(images)], VARIANTS[(i // len(images)) % len(VARIANTS)]
        out.append(image if variant is None else image.transpose(variant))
    return out


def most_distinct(images: Sequence[Image.Image]) -> int:
    return len(images) * len(VARIANTS)
