"""Dominant colours of an image: k-means in Lab on a downsampled copy, with a fixed seed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from assets.colorspace import lab_to_rgb, rgb_to_hex, rgb_to_lab
from assets.image_files import open_image
from resources.file_limits import MAX_FILE_BYTES

MAX_COLORS = 5
MIN_COLORS = 3
THUMBNAIL = 64  # pixels on the longer side: plenty for 5 colours, and k-means stays ~1 ms
MIN_SHARE = 0.03  # colours covering less than this are dropped while at least MIN_COLORS remain
RESTARTS = 3  # k-means++ starts; the one with the lowest inertia wins
MAX_ITERATIONS = 100
CONVERGED = 0.01  # Lab units a center may still move: far below one step of an 8-bit #RRGGBB


@dataclass(frozen=True)
class Palette:
    colors: list[str]  # '#RRGGBB', largest share first
    shares: list[float]


def extract_palette(image: Image.Image, seed: int = 0) -> Palette:
    """3-5 dominant colours with their pixel shares; fewer only when the image has fewer distinct colours."""
    small = image.convert("RGB")
    # Nearest sampling keeps real pixel colours; filtering would invent blends at every edge.
    small.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.NEAREST)
    rgb = np.asarray(small, dtype=np.uint8).reshape(-1, 3)
    # Each distinct colour once, with its pixel count: k-means on weighted colours is exact and
    # far smaller than on pixels (photos at 64 px have a few hundred to a few thousand colours).
    codes, counts = np.unique(rgb.astype(np.int64) @ np.array([65536, 256, 1]), return_counts=True)
    colours = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=1) / 255
    k = min(MAX_COLORS, len(codes))
    centers, labels = kmeans(rgb_to_lab(colours), counts.astype(np.float64), k, seed)
    totals = np.bincount(labels, weights=counts, minlength=k)
    merged: dict[str, float] = {}
    for center, count in zip(centers, totals):
        hex_color = rgb_to_hex(lab_to_rgb(center))
        merged[hex_color] = merged.get(hex_color, 0.0) + count
    ranked = sorted(merged.items(), key=lambda item: (-item[1], item[0]))
    total = sum(count for _, count in ranked)
    kept = [(c, n / total) for i, (c, n) in enumerate(ranked) if i < MIN_COLORS or n / total >= MIN_SHARE]
    kept_total = sum(share for _, share in kept)
    return Palette(colors=[c for c, _ in kept], shares=[float(share / kept_total) for _, share in kept])


def palette_of_file(image: tuple[str, str], folder: Path, max_pixels: int,
                    max_bytes: int = MAX_FILE_BYTES) -> tuple[Palette | Exception, float]:
    """The palette of one ``(image_id, path)`` and the milliseconds it took; the file must still
    hold the bytes its image_id (sha256) names (else ImageChanged). For worker processes, so a
    failure is returned rather than raised: one bad file must not stop the others."""
    start = time.perf_counter()
    image_id, rel_path = image
    try:
        decoded = open_image(folder, rel_path, max_pixels, sha256=image_id, max_bytes=max_bytes)
        result: Palette | Exception = extract_palette(decoded)
    except Exception as exc:  # noqa: BLE001 - the caller records it as this image's error
        result = exc
    return result, (time.perf_counter() - start) * 1000


def kmeans(points: np.ndarray, weights: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted k-means (Lloyd) from ``RESTARTS`` k-means++ starts; returns (centers, labels) of the best.

    Plain numpy on purpose: scikit-learn's KMeans spent most of its 6 ms per image in input
    checks, and its OpenMP pool fought torch's in the same process (threadpoolctl limits are
    process-wide, so they cannot be set safely from several threads at once).
    """
    rng = np.random.default_rng(seed)
    squared = (points**2).sum(axis=1)
    weighted = points * weights[:, None]

    def squared_distances(centers: np.ndarray) -> np.ndarray:  # (points, centers), via one small matmul
        return np.maximum(squared[:, None] - 2 * points @ centers.T + (centers**2).sum(axis=1)[None, :], 0)

    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(RESTARTS):
        centers = _plus_plus(points, weights, k, rng)
        for _ in range(MAX_ITERATIONS):
            labels = squared_distances(centers).argmin(axis=1)
            mass = np.bincount(labels, weights=weights, minlength=k)
            sums = np.stack([np.bincount(labels, weights=weighted[:, d], minlength=k) for d in range(3)], axis=1)
            moved = np.where(mass[:, None] > 0, sums / np.maximum(mass, 1e-12)[:, None], centers)
            if np.abs(moved - centers).max() < CONVERGED:
                break
            centers = moved
        distances = squared_distances(centers)
        labels = distances.argmin(axis=1)
        inertia = float((distances[np.arange(len(points)), labels] * weights).sum())
        if best is None or inertia < best[0]:
            best = (inertia, centers, labels)
    return best[1], best[2]


def _plus_plus(points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next center drawn with probability ∝ weight × squared distance."""
    centers = [points[rng.choice(len(points), p=weights / weights.sum())]]
    closest = ((points - centers[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        score = weights * closest
        if score.sum() <= 0:  # every colour already is a center
            break
        centers.append(points[rng.choice(len(points), p=score / score.sum())])
        closest = np.minimum(closest, ((points - centers[-1]) ** 2).sum(axis=1))
    return np.array(centers)
