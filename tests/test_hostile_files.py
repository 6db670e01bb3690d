"""Hostile batch folders: links out of the images root, FIFOs and sockets, files swapped between
hashing and the model steps, huge files, faint 16-bit data and decompression bombs.

Everything here is real: FIFOs, sockets and links in tmp_path, sparse multi-GB files, the real
``images``, ``color_palettes`` and ``clip_embeddings`` assets through Dagster. Opening a FIFO to
read blocks until a writer comes, so a step that opens one would hang: calls that could are run
on a thread with a deadline (``finishes_within``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import socket
import struct
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, build_sensor_context, materialize
from PIL import Image

from assets.batch_files import BatchOutsideRoot, list_batch_files
from assets.clip_embeddings import clip_embeddings
from assets.color_palettes import color_palettes
from assets.image_files import ImageChanged, ImageDecodeError, inspect_file, open_checked, open_image
from assets.images import images
from assets.parquet_schemas import KEY_FIELDS
from assets.per_image import Failed, run_image_model
from assets.reuse import ModelStep
from assets.palette import palette_of_file
from dagster_project.sensors import SKIPPED_FOLDERS_TAG, batch_folder_sensor, folder_signature
from resources.file_limits import MAX_FILE_BYTES
from resources.settings import PixelsiftSettings
from resources.warehouse import ParquetWarehouse, partition_file
from tests.conftest import MAX_PIXELS_IN_TESTS

OUTSIDE = "points outside the images root"
DEADLINE_S = 10


def finishes_within(seconds: float, fn, *args, fifos=()):
    """``fn(*args)``, or a test failure if it has not returned after ``seconds``. A reader blocked
    on one of ``fifos`` is then released (a writer opens and closes it), so nothing is left hanging."""
    outcome = {}

    def target():
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for _ in range(100):
            for fifo in fifos:
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:  # no reader waiting on it right now
                    pass
            thread.join(0.05)
            if not thread.is_alive():
                break
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not return within {seconds} s: it opened a FIFO")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def write_png(path: Path, color: tuple[int, int, int], seed: int = 0) -> bytes:
    """A small PNG with some texture, so palettes and embeddings have something to see."""
    noise = np.random.default_rng(seed).integers(0, 40, (24, 32, 3))
    pixels = np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path.read_bytes()


def replace_file(path: Path, data: bytes) -> None:
    """Swap in new content the way an editor or sync tool saves: a new file renamed over the old one."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(data)
    os.replace(fresh, path)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rows_by_path(table) -> dict[str, dict]:
    return {r["path"]: r for r in table.to_pylist()}


@pytest.fixture
def layout(tmp_path):
    """(images root, batch 'trip' with one photo, a folder outside the root)."""
    root, outside = tmp_path / "images", tmp_path / "outside"
    outside.mkdir()
    write_png(root / "trip" / "good.png", (200, 40, 40))
    return root, root / "trip", outside


# Item 2: nothing outside the images root is read.


def test_links_out_of_the_root_are_error_rows_and_their_targets_never_opened(layout):
    root, batch, outside = layout
    trap = outside / "trap.fifo"
    os.mkfifo(trap)  # opened for reading, it would block until a writer comes
    write_png(outside / "secret.png", (0, 0, 200))
    (batch / "absolute.jpg").symlink_to(trap)
    (batch / "relative.png").symlink_to(Path("..", "..", "outside", "secret.png"))
    (batch / "null.jpg").symlink_to("/dev/null")  # a character device
    (batch / "environ.txt").symlink_to("/proc/self/environ")  # the process's secrets
    (batch / "elsewhere").symlink_to(outside, target_is_directory=True)  # a folder out of the root

    listed = finishes_within(DEADLINE_S, list_batch_files, batch, fifos=[trap])
    names = [p.relative_to(batch).as_posix() for p in listed]
    # Each link has its row (nothing vanishes), and the folder out of the root is not entered.
    assert names == ["absolute.jpg", "elsewhere", "environ.txt", "good.png", "null.jpg", "relative.png"]

    records = finishes_within(DEADLINE_S, lambda: [inspect_file(p, batch, MAX_PIXELS_IN_TESTS) for p in listed],
                              fifos=[trap])
    for record in records:
        if record.path == "good.png":
            assert record.ok
        else:  # not hashed: the target's bytes were never read
            assert (record.error, record.image_id, record.bytes) == (OUTSIDE, "", 0), record
    with pytest.raises(ImageDecodeError, match=OUTSIDE):
        finishes_within(DEADLINE_S, open_image, batch, "absolute.jpg", MAX_PIXELS_IN_TESTS, fifos=[trap])


def test_fifos_and_sockets_in_a_batch_are_error_rows_and_never_opened(layout):
    root, batch, _ = layout
    pipe = batch / "pipe.jpg"
    os.mkfifo(pipe)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(batch / "s.sock"))
        listed = finishes_within(DEADLINE_S, list_batch_files, batch, fifos=[pipe])
        records = finishes_within(DEADLINE_S, lambda: {r.path: r for r in (
            inspect_file(p, batch, MAX_PIXELS_IN_TESTS) for p in listed)}, fifos=[pipe])
    assert sorted(records) == ["good.png", "pipe.jpg", "s.sock"]
    assert records["pipe.jpg"].error == "not a regular file (FIFO)"
    assert records["s.sock"].error == "not a regular file (socket)"
    assert records["good.png"].ok
    with pytest.raises(ImageDecodeError, match=r"not a regular file \(FIFO\)"):
        finishes_within(DEADLINE_S, open_image, batch, "pipe.jpg", MAX_PIXELS_IN_TESTS, fifos=[pipe])


def test_the_images_step_gives_every_hostile_entry_its_row(layout, tmp_path):
    root, batch, outside = layout
    os.mkfifo(batch / "pipe.jpg")
    write_png(outside / "secret.png", (0, 0, 200))
    (batch / "out.png").symlink_to(outside / "secret.png")
    (batch / "gone.png").symlink_to(batch / "deleted.png")  # a broken link
    # A name that is not UTF-8 (Latin-1 from an old camera or archive): Parquet strings cannot hold it.
    with open(os.fsencode(batch) + b"/caf\xe9.png", "wb") as latin1:
        latin1.write((batch / "good.png").read_bytes())
    settings = PixelsiftSettings(images_root=str(root), warehouse_dir=str(tmp_path / "wh"),
                                 max_image_pixels=MAX_PIXELS_IN_TESTS)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", ["trip"])

    def run():
        return materialize([images], partition_key="trip", instance=instance, resources={
            "settings": settings, "io_manager": ParquetWarehouse(root=settings.warehouse_dir)})

    assert finishes_within(60, run, fifos=[batch / "pipe.jpg"]).success
    rows = rows_by_path(pq.read_table(partition_file(tmp_path / "wh", "images", "trip")))
    assert {path: row["error"] for path, row in rows.items()} == {
        "good.png": None, "out.png": OUTSIDE, "pipe.jpg": "not a regular file (FIFO)",
        "gone.png": "cannot read file: No such file or directory",
        "caf\\xe9.png": "file name is not valid UTF-8: rename the file to process it"}


def test_links_inside_the_root_are_followed_once_and_cyclic_links_end(layout):
    root, batch, _ = layout
    shared = write_png(root / "other" / "shared.png", (20, 160, 20))  # another batch's photo
    (batch / "linked.png").symlink_to(Path("..", "other", "shared.png"))
    (batch / "album").symlink_to(Path("..", "other"), target_is_directory=True)
    (batch / "sub").mkdir()
    (batch / "sub" / "again").symlink_to(Path("..", "..", "other"), target_is_directory=True)  # listed once
    (batch / "sub" / "up").symlink_to(Path(".."), target_is_directory=True)  # a cycle back to the batch
    (batch / "self").symlink_to(Path("."), target_is_directory=True)

    listed = finishes_within(DEADLINE_S, list_batch_files, batch)
    assert [p.relative_to(batch).as_posix() for p in listed] == ["album/shared.png", "good.png", "linked.png"]
    for path in listed:
        record = inspect_file(path, batch, MAX_PIXELS_IN_TESTS)
        assert record.ok, record
    assert inspect_file(batch / "linked.png", batch, MAX_PIXELS_IN_TESTS).image_id == sha256(shared)


def test_a_batch_folder_that_links_out_of_the_root_is_refused(layout, tmp_path):
    root, batch, outside = layout
    write_png(outside / "photos" / "a.png", (10, 10, 10))
    (root / "away").symlink_to(outside / "photos", target_is_directory=True)

    with pytest.raises(BatchOutsideRoot, match=OUTSIDE):
        list_batch_files(root / "away")

    # The images step refuses the batch with that reason; nothing of it is hashed or stored.
    settings = PixelsiftSettings(images_root=str(root), warehouse_dir=str(tmp_path / "wh"),
                                 max_image_pixels=MAX_PIXELS_IN_TESTS, baselines_dir=str(tmp_path / "none"))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", ["away"])
    result = materialize([images], partition_key="away", instance=instance, raise_on_error=False, resources={
        "settings": settings, "io_manager": ParquetWarehouse(root=settings.warehouse_dir)})
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert OUTSIDE in str(failure.event_specific_data.error)
    assert not partition_file(tmp_path / "wh", "images", "away").exists()

    # The folder sensor skips it (with a warning) and still runs the batch beside it, FIFO and all.
    os.mkfifo(batch / "pipe.jpg")
    # A cursor: a tick after the first, which registers folders without running them.
    context = build_sensor_context(instance=DagsterInstance.ephemeral(), cursor="{}", resources={"settings": settings})
    sensed = finishes_within(DEADLINE_S, batch_folder_sensor, context, fifos=[batch / "pipe.jpg"])
    assert [r.partition_key for r in sensed.run_requests] == ["trip"]
    assert OUTSIDE in sensed.run_requests[0].tags[SKIPPED_FOLDERS_TAG]  # 'away', shown on the run


def test_a_fifo_or_a_broken_link_appearing_in_a_batch_is_a_change_the_sensor_sees(layout):
    _, batch, _ = layout
    before = folder_signature(batch)
    os.mkfifo(batch / "pipe.jpg")
    with_fifo = finishes_within(DEADLINE_S, folder_signature, batch, fifos=[batch / "pipe.jpg"])
    (batch / "gone.png").symlink_to(batch / "deleted.png")
    assert len({before, with_fifo, folder_signature(batch)}) == 3  # each is a new row: the batch runs again


# Item 3: what is stored under a sha256 is what was hashed.


def test_a_file_replaced_after_hashing_is_refused_by_the_model_steps(layout, tmp_path):
    _, batch, _ = layout
    original = (batch / "good.png").read_bytes()
    other = write_png(batch / "other.png", (0, 90, 200), seed=1)
    hashed = {p.name: inspect_file(p, batch, MAX_PIXELS_IN_TESTS).image_id for p in batch.iterdir()}
    assert hashed["good.png"] == sha256(original)

    replaced = write_png(batch / "scratch.png", (250, 250, 0), seed=2)
    replace_file(batch / "good.png", replaced)
    reason = f"changed during the run: sha256 was {sha256(original)}, now {sha256(replaced)}"
    with pytest.raises(ImageChanged) as raised:
        open_image(batch, "good.png", MAX_PIXELS_IN_TESTS, sha256=hashed["good.png"])
    assert str(raised.value) == reason
    palette, _ = palette_of_file((hashed["good.png"], "good.png"), batch, MAX_PIXELS_IN_TESTS)
    assert isinstance(palette, ImageChanged) and str(palette) == reason
    assert open_image(batch, "other.png", MAX_PIXELS_IN_TESTS, sha256=sha256(other)).size == (32, 24)

    # In a model step: the changed image is its own error row, not a model failure, and is never
    # sent to the model; its chunk-mate goes in one call, not retried alone.
    calls = []
    images = pa.table({"image_id": [hashed["good.png"], hashed["other.png"]], "path": ["good.png", "other.png"],
                       "status": ["ok", "ok"], "error": [None, None]})
    schema = pa.schema([*KEY_FIELDS, pa.field("width", pa.int64()), pa.field("fingerprint", pa.string()),
                        pa.field("reused", pa.bool_())])
    settings = PixelsiftSettings(images_root=str(batch.parent), warehouse_dir=str(tmp_path / "wh"))
    step = ModelStep(settings, "widths", batch.name, schema, logging.getLogger("test"))
    results, _ = run_image_model(images, step, fingerprint="widths", chunk_size=2, to_fields=lambda w: {"width": w},
                                 infer=lambda ims: calls.append(len(ims)) or [im.size[0] for im in ims])
    assert results[hashed["good.png"]] == Failed(reason)
    assert results[hashed["other.png"]]["width"] == 32 and calls == [1]

    # Swapped for a FIFO: refused without opening it.
    (batch / "good.png").unlink()
    os.mkfifo(batch / "good.png")
    with pytest.raises(ImageChanged, match=r"^changed during the run: not a regular file \(FIFO\)$"):
        finishes_within(DEADLINE_S, lambda: open_image(batch, "good.png", MAX_PIXELS_IN_TESTS,
                                                       sha256=hashed["good.png"]), fifos=[batch / "good.png"])


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from resources.clip_embedder import ClipEmbedderResource
    from resources.tiny.clip import build_tiny_clip

    path = build_tiny_clip(tmp_path_factory.mktemp("tiny_clip") / "clip")
    return ClipEmbedderResource(model=str(path), device="cpu", dtype="float32")


def test_the_pipeline_stores_nothing_under_a_sha256_whose_file_changed(layout, tmp_path, tiny_clip):
    root, batch, _ = layout
    genuine = (batch / "good.png").read_bytes()
    for i, name in enumerate(["b.png", "c.png"]):
        write_png(batch / name, (40 * i, 120, 200), seed=i + 3)
    warehouse = tmp_path / "wh"
    settings = PixelsiftSettings(images_root=str(root), warehouse_dir=str(warehouse),
                                 max_image_pixels=MAX_PIXELS_IN_TESTS)
    resources = {"settings": settings, "io_manager": ParquetWarehouse(root=str(warehouse)), "clip_embedder": tiny_clip}
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", ["trip", "later"])
    stages = [images, color_palettes, clip_embeddings]

    assert materialize([images], partition_key="trip", instance=instance, resources=resources).success
    replaced = write_png(tmp_path / "replacement.png", (250, 250, 0), seed=9)
    replace_file(batch / "good.png", replaced)  # between the images step and the model steps
    assert materialize(stages, selection=[color_palettes, clip_embeddings], partition_key="trip",
                       instance=instance, resources=resources).success

    reason = f"changed during the run: sha256 was {sha256(genuine)}, now {sha256(replaced)}"
    for asset in ("color_palettes", "clip_embeddings"):
        rows = rows_by_path(pq.read_table(partition_file(warehouse, asset, "trip")))
        assert (rows["good.png"]["status"], rows["good.png"]["error"]) == ("error", reason), asset
        assert rows["b.png"]["status"] == rows["c.png"]["status"] == "ok", asset
    # Nor in any saved chunk (.cache/partial), which reuse reads too.
    results = [f for f in warehouse.rglob("*.parquet") if {"color_palettes", "clip_embeddings"} & set(f.parts)]
    stored = [row for f in results for row in pq.read_table(f).to_pylist()]
    assert stored and not [r for r in stored if r["image_id"] == sha256(genuine) and r["status"] == "ok"]

    # A later batch holding the genuine file computes its own results: nothing wrong is reused.
    (root / "later").mkdir()
    (root / "later" / "good.png").write_bytes(genuine)
    assert materialize(stages, partition_key="later", instance=instance, resources=resources).success
    [later] = pq.read_table(partition_file(warehouse, "clip_embeddings", "later")).to_pylist()
    assert (later["image_id"], later["status"], later["reused"]) == (sha256(genuine), "ok", False)


# Item 7: resource bounds.


def peak_python_memory(fn, *args, **kwargs):
    """``fn``'s result, its seconds and the peak of Python allocations while it ran."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
        return result, time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_file_over_max_file_bytes_is_refused_without_being_read(layout):
    _, batch, _ = layout
    huge = batch / "huge.jpg"
    size = 3 * 1024**3
    with open(huge, "wb") as file:  # a real JPEG header, then 3 GiB of sparse nothing
        file.write((batch / "good.png").read_bytes())
        file.truncate(size)
    assert PixelsiftSettings().max_file_bytes == MAX_FILE_BYTES == 512 * 1024**2

    record, seconds, peak = peak_python_memory(inspect_file, huge, batch, MAX_PIXELS_IN_TESTS,
                                               max_bytes=MAX_FILE_BYTES)
    assert record.error == f"too large: {size} bytes, over max_file_bytes ({MAX_FILE_BYTES})"
    assert (record.image_id, record.bytes) == ("", size)
    assert seconds < 1 and peak < 1024**2  # nothing read: reading it took 3 GiB and 10 s
    with pytest.raises(ImageDecodeError, match="^too large: "):
        open_image(batch, "huge.jpg", MAX_PIXELS_IN_TESTS, max_bytes=MAX_FILE_BYTES)


def test_a_big_file_that_is_no_image_is_hashed_in_chunks_never_held(layout):
    _, batch, _ = layout
    blob = batch / "blob.jpg"
    size = 200 * 1024**2
    with open(blob, "wb") as file:
        file.truncate(size)  # zeros: no image format's header
    expected = hashlib.sha256()
    for _ in range(size // 1024**2):
        expected.update(bytes(1024**2))

    record, _, peak = peak_python_memory(inspect_file, blob, batch, MAX_PIXELS_IN_TESTS)
    assert record.error.startswith("not an image") and record.image_id == expected.hexdigest()
    assert record.bytes == size and peak < 8 * 1024**2  # a chunk at a time, not the 200 MiB


def test_16_bit_data_in_a_narrow_range_reaches_the_models_at_full_range(tmp_path):
    # A faint scan: 12-bit-like values 291-694 in a 16-bit file (65535 is white).
    values = np.linspace(291, 694, 64 * 32).reshape(32, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "faint16.png")
    assert Image.open(tmp_path / "faint16.png").mode == "I;16"
    grey = np.asarray(open_image(tmp_path, "faint16.png", MAX_PIXELS_IN_TESTS))[..., 0].astype(float)
    assert (grey.min(), grey.max()) == (0, 255)
    assert 120 < grey.mean() < 135  # a ramp: mid-grey on average, not black (it was 2 of 255)
    assert np.all(np.diff(grey, axis=1) >= 0)  # darker stays darker


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` greyscale pixels and holds none: enough for a bomb check."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(
        b"IEND", b"")


def test_a_decompression_bomb_error_quotes_the_configured_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    limit = f"over max_image_pixels ({MAX_PIXELS_IN_TESTS})"
    (tmp_path / "bomb.png").write_bytes(png_header(100_000, 100_000))  # past Pillow's own hard limit
    (tmp_path / "big.png").write_bytes(png_header(10_000, 10_000))  # past Pillow's warning only
    errors = {name: inspect_file(tmp_path / name, tmp_path, MAX_PIXELS_IN_TESTS).error
              for name in ("bomb.png", "big.png")}
    assert errors == {"bomb.png": f"too large: {limit}",
                      "big.png": f"too large: 10000x10000 = 100000000 pixels, {limit}"}

    # A configured limit above Pillow's default holds: Pillow's own check does not stop the image first.
    with open_checked(io.BytesIO(png_header(20_000, 10_000)), 300_000_000) as image:
        assert image.size == (20_000, 10_000)
    with pytest.raises(ImageDecodeError, match=r"^too large: 20000x10000 = 200000000 pixels"):
        open_checked(io.BytesIO(png_header(20_000, 10_000)), 100_000_000)
