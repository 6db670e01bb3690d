"""``pixelsift browse`` in a real headless chromium (Debian's, through Playwright), against a real
server on 127.0.0.1, real image files and a real warehouse. Screenshots go to test-artifacts/.

Hostile strings come from where they would in use: a file name and a caption holding markup and
script, a cluster name from the "model". The vectors are planted (tests/search_warehouse.py): the
tiny CLIP's ranking means nothing, the test checks the page's mechanics.
"""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from assets.parquet_schemas import CLUSTER_LABELS, CLUSTERS, NEAR_DUPLICATES
from dagster_project.browse import Browser, make_server
from resources.clip_embedder import ClipEmbedderResource
from resources.settings import PixelsiftSettings
from resources.tiny.clip import build_tiny_clip
from resources.warehouse import collection_file, partition_file, write_table
from tests.browser import browser_page, screenshot
from tests.conftest import SAMPLE
from tests.search_warehouse import Planted, write_planted

QUERY = "a cat on a sofa"
HOSTILE_NAME = "<img src=x onerror=alert(1)>.png"
HOSTILE_CAPTION = "<script>window.pwned = 1</script> a rocket"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browse")
    trip = root / "images" / "trip"
    trip.mkdir(parents=True)
    for name, target in [("chelsea.png", "chelsea.png"), ("coffee.png", "coffee.png"), ("rocket.jpg", HOSTILE_NAME),
                         ("astronaut.png", "astronaut.png")]:
        image = Image.open(SAMPLE / name).convert("RGB")
        image.thumbnail((200, 200))
        image.save(trip / target, format="PNG")
    Image.open(trip / "chelsea.png").resize((80, 60)).save(trip / "chelsea_small.png")
    outside = root / "outside"
    outside.mkdir()
    Image.new("RGB", (20, 20), (255, 0, 0)).save(outside / "secret.png")
    os.symlink(outside / "secret.png", trip / "escape.png")  # a link out of the images root

    clip = ClipEmbedderResource(model=str(build_tiny_clip(root / "clip")), device="cpu", dtype="float32")
    warehouse = root / "warehouse"
    items = [
        Planted("trip", "chelsea.png", 0.9, category="animal", tags=("cat",), caption="a cat", image_id=sha(trip / "chelsea.png")),
        Planted("trip", "chelsea_small.png", 0.85, category="animal", tags=("cat",), caption="a small cat",
                image_id=sha(trip / "chelsea_small.png")),
        Planted("trip", HOSTILE_NAME, 0.8, category="object", caption=HOSTILE_CAPTION, image_id=sha(trip / HOSTILE_NAME)),
        Planted("trip", "coffee.png", 0.5, category="food", caption="a cup of coffee", image_id=sha(trip / "coffee.png")),
        Planted("trip", "astronaut.png", 0.2, category="people", caption="an astronaut",
                image_id=sha(trip / "astronaut.png")),
        # A warehouse row naming the link: the page must still refuse to read through it.
        Planted("trip", "escape.png", 0.1, category="object", caption="escape", image_id=sha(outside / "secret.png")),
    ]
    write_planted(warehouse, clip.embed_text([QUERY])[0], items, clip.model_id)
    write_table(pa.Table.from_pylist([
        {"image_id": i.image_id, "path": i.path, "status": "ok", "error": None, "cluster_id": c, "distance": 0.1,
         "is_representative": True} for i, c in zip(items, [0, 0, 1, 1, -1, -1])], schema=CLUSTERS),
        partition_file(warehouse, "clusters", "trip"))
    write_table(pa.Table.from_pylist([
        {"cluster_id": 0, "cluster_name": "<b>cats</b>", "total_images": 2},
        {"cluster_id": 1, "cluster_name": "things", "total_images": 2}], schema=CLUSTER_LABELS),
        partition_file(warehouse, "cluster_labels", "trip"))
    write_table(pa.Table.from_pylist([
        {"group_id": 0, "batch": "trip", "path": p, "image_id": items[n].image_id, "match": m, "is_best": m == "best",
         "width": w, "height": h, "bytes": 1, "sharpness": 1.0, "phash": "0" * 16, "hash_distance": 0, "cosine": 0.99}
        for n, p, m, w, h in [(0, "chelsea.png", "best", 200, 133), (1, "chelsea_small.png", "near", 80, 60)]],
        schema=NEAR_DUPLICATES), collection_file(warehouse, "near_duplicates"))

    settings = PixelsiftSettings(images_root=str(root / "images"), warehouse_dir=str(warehouse))
    server = make_server(Browser(settings, text_embedder=lambda: clip), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def fetch(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_search_in_a_browser_ranks_filters_and_escapes(site):
    with browser_page() as page:
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(site + "/")
        page.fill("input[name=q]", QUERY)
        page.fill("input[name=k]", "4")
        page.click("button[type=submit]")
        page.wait_for_selector(".card")
        names = page.locator(".card div a").all_inner_texts()
        assert names == ["trip/chelsea.png", "trip/chelsea_small.png", f"trip/{HOSTILE_NAME}", "trip/coffee.png"]
        assert HOSTILE_CAPTION in page.inner_text("body")  # shown as text, not run
        assert page.evaluate("window.pwned") is None and dialogs == []
        page.wait_for_load_state("networkidle")
        loaded = page.evaluate("[...document.querySelectorAll('.card img')].map(i => i.naturalWidth > 0)")
        assert loaded == [True] * 4  # every thumbnail was served
        screenshot(page, "browse-search")

        page.fill("input[name=category]", "food")  # a filter narrows before the best k are taken
        page.click("button[type=submit]")
        page.wait_for_selector(".card")
        assert page.locator(".card div a").all_inner_texts() == ["trip/coffee.png"]


def test_metadata_similar_clusters_and_duplicates_pages(site):
    with browser_page() as page:
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(site + "/?q=" + QUERY)
        page.click(f"text=trip/{HOSTILE_NAME}")
        page.wait_for_selector("h3")
        assert HOSTILE_NAME in page.inner_text("h2") and HOSTILE_CAPTION in page.inner_text("body")
        screenshot(page, "browse-image")
        page.click("text=Similar images")
        page.wait_for_selector(".card")
        assert f"trip/{HOSTILE_NAME}" not in page.locator(".card div a").all_inner_texts()

        page.goto(site + "/clusters")
        assert "<b>cats</b>" in page.inner_text("body") and page.locator("b").count() == 0
        screenshot(page, "browse-clusters")
        page.goto(site + "/duplicates")
        assert page.locator(".card.best div a").all_inner_texts() == ["trip/chelsea.png"]
        screenshot(page, "browse-duplicates")
        assert page.evaluate("window.pwned") is None and dialogs == []


def test_only_images_inside_the_root_that_the_warehouse_lists_are_served(site):
    status, kind, body = fetch(site + "/thumb?batch=trip&path=chelsea.png")
    assert status == 200 and kind == "image/jpeg" and body[:2] == b"\xff\xd8"
    for attempt in ["batch=trip&path=../../outside/secret.png", "batch=..&path=outside/secret.png",
                    "batch=trip&path=/etc/passwd", "batch=trip&path=escape.png", "batch=trip/../..&path=etc/passwd",
                    "batch=trip&path=notes.txt"]:
        status, _, body = fetch(f"{site}/thumb?{attempt}")
        assert status == 404, attempt
        assert b"\x89PNG" not in body and b"\xff\xd8" not in body


def test_pages_forbid_scripts_and_answer_unknown_routes_with_404(site):
    with urllib.request.urlopen(site + "/") as response:
        policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy  # no script source is allowed
    assert fetch(site + "/nowhere")[0] == 404
    assert fetch(site + "/image?batch=trip&path=../../outside/secret.png")[0] == 404


def test_the_filters_offer_the_values_the_warehouse_has(site):
    with browser_page() as page:
        page.goto(site + "/")
        offered = page.evaluate("[...document.querySelectorAll('#category-choices option')].map(o => o.value)")
        assert sorted(offered) == ["animal", "food", "object", "people"]
        assert page.evaluate("document.querySelector('#batch_key-choices option').value") == "trip"


def test_the_page_sees_batches_written_while_it_runs(tmp_path):
    # The page keeps the warehouse's tables in memory; a new or rewritten Parquet file is read again.
    import numpy as np

    direction = np.eye(8, dtype=np.float32)[0]
    write_planted(tmp_path, direction, [Planted("one", "a.jpg", 0.5, image_id="a" * 64)], "m")
    browser = Browser(PixelsiftSettings(images_root=str(tmp_path / "images"), warehouse_dir=str(tmp_path)),
                      refresh_s=0)
    assert browser._listed("one", "a.jpg") == "a" * 64 and browser._listed("two", "b.jpg") is None
    write_planted(tmp_path, direction, [Planted("two", "b.jpg", 0.5, image_id="b" * 64)], "m")
    assert browser._listed("two", "b.jpg") == "b" * 64
    assert "two/b.jpg" in browser.search_page({"similar": "a" * 64})
