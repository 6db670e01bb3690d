"""Perceptual hash and sharpness of an image: what tells a resized, re-encoded or slightly cropped
copy of a photo from another photo, and which copy is the better one.

pHash: the image as 32x32 greyscale, its 2-D DCT, and one bit per low frequency (the 8x8 corner
without the DC term's influence: each bit says whether that coefficient is above the block's
median). Resizing and JPEG re-encoding barely move the low frequencies; a crop of a few percent
moves them a little; another photo moves about half the bits. Hamming distance compares hashes.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

HASH_SIDE = 32
LOW = 8  # 8x8 low frequencies: 64 bits
SHARPNESS_SIDE = 256  # sharpness is measured at one size, so a smaller copy cannot look sharper by being small


@lru_cache(maxsize=1)
def _dct_matrix(n: int = HASH_SIDE) -> np.ndarray:
    k = np.arange(n)[:, None]
    basis = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n))
    basis[0] *= 1 / np.sqrt(2)
    return basis * np.sqrt(2 / n)


def phash(image: Image.Image) -> int:
    """64-bit perceptual hash (an unsigned int: bit i is low-frequency coefficient i above the median)."""
    grey = np.asarray(image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS), dtype=np.float64)
    dct = _dct_matrix() @ grey @ _dct_matrix().T
    low = dct[:LOW, :LOW].ravel()
    bits = low > np.median(low[1:])  # the DC term (overall brightness) would skew the median
    return int(np.packbits(bits).view(">u8")[0])


def sharpness(image: Image.Image) -> float:
    """Variance of the Laplacian of the greyscale image at SHARPNESS_SIDE px: higher is sharper."""
    grey = np.asarray(image.convert("L").resize((SHARPNESS_SIDE, SHARPNESS_SIDE), Image.Resampling.BILINEAR),
                      dtype=np.float64)
    laplacian = (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1])
    return float(laplacian.var())


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between uint64 hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int32) if hasattr(np, "bitwise_count") else \
        np.unpackbits(np.bitwise_xor(a, b)[..., None].view(np.uint8), axis=-1).sum(-1).astype(np.int32)
