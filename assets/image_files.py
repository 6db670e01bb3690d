"""Hashing and decoding the image files of a batch. Bad files become errors, never exceptions.

Every model sees the image as ``open_image`` returns it: decoded (JPEGs at a reduced scale,
see ``DECODE_MIN_SIDE``), EXIF orientation applied, RGB. Files are read through
``assets.batch_files``: only regular files inside the images root, at most ``max_file_bytes``.
A file is identified from its header before it is read whole, and the bytes that are hashed are
the bytes that are decoded, so a result stored under a sha256 comes from that file.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from assets.batch_files import FileRefused, hash_whole, open_batch_file, read_batch_file, read_whole, too_large
from resources.file_limits import MAX_FILE_BYTES

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
DECODING = f"jpeg-reduced-to-{DECODE_MIN_SIDE},high-bit-depth-stretched-to-its-range"
NOT_AN_IMAGE = "not an image Pillow can read (unknown format or damaged header)"


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


class ImageDecodeError(Exception):
    """A file that cannot be used; the message is its error row's reason."""


class ImageChanged(ImageDecodeError):
    """The file is no longer what the ``images`` step hashed: nothing may be stored under that sha256."""


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


def _follow_pixel_limit(max_pixels: int) -> None:
    """Pillow refuses, before our check can run, images over twice its own process-wide limit: that
    limit is raised (never lowered) so that a ``max_image_pixels`` above Pillow's default holds."""
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def open_checked(fp: IO[bytes], max_pixels: int) -> Image.Image:
    """Pillow's image of ``fp`` with only its header read, or ImageDecodeError when it is no image
    or has more than ``max_pixels`` pixels."""
    _follow_pixel_limit(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the exact check is below
            image = Image.open(fp)
    except UnidentifiedImageError:
        raise ImageDecodeError(NOT_AN_IMAGE) from None
    except Image.DecompressionBombError:
        raise ImageDecodeError(f"too large: over max_image_pixels ({max_pixels})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"cannot decode: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"too large: {width}x{height} = {width * height} pixels, over max_image_pixels ({max_pixels})")
    return image


def decode(data: bytes, max_pixels: int) -> Decoded:
    """Decode all of the file (so truncation surfaces here) and apply EXIF orientation."""
    image = open_checked(io.BytesIO(data), max_pixels)
    try:
        width, height = image.size
        image_format = image.format
        exif = image.getexif()
        turned = exif.get(ExifTags.Base.Orientation) in (5, 6, 7, 8)  # a quarter turn
        image.draft(None, (DECODE_MIN_SIDE, DECODE_MIN_SIDE))  # no-op for formats other than JPEG
        image.load()
        image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombError:  # a frame or tile larger than the header said
        raise ImageDecodeError(f"too large: over max_image_pixels ({max_pixels})") from None
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
    """16-bit, 32-bit and float greyscale (scans, scientific and sensor data) stretched from its
    darkest to its brightest value onto 0-255. Pillow's own conversion clips at 255, which turns a
    16-bit photo white; scaling by the type's full range leaves data that uses little of it (12-bit
    values in a 16-bit file, a faint scan at 291-694 of 65535) almost black."""
    pixels = np.asarray(image, dtype=np.float64)
    finite = pixels[np.isfinite(pixels)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if high > low:
        scaled = (pixels - low) * (255.0 / (high - low))
    else:  # one value everywhere: its level in the type's range, so a blank white scan stays white
        scaled = pixels * (255.0 / _full_scale(image.mode, high))
    return Image.fromarray(np.clip(np.nan_to_num(scaled) + 0.5, 0, 255).astype(np.uint8), "L")


def _full_scale(mode: str, peak: float) -> float:
    if mode == "F":
        return 1.0 if peak <= 1.0 else peak
    # 'I;16*' is 16-bit; 'I' holds 16-bit PNGs in some Pillow versions, else any 32-bit range
    return 65535.0 if mode.startswith("I;16") or peak <= 65535 else peak


def is_text(name: str) -> bool:
    """Whether a file name decoded by the OS (undecodable bytes become surrogates) is valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def inspect_file(path: Path, batch_dir: Path, max_pixels: int, max_bytes: int = MAX_FILE_BYTES) -> ImageRecord:
    """Hash and decode one file; any failure is described in ``error``.

    The header is checked first, so a file that is no image (or over ``max_pixels``) is only
    hashed, in chunks, and never held in memory; one over ``max_bytes`` is not read at all.
    """
    start = time.perf_counter()
    rel = path.relative_to(batch_dir).as_posix()

    def failed(reason: str, image_id: str = "", size: int = 0) -> ImageRecord:
        return ImageRecord(image_id=image_id, path=rel, bytes=size, error=reason,
                           ms=(time.perf_counter() - start) * 1000)

    if not is_text(rel):
        # Parquet strings are UTF-8: the row shows the name escaped (\xe9), and a later step could
        # not find the file by that name, so it is not read at all.
        rel = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return failed("file name is not valid UTF-8: rename the file to process it")

    try:
        with open_batch_file(path, batch_dir) as file:
            size = os.fstat(file.fileno()).st_size
            if size > max_bytes:
                return failed(too_large(size, max_bytes), size=size)
            try:
                with open_checked(file, max_pixels):  # leaves ``file`` open: Pillow did not open it
                    pass
            except ImageDecodeError as exc:
                file.seek(0)
                return failed(str(exc), hash_whole(file, max_bytes), size)
            file.seek(0)
            data = read_whole(file, max_bytes)
    except FileRefused as exc:
        return failed(str(exc))
    except OSError as exc:
        return failed(f"cannot read file: {exc.strerror or exc}")
    image_id = hashlib.sha256(data).hexdigest()
    try:
        decoded = decode(data, max_pixels)
    except ImageDecodeError as exc:
        return failed(str(exc), image_id, len(data))
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


def open_image(batch_dir: Path, rel_path: str, max_pixels: int, *, sha256: str | None = None,
               max_bytes: int = MAX_FILE_BYTES) -> Image.Image:
    """The image exactly as every model sees it: decoded, oriented, RGB.

    With ``sha256`` (what the ``images`` step hashed), the file is read once and the bytes decoded
    are checked to be those: anything else (other bytes, a FIFO, a link out of the root) raises
    ImageChanged, whose message ``changed during the run: …`` becomes the image's error row.
    """
    try:
        data = read_batch_file(batch_dir / rel_path, batch_dir, max_bytes)
    except (FileRefused, OSError) as exc:
        reason = str(exc) if isinstance(exc, FileRefused) else f"cannot read file: {exc.strerror or exc}"
        if sha256 is None:
            raise ImageDecodeError(reason) from None
        raise ImageChanged(f"changed during the run: {reason}") from None
    if sha256 is not None and (now := hashlib.sha256(data).hexdigest()) != sha256:
        raise ImageChanged(f"changed during the run: sha256 was {sha256}, now {now}")
    return to_rgb(decode(data, max_pixels).image)
