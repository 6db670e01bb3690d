"""int8 layers quantised once and read back (resources/int8_cache.py), on the real loading paths:
the tiny BLIP-2 and Phi-3 built at test time, loaded by the captioner's and the metadata LLM's own
loaders with dtype int8."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resources import int8_cache, int8_linear
from resources.captioner import _load as load_captioner
from resources.metadata_llm import load_chat_model
from resources.tiny.blip2 import build_tiny_blip2
from resources.tiny.phi3 import build_tiny_phi3


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory) -> Path:
    return build_tiny_blip2(tmp_path_factory.mktemp("blip2"))


@pytest.fixture(scope="module")
def phi3_dir(tmp_path_factory) -> Path:
    return build_tiny_phi3(tmp_path_factory.mktemp("phi3"))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PIXELSIFT_INT8_CACHE", str(tmp_path / "int8"))
    return tmp_path / "int8"


def _blip2(model_dir: Path) -> torch.nn.Module:
    return load_captioner(str(model_dir), "cpu", "int8")[0]


def _phi3(model_dir: Path) -> torch.nn.Module:
    return load_chat_model(str(model_dir), "cpu", "int8").model


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)
    assert sum(isinstance(m, int8_linear.Int8Linear) for m in a.modules()) > 0


def _no_quantising(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("quantised again although the cache holds the layers")

    monkeypatch.setattr(int8_linear, "quantise_linears", refuse)


@pytest.mark.parametrize("load", [_blip2, _phi3], ids=["captioner", "metadata_llm"])
def test_a_second_int8_load_reads_the_layers_the_first_quantised(load, blip2_dir, phi3_dir, cache, monkeypatch):
    model_dir = blip2_dir if load is _blip2 else phi3_dir
    fresh = load(model_dir)
    assert len(list(cache.glob("*.safetensors"))) == 1 and not list(cache.glob(".*partial"))
    with monkeypatch.context() as patched:
        _no_quantising(patched)
        cached = load(model_dir)
    _assert_same(fresh, cached)
    x = torch.randn(3, 5, fresh.config.get_text_config().hidden_size)
    layer = next(m for m in fresh.modules() if isinstance(m, int8_linear.Int8Linear) and m.in_features == x.shape[-1])
    name = next(n for n, m in fresh.named_modules() if m is layer)
    assert torch.equal(layer(x), cached.get_submodule(name)(x))


def test_captions_are_the_same_from_the_cache(blip2_dir, cache, monkeypatch):
    from resources.captioner import CaptionerResource

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (30 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(3)]

    def captions():
        from resources import torch_runtime

        torch_runtime.clear_model_cache()  # load again, as the next process would
        return [c.text for c in CaptionerResource(model=str(blip2_dir), device="cpu", dtype="int8",
                                                  max_new_tokens=6).caption(images, "")]

    first = captions()
    _no_quantising(monkeypatch)
    assert captions() == first


def test_an_unreadable_cache_file_is_quantised_over_and_rewritten(blip2_dir, cache, caplog):
    fresh = _blip2(blip2_dir)
    (path,) = cache.glob("*.safetensors")
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])  # a copy cut short
    with caplog.at_level(logging.WARNING, logger="resources.int8_cache"):
        again = _blip2(blip2_dir)
    assert "could not be used" in caplog.text
    _assert_same(fresh, again)
    assert path.stat().st_size == size


def test_layers_cached_for_another_model_are_not_taken(blip2_dir, phi3_dir, cache, caplog):
    fresh = _phi3(phi3_dir)
    (phi3_file,) = cache.glob("*.safetensors")
    _blip2(blip2_dir)
    (blip2_file,) = set(cache.glob("*.safetensors")) - {phi3_file}
    phi3_file.write_bytes(blip2_file.read_bytes())  # the wrong model's layers under this model's name
    with caplog.at_level(logging.WARNING, logger="resources.int8_cache"):
        again = _phi3(phi3_dir)
    assert "could not be used" in caplog.text
    _assert_same(fresh, again)


def test_an_earlier_format_of_the_same_model_is_removed_when_the_new_one_is_written(phi3_dir, cache):
    from safetensors.torch import save_file

    identity = int8_cache.weights_identity(str(phi3_dir))
    cache.mkdir(parents=True)
    layer = {"x.weight_int8": torch.zeros(2, 2, dtype=torch.int8)}
    older = cache / "older.safetensors"
    save_file(layer, str(older), metadata={"format": str(int8_cache.FORMAT - 1), "identity": identity})
    other_model = cache / "other.safetensors"
    save_file(layer, str(other_model), metadata={"format": str(int8_cache.FORMAT - 1), "identity": identity + "x"})
    not_ours = cache / "not-ours.safetensors"
    not_ours.write_bytes(b"not a safetensors file")
    _phi3(phi3_dir)
    written = int8_cache.cache_file(identity, ("lm_head",))  # the metadata LLM keeps lm_head in float32
    assert {f.name for f in cache.glob("*.safetensors")} == {written.name, other_model.name, not_ours.name}


def test_a_cache_that_cannot_be_written_leaves_the_load_as_it_was(blip2_dir, tmp_path, monkeypatch, caplog):
    blocked = tmp_path / "a_file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("PIXELSIFT_INT8_CACHE", str(blocked / "int8"))
    with caplog.at_level(logging.WARNING, logger="resources.int8_cache"):
        model = _blip2(blip2_dir)
    assert "not cached" in caplog.text
    assert any(isinstance(m, int8_linear.Int8Linear) for m in model.modules())


def test_the_file_is_named_by_content_cpu_rule_and_kept_layers(blip2_dir, tmp_path, cache, monkeypatch):
    from resources.model_names import model_identity

    identity = int8_cache.weights_identity(str(blip2_dir))
    assert identity == model_identity(str(blip2_dir)) and "@sha256:" in identity
    copy = tmp_path / "elsewhere" / blip2_dir.name
    copy.mkdir(parents=True)
    for f in blip2_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert int8_cache.weights_identity(str(copy)) == identity  # the same model moved: the same file
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit of the last weight
    assert int8_cache.weights_identity(str(copy)) != identity  # other weights: another file
    names = {int8_cache.cache_file(identity, ("lm_head",)), int8_cache.cache_file(identity, ()),
             int8_cache.cache_file(identity + "x", ("lm_head",))}
    monkeypatch.setattr(int8_cache, "pairs_saturate", lambda: not int8_linear.pairs_saturate())
    names.add(int8_cache.cache_file(identity, ("lm_head",)))
    assert len(names) == 4
    # A hub id with no local snapshot has nothing to name its weights by, so it is not cached.
    assert int8_cache.weights_identity("pixelsift-tests/no-such-model") is None


def test_the_load_benchmark_times_a_quantised_then_a_cached_load(blip2_dir):
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "benchmarks.int8_load", "--captioner", str(blip2_dir), "--loads", "2"],
                          capture_output=True, text=True, check=True)
    rows = json.loads(done.stdout[done.stdout.index("{\n"):])["rows"]
    assert [(r["task"], r["load"]) for r in rows] == [("captioner", "quantised"), ("captioner", "cached")]
    assert all(r["load_s"] > 0 and r["peak_rss_gib"] > 0 for r in rows)


def test_a_hub_model_is_named_by_its_local_snapshot_commit(tmp_path, monkeypatch):
    # The hub's own cache layout, written by hand (no network here): what a download leaves.
    import huggingface_hub.constants as hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--pixelsift-tests--tiny"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert int8_cache.weights_identity("pixelsift-tests/tiny") == f"pixelsift-tests/tiny@{commit}"
