"""ClipEmbedderResource on a tiny random-weight open_clip ViT loaded from a local directory.

Outputs are meaningless; these tests check shapes, normalisation, determinism and settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resources.clip_embedder import ClipEmbedderResource
from resources.tiny.clip import EMBED_DIM, build_tiny_clip
from resources.backends import ModelLoadError


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    noise = [Image.fromarray(rng.integers(0, 256, (24 + 9 * i, 48, 3), dtype=np.uint8)) for i in range(5)]
    rgba = Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), mode="RGBA")
    grey = Image.fromarray(rng.integers(0, 256, (33, 17), dtype=np.uint8), mode="L")
    return noise + [rgba, grey]


def embedder(model: Path | str, **overrides) -> ClipEmbedderResource:
    settings = {"device": "cpu", "dtype": "float32", "batch_size": 3} | overrides
    return ClipEmbedderResource(model=str(model), **settings)


def test_unit_float32_vectors_one_per_image(clip_dir, images):
    resource = embedder(clip_dir)
    result = resource.embed(images)

    assert resource.dim == EMBED_DIM
    assert result.vectors.shape == (len(images), EMBED_DIM)  # RGBA and greyscale included
    assert result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(result.vectors[0], result.vectors[1])  # the image matters
    # One call is one batch (the caller chunks): its time is shared equally.
    assert len(result.ms) == len(images) and all(ms > 0 for ms in result.ms)
    assert len(set(result.ms)) == 1


def test_deterministic(clip_dir, images):
    # Batched equals one image at a time: test_parity.py.
    first = embedder(clip_dir).embed(images).vectors
    np.testing.assert_array_equal(first, embedder(clip_dir).embed(images).vectors)


def test_bfloat16_still_gives_unit_float32_vectors(clip_dir, images):
    reference = embedder(clip_dir).embed(images).vectors
    vectors = embedder(clip_dir, dtype="bfloat16").embed(images).vectors
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, reference, atol=0.05)


def test_empty_input_gives_an_empty_matrix(clip_dir):
    result = embedder(clip_dir).embed([])
    assert result.vectors.shape == (0, EMBED_DIM) and result.ms == []


def test_dim_of_a_built_in_model_needs_no_download():
    assert ClipEmbedderResource().dim == 512
    assert ClipEmbedderResource(model="ViT-B/32").dim == 512


def test_missing_or_incomplete_directory_is_a_clear_error(tmp_path, images):
    with pytest.raises(FileNotFoundError, match="no_such_model.*does not exist"):
        embedder(tmp_path / "no_such_model").embed(images[:1])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="open_clip_config.json"):
        embedder(tmp_path / "empty").embed(images[:1])


def test_model_id_and_fingerprint(clip_dir):
    local = embedder(clip_dir)
    assert local.model_id == str(clip_dir)
    assert ClipEmbedderResource().model_id == "ViT-B-32/laion2b_s34b_b79k"

    assert local.fingerprint() == embedder(clip_dir, batch_size=1).fingerprint()
    # The weights tag only applies to built-in names.
    assert local.fingerprint() == embedder(clip_dir, pretrained="openai").fingerprint()
    variants = [
        local,
        embedder(clip_dir, dtype="bfloat16"),
        embedder("ViT-B-32"),
        embedder("ViT-B-32", pretrained="openai"),
        embedder("ViT-B-16"),
    ]
    assert len({v.fingerprint() for v in variants}) == len(variants)


def test_tiny_clip_build_is_reproducible(clip_dir, tmp_path):
    weights = (clip_dir / "open_clip_model.safetensors").read_bytes()
    again = build_tiny_clip(tmp_path / "again")
    other_seed = build_tiny_clip(tmp_path / "other", seed=1)
    assert (again / "open_clip_model.safetensors").read_bytes() == weights
    assert (other_seed / "open_clip_model.safetensors").read_bytes() != weights
