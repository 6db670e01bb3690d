import hashlib
import io
from datetime import datetime

import numpy as np
from PIL import ExifTags, Image, ImageOps

from assets.batch_files import list_batch_files
from assets.image_files import DECODE_MIN_SIDE, inspect_file, open_image, to_rgb
from tests.conftest import MAX_PIXELS_IN_TESTS, SAMPLE, oriented_heic, write_bad_files


def test_lists_files_recursively_and_skips_hidden(images_root):
    batch = images_root / "mixed"
    names = [p.relative_to(batch).as_posix() for p in list_batch_files(batch)]
    assert "sub/chelsea_copy.png" in names
    assert ".hidden.png" not in names
    assert names == sorted(names)


def test_each_bad_file_becomes_an_error_with_its_reason(tmp_path):
    expected = write_bad_files(tmp_path)
    for name, word in expected.items():
        record = inspect_file(tmp_path / name, tmp_path, MAX_PIXELS_IN_TESTS)
        assert not record.ok, name
        assert word in record.error, (name, record.error)
        assert record.image_id == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()


def test_good_file_record(images_root):
    batch = images_root / "mixed"
    record = inspect_file(batch / "coffee.png", batch, MAX_PIXELS_IN_TESTS)
    assert record.ok and record.format == "PNG" and record.mode == "RGB"
    assert record.image_id == hashlib.sha256((batch / "coffee.png").read_bytes()).hexdigest()
    assert record.bytes == (batch / "coffee.png").stat().st_size


def test_exif_orientation_is_applied_before_anything_sees_the_image(images_root):
    batch = images_root / "mixed"
    record = inspect_file(batch / "rotated.jpg", batch, MAX_PIXELS_IN_TESTS)
    assert (record.width, record.height) == (20, 40)
    assert open_image(batch, "rotated.jpg", MAX_PIXELS_IN_TESTS).size == (20, 40)


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("L", (2, 2), 7)).getpixel((0, 0)) == (7, 7, 7)


def test_heic_photos_decode_upright(tmp_path):
    (tmp_path / "IMG_0001.HEIC").write_bytes(oriented_heic())
    record = inspect_file(tmp_path / "IMG_0001.HEIC", tmp_path, MAX_PIXELS_IN_TESTS)
    assert record.ok and record.format == "HEIF" and (record.width, record.height) == (32, 64)
    image = open_image(tmp_path, "IMG_0001.HEIC", MAX_PIXELS_IN_TESTS)
    top, bottom = image.getpixel((16, 8)), image.getpixel((16, 56))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # red on top: turned once, not twice


def test_a_damaged_heic_is_an_error_row(tmp_path):
    data = oriented_heic()
    (tmp_path / "cut.heic").write_bytes(data[: len(data) // 2])
    record = inspect_file(tmp_path / "cut.heic", tmp_path, MAX_PIXELS_IN_TESTS)
    assert not record.ok and "damaged" in record.error


def photo_like(width: int, height: int) -> Image.Image:
    """Smooth content with sensor-like noise (a sample photo scaled up), left half tinted red."""
    image = Image.open(SAMPLE / "chelsea.png").convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).integers(-6, 7, (height, width, 3))
    pixels = np.clip(np.asarray(image).astype(np.int16) + noise, 0, 255).astype(np.uint8)
    pixels[:, : width // 2, 0] = 250
    return Image.fromarray(pixels)


def test_large_jpegs_decode_at_a_reduced_scale_that_models_cannot_tell_apart(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: upright, the red half is on top
    photo_like(2000, 1000).save(tmp_path / "big.jpg", quality=92, exif=exif.tobytes())

    record = inspect_file(tmp_path / "big.jpg", tmp_path, MAX_PIXELS_IN_TESTS)
    assert (record.width, record.height) == (1000, 2000)  # the file's size, upright
    reduced = open_image(tmp_path, "big.jpg", MAX_PIXELS_IN_TESTS)
    assert reduced.size == (500, 1000)  # 1/2 scale: 1/4 would make a side shorter than DECODE_MIN_SIDE
    assert min(reduced.size) >= DECODE_MIN_SIDE
    assert reduced.getpixel((250, 100))[0] > 200 and reduced.getpixel((250, 900))[0] < 200

    # What a model sees (224 px) is the same as from the full decode, to within a grey level.
    with Image.open(tmp_path / "big.jpg") as full:
        full = ImageOps.exif_transpose(full).convert("RGB")
    small = [np.asarray(im.resize((224, 224), Image.Resampling.BICUBIC), dtype=np.float32) for im in (reduced, full)]
    assert np.abs(small[0] - small[1]).mean() < 1.0  # measured: 0.22


def test_reduced_decoding_still_reads_the_whole_file(tmp_path):
    buffer = io.BytesIO()
    photo_like(2000, 1000).save(buffer, format="JPEG", quality=92)
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    record = inspect_file(tmp_path / "cut.jpg", tmp_path, MAX_PIXELS_IN_TESTS)
    assert not record.ok and "truncated" in record.error


def test_other_formats_decode_at_full_size(tmp_path):
    photo_like(1200, 1000).save(tmp_path / "big.png")
    assert open_image(tmp_path, "big.png", MAX_PIXELS_IN_TESTS).size == (1200, 1000)


def test_16_bit_and_float_greyscale_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "scan16.png")  # 16-bit greyscale
    rgb = np.asarray(open_image(tmp_path, "scan16.png", MAX_PIXELS_IN_TESTS))
    np.testing.assert_allclose(rgb[..., 0], ramp / 257, atol=0.51)
    assert (rgb[..., 0] == rgb[..., 2]).all()
    unit = Image.fromarray((ramp / 65535).astype(np.float32), "F")
    np.testing.assert_allclose(np.asarray(to_rgb(unit))[..., 1], ramp / 257, atol=0.51)


def jpeg_with_exif(path, **tags):
    exif = Image.Exif()
    for name, value in tags.items():
        if name == "DateTimeOriginal":
            exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = value
        else:
            exif[getattr(ExifTags.Base, name)] = value
    Image.new("RGB", (40, 30)).save(path, exif=exif.tobytes())


def test_capture_time_comes_from_exif(tmp_path):
    jpeg_with_exif(tmp_path / "shot.jpg", DateTimeOriginal="2023:07:14 18:02:33", DateTime="2024:01:01 00:00:00")
    jpeg_with_exif(tmp_path / "edited.jpg", DateTime="2024:01:02 03:04:05")  # no shutter time: last written
    jpeg_with_exif(tmp_path / "unset.jpg", DateTimeOriginal="0000:00:00 00:00:00")  # a camera's placeholder
    Image.new("RGB", (40, 30)).save(tmp_path / "plain.png")
    taken = {p.name: inspect_file(p, tmp_path, MAX_PIXELS_IN_TESTS).taken_at for p in tmp_path.iterdir()}
    assert taken == {"shot.jpg": datetime(2023, 7, 14, 18, 2, 33), "edited.jpg": datetime(2024, 1, 2, 3, 4, 5),
                     "unset.jpg": None, "plain.png": None}
