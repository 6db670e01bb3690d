"""Finding and decoding the image files of a batch. Bad files become errors, never exceptions.

Every model sees the image as ``open_image`` returns it: decoded (JPEGs at a reduced scale,
see ``DECODE_MIN_SIDE``), EXIF orientation applied, RGB.
"""

from __future__ import annotations

import hashlib
import io
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

# Phones save photos as HEIC by default. Registered at import, so worker processes decode them too.
# pillow-heif applies the file's rotation itself and resets EXIF orientation, so nothing turns twice.
register_heif_opener()

# Models look at 224 px (BLIP-2, CLIP ViT-B-32), palettes at 64. A JPEG is decoded at the largest
# DCT reduction (1/2, 1/4, 1/8) that keeps both sides at least this long: a 12 MP photo decodes
# 2.3x faster and every resize after it handles 1/16 of the pixels. The whole file is still
# read, so truncation still surfaces. Other formats decode at full size.
DECODE_MIN_SIDE = 448
# Part of every model result's fingerprint: results from differently decoded pixels are not reused.
# Change it with anything that changes the pixels a model is given.
DECODING = f"jpeg-reduced-to-{DECODE_MIN_SIDE},high-bit-depth-scaled"


@dataclass(frozen=True)
class ImageRecord:
    image_id: str  # sha256 of the file's bytes
    path: str  # relative to the batch folder, '/'-separated
    bytes: int
    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    taken_at: datetime | None = None  # when the photo was taken, camera-local time, from EXIF
    error: str | None = None
    ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def list_batch_files(batch_dir: Path) -> list[Path]:
    """Every regular file under the batch folder, recursively, skipping hidden files and folders."""
    if not batch_dir.is_dir():
        raise FileNotFoundError(f"batch folder {batch_dir} does not exist")
    files = []
    for path in batch_dir.rglob("*"):
        rel = path.relative_to(batch_dir)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(batch_dir).as_posix())


class ImageDecodeError(Exception):
    pass


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # oriented; a JPEG's at a reduced scale, no side under DECODE_MIN_SIDE
    format: str | None
    size: tuple[int, int]  # the file's full size, oriented (width, height)
    taken_at: datetime | None


def taken_at(exif: Image.Exif) -> datetime | None:
    """DateTimeOriginal (when the shutter fired), else DateTime (last written); None when absent or
    not a real date. EXIF keeps the camera's local time without a zone, and so does this."""
    for value in (exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.DateTimeOriginal),
                  exif.get(ExifTags.Base.DateTime)):
        try:
            return datetime.strptime(str(value).strip("\x00 "), "%Y:%m:%d %H:%M:%S")
        except ValueError:  # absent (None), blank, or the all-zero placeholder some cameras write
            continue
    return None


def decode(data: bytes, max_pixels: int) -> Decoded:
    """Decode all of the file (so truncation surfaces here) and apply EXIF orientation."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"too large: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
                )
            image_format = image.format
            exif = image.getexif()
            turned = exif.get(ExifTags.Base.Orientation) in (5, 6, 7, 8)  # a quarter turn
            image.draft(None, (DECODE_MIN_SIDE, DECODE_MIN_SIDE))  # no-op for formats other than JPEG
            image.load()
            image = ImageOps.exif_transpose(image)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image Pillow can read (unknown format or damaged header)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"cannot decode: {exc}") from None
    return Decoded(image, image_format, (height, width) if turned else (width, height), taken_at(exif))


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for the models; transparent areas are composited onto white rather than black."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8_bit(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float greyscale (scans, scientific images) scaled into 0-255: Pillow's own
    conversion clips at 255, which turns a 16-bit photo white."""
    pixels = np.asarray(image, dtype=np.float64)
    peak = float(pixels.max(initial=0.0))
    if image.mode == "F":
        full_scale = 1.0 if peak <= 1.0 else peak
    else:  # 'I;16*' is 16-bit; 'I' holds 16-bit PNGs in some Pillow versions, else any 32-bit range
        full_scale = 65535.0 if image.mode.startswith("I;16") or peak <= 65535 else peak
    return Image.fromarray(np.clip(pixels * (255.0 / full_scale) + 0.5, 0, 255).astype(np.uint8), "L")


def inspect_file(path: Path, batch_dir: Path, max_pixels: int) -> ImageRecord:
    """Hash and decode one file; any failure is described in ``error``."""
    start = time.perf_counter()
    rel = path.relative_to(batch_dir).as_posix()
    try:
        data = path.read_bytes()
    except OSError as exc:
        return ImageRecord(image_id="", path=rel, bytes=0, error=f"cannot read file: {exc.strerror or exc}")
    image_id = hashlib.sha256(data).hexdigest()
    try:
        decoded = decode(data, max_pixels)
    except ImageDecodeError as exc:
        return ImageRecord(image_id=image_id, path=rel, bytes=len(data), error=str(exc),
                           ms=(time.perf_counter() - start) * 1000)
    return ImageRecord(
        image_id=image_id,
        path=rel,
        bytes=len(data),
        format=decoded.format,
        width=decoded.size[0],
        height=decoded.size[1],
        mode=decoded.image.mode,
        taken_at=decoded.taken_at,
        ms=(time.perf_counter() - start) * 1000,
    )


def open_image(batch_dir: Path, rel_path: str, max_pixels: int) -> Image.Image:
    """The image exactly as every model sees it: decoded, oriented, RGB."""
    return to_rgb(decode((batch_dir / rel_path).read_bytes(), max_pixels).image)
