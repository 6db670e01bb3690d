"""Model ids in the data and the UI are portable names; reuse identifies a local model by its files."""

from pathlib import Path

import pyarrow.parquet as pq
from dagster import DagsterInstance, materialize

from assets.clip_embeddings import clip_embeddings
from assets.images import images
from resources.clip_embedder import ClipEmbedderResource
from resources.model_names import model_identity, portable_model_name
from resources.settings import PixelsiftSettings
from resources.tiny.clip import build_tiny_clip
from resources.warehouse import ParquetWarehouse, partition_file
from tests.conftest import jpeg_bytes, solid


def test_hub_ids_and_built_in_names_stay_as_they_are():
    assert portable_model_name("Salesforce/blip2-opt-2.7b") == "Salesforce/blip2-opt-2.7b"
    assert portable_model_name("ViT-B-32/openai") == "ViT-B-32/openai"


def test_local_directories_lose_the_machine_specific_part(tmp_path):
    home, project = tmp_path / "home" / "me", tmp_path / "srv" / "pixelsift"
    snapshot = home / ".cache/huggingface/hub/models--Salesforce--blip2-opt-2.7b/snapshots/51572668da0e"
    assert portable_model_name(str(snapshot), project, home) == "Salesforce/blip2-opt-2.7b"
    tiny = project / "data/models/tiny/blip2"
    assert portable_model_name(str(tiny), project, home) == "data/models/tiny/blip2"
    assert portable_model_name(f"local-dir:{home / 'models/clip'}", project, home) == "~/models/clip"
    assert portable_model_name(str(tmp_path / "elsewhere/phi3"), project, home) == "phi3"


def test_materialization_metadata_shows_a_portable_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as the project folder: the model is shown relative to it
    model_dir = build_tiny_clip(tmp_path / "models" / "my-clip")
    batch = tmp_path / "images" / "trip"
    batch.mkdir(parents=True)
    (batch / "a.jpg").write_bytes(jpeg_bytes(solid((200, 30, 30))))
    warehouse = tmp_path / "warehouse"
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batch", ["trip"])
    result = materialize(
        [images, clip_embeddings], partition_key="trip", instance=instance,
        resources={
            "settings": PixelsiftSettings(images_root=str(tmp_path / "images"), warehouse_dir=str(warehouse)),
            "io_manager": ParquetWarehouse(root=str(warehouse)),
            "clip_embedder": ClipEmbedderResource(model=str(model_dir), device="cpu", dtype="float32"),
        },
    )
    [event] = [e for e in result.get_asset_materialization_events()
               if e.asset_key.to_user_string() == "clip_embeddings"]
    assert event.materialization.metadata["model_id"].value == "models/my-clip"
    table = pq.read_table(partition_file(warehouse, "clip_embeddings", "trip"))
    assert table.column("model_id").to_pylist() == ["models/my-clip"]  # no machine path in the data
    assert str(tmp_path) not in str(table.to_pylist())


def test_a_local_model_is_identified_by_its_files_not_its_path(tmp_path):
    first = build_tiny_clip(tmp_path / "a" / "clip", seed=0)
    same = build_tiny_clip(tmp_path / "b" / "clip", seed=0)
    identity = model_identity(str(first))
    assert identity.startswith("clip@sha256:") and str(tmp_path) not in identity
    assert model_identity(str(same)) == identity  # the same weights elsewhere: the same model
    assert ClipEmbedderResource(model=str(first)).fingerprint() == ClipEmbedderResource(model=str(same)).fingerprint()
    build_tiny_clip(first, seed=1)  # new weights in the same folder: a new model, nothing reused
    assert model_identity(str(first)) != identity
    assert ClipEmbedderResource(model=str(first)).fingerprint() != ClipEmbedderResource(model=str(same)).fingerprint()
    assert model_identity("Salesforce/blip2-opt-2.7b") == "Salesforce/blip2-opt-2.7b"
