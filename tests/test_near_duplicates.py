"""near_duplicates on real edited copies of the sample photos (resized, re-encoded, cropped, copied to
another batch), made at test time, through the real ``images`` and ``clip_embeddings`` assets (tiny
CLIP) and the real asset over the whole collection, read back with DuckDB."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, materialize
from PIL import Image

from assets.clip_embeddings import clip_embeddings
from assets.images import images
from assets.near_duplicates import HASH_CACHE, NearDuplicatesConfig, _best_first, find_groups, near_duplicates
from assets.parquet_schemas import PERCEPTUAL_HASHES
from assets.perceptual_hash import hamming, phash
from resources.clip_embedder import ClipEmbedderResource
from resources.settings import PixelsiftSettings
from resources.tiny.clip import build_tiny_clip
from resources.warehouse import ParquetWarehouse, query
from tests.conftest import SAMPLE


def edited_copies(root: Path) -> Path:
    """Batch 'trip': three photos and an edited copy of each; batch 'home': a byte copy and two others."""
    trip, home = root / "trip", root / "home"
    trip.mkdir(parents=True)
    home.mkdir()
    for name, batch in [("chelsea.png", trip), ("coffee.png", trip), ("rocket.jpg", trip), ("astronaut.png", home),
                        ("camera.png", home)]:
        image = Image.open(SAMPLE / name).convert("RGB")
        image.thumbnail((240, 240))
        image.save(batch / (Path(name).stem + ".png"))
    chelsea = Image.open(trip / "chelsea.png")
    chelsea.resize((chelsea.width // 2, chelsea.height // 2)).save(trip / "chelsea_small.png")  # resized
    Image.open(trip / "coffee.png").save(trip / "coffee_q40.jpg", quality=40)  # re-encoded
    rocket = Image.open(trip / "rocket.png")
    w, h = rocket.size
    rocket.crop((w * 4 // 100, h * 4 // 100, w * 96 // 100, h * 96 // 100)).save(trip / "rocket_crop.png")  # cropped
    shutil.copy(trip / "coffee.png", home / "coffee.png")  # the same bytes in another batch
    return root


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    root = tmp_path_factory.mktemp("dups")
    images_root = edited_copies(root / "images")
    settings = PixelsiftSettings(images_root=str(images_root), warehouse_dir=str(root / "warehouse"))
    clip = ClipEmbedderResource(model=str(build_tiny_clip(root / "clip")), device="cpu", dtype="float32")
    resources = {"settings": settings, "clip_embedder": clip, "io_manager": ParquetWarehouse(root=str(root / "warehouse"))}
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", ["trip", "home"])
    for batch in ["trip", "home"]:
        assert materialize([images, clip_embeddings], partition_key=batch, instance=instance, resources=resources).success
    result = materialize([near_duplicates], instance=instance, resources=resources)
    assert result.success
    rows = query(root / "warehouse", "select * from near_duplicates order by group_id, is_best desc, batch, path")
    return root, [dict(zip(rows.columns, r)) for r in rows.fetchall()], resources, instance


def test_edited_copies_group_with_their_photo_across_batches(groups):
    _, rows, _, _ = groups
    found = {}
    for row in rows:
        found.setdefault(row["group_id"], set()).add(f"{row['batch']}/{row['path']}")
    assert sorted(found.values(), key=sorted) == sorted([
        {"trip/chelsea.png", "trip/chelsea_small.png"},
        {"trip/coffee.png", "home/coffee.png", "trip/coffee_q40.jpg"},
        {"trip/rocket.png", "trip/rocket_crop.png"},
    ], key=sorted)  # astronaut and camera, different photos, are in no group
    assert [len(g) for g in found.values()] == [3, 2, 2]  # numbered largest group first


def test_the_best_copy_is_the_largest_and_exact_copies_say_so(groups):
    _, rows, _, _ = groups
    best = {r["group_id"]: r for r in rows if r["is_best"]}
    assert len(best) == 3 and all(r["match"] == "best" for r in best.values())
    by_path = {f"{r['batch']}/{r['path']}": r for r in rows}
    assert by_path["trip/chelsea.png"]["is_best"] and by_path["trip/chelsea_small.png"]["match"] == "near"
    assert by_path["trip/rocket.png"]["is_best"]  # the uncropped one has more pixels
    coffee = [r for r in rows if r["group_id"] == by_path["trip/coffee.png"]["group_id"]]
    originals = [r for r in coffee if r["path"] == "coffee.png"]
    assert {r["match"] for r in originals} <= {"best", "exact"} and by_path["trip/coffee_q40.jpg"]["match"] in {
        "near", "best"}
    for row in rows:
        assert row["hash_distance"] <= 20 and row["cosine"] > 0.9


def test_perceptual_hash_tells_edits_from_other_photos():
    chelsea = Image.open(SAMPLE / "chelsea.png").convert("RGB")
    coins = Image.open(SAMPLE / "coins.png").convert("RGB")
    h = np.uint64(phash(chelsea))
    assert hamming(h, np.uint64(phash(chelsea.resize((150, 100))))) <= 2
    assert hamming(h, np.uint64(phash(coins))) > 20


@pytest.mark.parametrize("exact_below", [10_000, 0], ids=["every pair", "candidates"])
def test_grouping_rules_with_planted_hashes_and_vectors(exact_below):
    # Known inputs: 0-1 are 3 bits apart (the hash alone groups them); 2-3 are 16 bits apart with the
    # same CLIP vector (grouped); 4 has that vector too but is 48 bits from 2 (not grouped); 1-2 are
    # 19 bits apart with unrelated vectors (not grouped); 5-6 are 2 bits apart, made by two CLIP models.
    ones = 2**64 - 1
    hashes = np.array([0, 0b111, 0xFFFF << 16, 0xFFFFFFFF, 0xFFFFFFFF << 32, ones, ones ^ 0b11], dtype=np.uint64)
    vectors = np.eye(7, dtype=np.float32)
    vectors[3] = vectors[4] = vectors[2]
    models = ["a"] * 6 + ["b"]
    groups = find_groups(hashes, vectors, models, NearDuplicatesConfig(), exact_below=exact_below)
    assert sorted(groups) == [[0, 1], [2, 3], [5, 6]]


def test_candidate_pairs_find_the_groups_every_pair_finds():
    # What large collections run (multi-index hashing, an IVF range search) against the comparison of
    # every pair, on 2,000 images with 40 planted copies (0-6 bits and cosine 0.99; 8-18 bits and
    # cosine 0.97) and planted near misses: 0.99 alike but 30 bits apart, 10 bits apart but unrelated.
    from benchmarks.near_duplicates import collection

    hashes, vectors = collection(2_000, seed=3)
    rng = np.random.default_rng(5)
    for a, b in rng.choice(1_900, (10, 2), replace=False):
        vectors[b] = vectors[a]
        hashes[b] = hashes[a] ^ np.uint64(sum(1 << int(i) for i in rng.choice(64, 30, replace=False)))
    for a, b in rng.choice(1_900, (10, 2), replace=False):
        hashes[b] = hashes[a] ^ np.uint64(sum(1 << int(i) for i in rng.choice(64, 10, replace=False)))
    models = ["m"] * len(hashes)
    every = sorted(find_groups(hashes, vectors, models, NearDuplicatesConfig(), exact_below=10_000))
    candidates = sorted(find_groups(hashes, vectors, models, NearDuplicatesConfig(), exact_below=0))
    assert len(every) >= 40 and candidates == every


def test_best_first_prefers_pixels_then_sharpness_then_earliest():
    base = {"batch": "b", "width": 10, "height": 10, "sharpness": 1.0, "taken_at": None}
    rows = [base | {"path": "late", "taken_at": datetime(2024, 1, 2)}, base | {"path": "early", "taken_at": datetime(2024, 1, 1)},
            base | {"path": "sharp", "sharpness": 5.0}, base | {"path": "big", "width": 20}]
    assert [r["path"] for r in _best_first(rows)] == ["big", "sharp", "early", "late"]


def test_a_batch_update_refreshes_the_collection_even_with_batches_never_run(groups):
    # Runs before the cache test below. A registered batch that never ran stays "missing" for good
    # (the folder sensor registers existing folders without running them): eager() would wait forever.
    from dagster import Definitions, evaluate_automation_conditions

    _, _, resources, instance = groups
    instance.add_dynamic_partitions("batch", ["never_run"])
    defs = Definitions(assets=[images, clip_embeddings, near_duplicates], resources=resources)
    first = evaluate_automation_conditions(defs=defs, instance=instance)
    assert materialize([images], partition_key="home", instance=instance, resources=resources).success
    second = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert first.total_requested == 0 and second.total_requested == 1  # near_duplicates, the one target



def test_pixelsift_run_refreshes_the_collection_after_its_batches(groups, capsys):
    # The step `pixelsift run` takes after its batches, on the real definitions (the captioner and CLIP
    # are placeholders: the collection job calls neither; the tiny LLM labels the collection's clusters).
    from dagster_project.cli import _refresh_collection
    from dagster_project.definitions import build_definitions
    from resources.metadata_llm import MetadataLLMResource
    from resources.tiny.phi3 import build_tiny_phi3

    root, rows, resources, instance = groups
    llm = MetadataLLMResource(model=str(build_tiny_phi3(root / "phi3")), device="cpu", dtype="float32")
    defs = build_definitions(resources["settings"], {"captioner": None, "metadata_llm": llm, "clip_embedder": None})
    assert _refresh_collection(defs, instance, resources["settings"]) is None
    out = capsys.readouterr().out
    assert "Copies across all batches: 3 group(s) in" in out and "Clusters across all batches: " in out

def test_hashes_are_read_back_from_the_cache_by_content(groups):
    # Runs last (it changes the fixture's warehouse): a planted far hash in the cache splits a group,
    # which shows that the cached hash, not the file, was used.
    root, rows, resources, instance = groups
    cache = root / "warehouse" / HASH_CACHE
    small = next(r["image_id"] for r in rows if r["path"] == "chelsea_small.png")
    table = pq.read_table(cache).to_pylist()
    assert len(table) == 8  # one per distinct content: 9 files, two of them the same bytes
    for row in table:
        if row["image_id"] == small:
            row["phash"] = f"{~np.uint64(int(row['phash'], 16)):016x}"  # every bit flipped
    pq.write_table(pa.Table.from_pylist(table, schema=PERCEPTUAL_HASHES), cache)
    assert materialize([near_duplicates], instance=instance, resources=resources).success
    paths = [p for (p,) in query(root / "warehouse", "select path from near_duplicates").fetchall()]
    assert "chelsea_small.png" not in paths and "chelsea.png" not in paths and len(paths) == len(rows) - 2


def test_the_refresh_brings_searchs_vector_index_up_to_date(groups):
    import json

    from resources.vector_index import index_dir

    root = groups[0]
    (model,), = query(root / "warehouse", "select distinct model_id from clip_embeddings").fetchall()
    manifest = json.loads((index_dir(root / "warehouse", model) / "manifest.json").read_text())
    assert {s["batch"]: s["rows"] for s in manifest["segments"]} == {"home": 3, "trip": 6}
