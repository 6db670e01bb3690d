"""Dominant colours of an image: k-means in Lab on a downsampled copy, with a fixed seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from assets.colorspace import lab_to_rgb, rgb_to_hex, rgb_to_lab

MAX_COLORS = 5
MIN_COLORS = 3
THUMBNAIL = 64  # pixels on the longer side: plenty for 5 colours, and k-means stays ~10 ms
MIN_SHARE = 0.03  # colours covering less than this are dropped while at least MIN_COLORS remain


@dataclass(frozen=True)
class Palette:
    colors: list[str]  # '#RRGGBB', largest share first
    shares: list[float]


def extract_palette(image: Image.Image, seed: int = 0) -> Palette:
    """3-5 dominant colours with their pixel shares; fewer only when the image has fewer distinct colours."""
    small = image.convert("RGB")
    # Nearest sampling keeps real pixel colours; filtering would invent blends at every edge.
    small.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.NEAREST)
    pixels = np.asarray(small, dtype=np.float64).reshape(-1, 3) / 255
    lab = rgb_to_lab(pixels)
    distinct = np.unique(np.round(lab, 1), axis=0)
    k = min(MAX_COLORS, len(distinct))
    # One thread: 4096 points need no more, and after torch has run in this process, sklearn's
    # OpenMP pool and torch's spin against each other (measured 100x slower on 2 cores).
    with threadpool_limits(limits=1):
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(lab)
    counts = np.bincount(km.labels_, minlength=k).astype(np.float64)
    merged: dict[str, float] = {}
    for center, count in zip(km.cluster_centers_, counts):
        hex_color = rgb_to_hex(lab_to_rgb(center))
        merged[hex_color] = merged.get(hex_color, 0.0) + count
    ranked = sorted(merged.items(), key=lambda item: (-item[1], item[0]))
    total = sum(count for _, count in ranked)
    kept = [(c, n / total) for i, (c, n) in enumerate(ranked) if i < MIN_COLORS or n / total >= MIN_SHARE]
    kept_total = sum(share for _, share in kept)
    return Palette(colors=[c for c, _ in kept], shares=[float(share / kept_total) for _, share in kept])
