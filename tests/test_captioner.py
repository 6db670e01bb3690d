"""CaptionerResource on a tiny random-weight BLIP-2 loaded from disk like a hub checkpoint.

Outputs are meaningless; these tests check structure, determinism and bookkeeping.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from resources import torch_runtime
from resources.backends import Caption
from resources.captioner import CaptionerResource, _generated_lengths, _model_source
from resources.tiny.blip2 import build_tiny_blip2
from resources.tiny.tokenizer import build_tokenizer


@pytest.fixture(scope="session")
def blip2_dir(tmp_path_factory) -> Path:
    return build_tiny_blip2(tmp_path_factory.mktemp("blip2"))


@pytest.fixture(scope="session")
def eos_first_blip2_dir(blip2_dir: Path, tmp_path_factory) -> Path:
    """The tiny model with its weights edited so that EOS is always the likeliest next token."""
    model = Blip2ForConditionalGeneration.from_pretrained(blip2_dir, use_safetensors=True)
    decoder = model.language_model.model.decoder
    eos = model.config.text_config.eos_token_id
    with torch.no_grad():
        # Every final hidden state becomes `direction`; the (tied) output row of EOS
        # points the same way, so EOS gets by far the largest logit.
        direction = torch.randn(decoder.final_layer_norm.bias.shape, generator=torch.Generator().manual_seed(0))
        decoder.final_layer_norm.weight.zero_()
        decoder.final_layer_norm.bias.copy_(direction)
        decoder.embed_tokens.weight[eos] = 10 * direction
    out = tmp_path_factory.mktemp("blip2_eos")
    model.save_pretrained(out, safe_serialization=True)
    Blip2Processor.from_pretrained(blip2_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (30 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(4)]
    rgba = Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), mode="RGBA")
    grey = Image.fromarray(rng.integers(0, 256, (25, 40), dtype=np.uint8), mode="L")
    return noise + [rgba, grey]


def captioner(model_dir: Path, **overrides) -> CaptionerResource:
    settings = {"device": "cpu", "dtype": "float32", "batch_size": 4, "max_new_tokens": 6} | overrides
    return CaptionerResource(model=str(model_dir), **settings)


def test_one_caption_per_image_with_accounting(blip2_dir, images):
    captions = captioner(blip2_dir).caption(images, "")

    assert len(captions) == len(images)  # RGBA and greyscale included
    assert all(isinstance(c, Caption) and isinstance(c.text, str) for c in captions)
    assert all(1 <= c.new_tokens <= 6 for c in captions)
    assert all(c.ms > 0 for c in captions)
    # One call is one batch (the caller chunks): its time is shared equally.
    assert len({c.ms for c in captions}) == 1


def test_captions_are_deterministic(blip2_dir, images):
    # Batched equals one image at a time: test_parity.py.
    first = captioner(blip2_dir).caption(images, "")
    again = captioner(blip2_dir).caption(images, "")
    assert [(c.text, c.new_tokens) for c in first] == [(c.text, c.new_tokens) for c in again]


def test_prompt_tokens_are_not_counted_or_returned(blip2_dir, images):
    prompt = "a photo of a cat sitting on a wooden table next to a window"
    captions = captioner(blip2_dir, max_new_tokens=3).caption(images[:2], prompt)
    assert all(c.new_tokens <= 3 for c in captions)
    assert not any(c.text.startswith(prompt) for c in captions)


def test_eos_ends_a_caption_and_min_new_tokens_delays_it(eos_first_blip2_dir, images):
    stopped = captioner(eos_first_blip2_dir, max_new_tokens=8).caption(images[:3], "")
    assert [(c.text, c.new_tokens) for c in stopped] == [("", 1)] * 3

    # EOS is suppressed for the first 3 tokens, then comes at once: 3 + 1 tokens.
    forced = captioner(eos_first_blip2_dir, max_new_tokens=8, min_new_tokens=3).caption(images[:3], "")
    assert [c.new_tokens for c in forced] == [4] * 3


def test_generated_lengths_stop_at_first_eos():
    new_ids = torch.tensor([[5, 6, 2, 0, 0], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0], [5, 9, 3, 2, 2]])
    assert _generated_lengths(new_ids, {2}) == [3, 5, 1, 4]
    assert _generated_lengths(new_ids, {2, 3}) == [3, 5, 1, 3]


def test_empty_input_gives_no_captions(blip2_dir):
    assert captioner(blip2_dir).caption([], "") == []


def test_missing_local_directory_is_a_clear_error(tmp_path, images):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model.*does not exist"):
        captioner(missing).caption(images[:1], "")
    assert _model_source("Salesforce/blip2-opt-2.7b") == "Salesforce/blip2-opt-2.7b"


def test_model_id_and_fingerprint(blip2_dir):
    base = captioner(blip2_dir)
    assert base.model_id == str(blip2_dir)
    assert base.fingerprint() == captioner(blip2_dir, batch_size=1).fingerprint()
    changed = [
        captioner(blip2_dir, max_new_tokens=7),
        captioner(blip2_dir, min_new_tokens=2),
        captioner(blip2_dir, dtype="bfloat16"),
        captioner(blip2_dir, dtype="int8"),
        captioner(Path("/elsewhere/blip2")),
    ]
    assert len({base.fingerprint(), *(c.fingerprint() for c in changed)}) == len(changed) + 1


def test_tiny_blip2_build_is_reproducible(blip2_dir, tmp_path):
    again = build_tiny_blip2(tmp_path / "again")
    other_seed = build_tiny_blip2(tmp_path / "other", seed=1)
    weights = (blip2_dir / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == weights
    assert (other_seed / "model.safetensors").read_bytes() != weights


def test_tiny_tokenizer_round_trips_any_text():
    tokenizer = build_tokenizer(vocab_size=300)
    text = 'Ünïcode, emoji 🐱 and JSON {"a": [1, 2.5, null]}\n\ttabs'
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    with pytest.raises(ValueError, match="not in special_tokens"):
        build_tokenizer(special_tokens=("<pad>",), bos_token="<s>")


def test_batch_size_0_is_the_fastest_measured_for_the_device(monkeypatch):
    # Memory sizes are the one thing faked: this machine has no GPU and one size of RAM.
    for ram, batch in ((24.0, 32), (12.0, 32), (10.5, 8)):
        monkeypatch.setattr(torch_runtime, "host_memory_gib", lambda ram=ram: ram)
        assert CaptionerResource(device="cpu", dtype="bfloat16").items_per_call == batch, ram
    monkeypatch.setattr(torch_runtime, "gpu_memory_gib", lambda device: 80.0)
    assert CaptionerResource(device="cuda").items_per_call == 256
    monkeypatch.setattr(torch_runtime, "gpu_memory_gib", lambda device: 8.0)
    assert CaptionerResource(device="cuda").items_per_call == 32  # no measured batch fits: the CPU's
    assert CaptionerResource(device="cuda", batch_size=8).items_per_call == 8


def test_host_memory_is_the_lower_of_ram_and_the_container_limit(tmp_path):
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    limit = tmp_path / "memory.max"
    assert torch_runtime.host_memory_gib(limit) == ram  # no cgroup file
    limit.write_text("max\n")
    assert torch_runtime.host_memory_gib(limit) == ram
    limit.write_text(f"{2 * 2**30}\n")
    assert torch_runtime.host_memory_gib(limit) == 2.0


def test_model_locations_come_from_the_environment_where_set(monkeypatch):
    from resources.clip_embedder import ClipEmbedderResource
    from resources.metadata_llm import MetadataLLMResource

    assert CaptionerResource().model == "Salesforce/blip2-opt-2.7b"
    for variable, resource in (("CAPTIONER_MODEL", CaptionerResource), ("METADATA_LLM_MODEL", MetadataLLMResource),
                               ("CLIP_MODEL", ClipEmbedderResource)):
        monkeypatch.setenv(f"PIXELSIFT_{variable}", f"/models/{variable.lower()}")
        assert resource().model == f"/models/{variable.lower()}"
    assert CaptionerResource(model="explicit").model == "explicit"  # run config still wins
