"""Per-image CPU work in worker processes: same results, same order, failures kept as values."""

import hashlib
from functools import partial

import numpy as np
import pytest
from PIL import Image

from assets.image_files import inspect_file
from assets.palette import extract_palette, palette_of_file
from resources.parallel import MIN_ITEMS_PER_WORKER, process_map, worker_count
from tests.conftest import oriented_heic


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(2 * MIN_ITEMS_PER_WORKER + 3):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    (root / "17.png").write_bytes(b"not an image")
    (root / "18.heic").write_bytes(oriented_heic())  # the HEIF opener must be registered in workers too
    return root


def test_processes_give_what_one_process_gives_in_order(folder):
    files = sorted(folder.iterdir())
    inspect = partial(inspect_file, batch_dir=folder, max_pixels=10**8)
    serial = [r.image_id for r in map(inspect, files)]
    parallel = process_map(inspect, files, workers=2)
    assert [r.image_id for r in parallel] == serial
    assert [r.path for r in parallel if not r.ok] == ["17.png"]
    assert [(r.format, r.width, r.height) for r in parallel if r.path == "18.heic"] == [("HEIF", 32, 64)]


def test_a_broken_file_is_returned_as_its_error_and_the_others_still_get_palettes(folder):
    names = sorted(p.name for p in folder.iterdir())
    images = [(hashlib.sha256((folder / name).read_bytes()).hexdigest(), name) for name in names]
    outcomes = process_map(partial(palette_of_file, folder=folder, max_pixels=10**8), images, workers=2)
    failed = [name for name, (result, _) in zip(names, outcomes) if isinstance(result, Exception)]
    assert failed == ["17.png"]
    first, ms = outcomes[0]
    assert first == extract_palette(Image.open(folder / names[0])) and ms > 0


def test_small_batches_stay_in_this_process():
    # A lambda cannot be sent to another process, so this passes only without workers.
    assert process_map(lambda x: x + 1, range(MIN_ITEMS_PER_WORKER + 5), workers=8) == list(range(1, MIN_ITEMS_PER_WORKER + 6))


def test_worker_count():
    assert worker_count(3) == 3
    assert 1 <= worker_count(0) <= 16
    with pytest.raises(ValueError):
        worker_count(-1)
