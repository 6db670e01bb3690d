import hashlib

from PIL import Image

from assets.image_files import inspect_file, list_batch_files, open_image, to_rgb
from tests.conftest import MAX_PIXELS_IN_TESTS, oriented_heic, write_bad_files


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
