"""The optimised paths compute what the naive ones do, on the tiny models in float32.

* Packed batches (``resources/packed_batch.py``): every row's logits equal that row run alone,
  through cache growth, compaction and a shared prefix.
* Constrained decoding, batched + prefix-cached, equals an independent naive loop written here
  with the model's own SDPA attention and a ``DynamicCache``: token for token.
* Jump-forward spells forced text with its own tokenization (e.g. ``", "`` as one token where
  the model might have chosen ``","`` then ``" "``). The text it forces is exactly the grammar's,
  so a document written under jump-forward is the same text as without it, but the model then
  reads a different token sequence, so its later free choices (tags, names) can differ: with
  trained weights rarely, with random weights often. What holds, and is tested: the same target
  text decodes to the same document either way, and every output is a valid document.
* Batched captions and CLIP embeddings equal one-image-at-a-time ones.
bf16 changes rounding, not the algorithm: batched and single runs may then differ in the last
bits of logits, and greedy choices between near-equal logits can differ.
CI runs these on the CPU; ``PIXELSIFT_TEST_DEVICE=cuda`` runs them on a GPU (BENCHMARKS.md).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import xgrammar as xgr
from PIL import Image
from transformers import DynamicCache

from assets.prompts import metadata_chat
from assets.llm_schemas import ImageMetadataOutput
from benchmarks.steering import DocumentSteering
from benchmarks.workload import EXAMPLES, document
from resources.captioner import CaptionerResource
from resources.clip_embedder import ClipEmbedderResource
from resources.constrained_decoding import generate_constrained
from resources.metadata_llm import load_chat_model, prompt_ids
from resources.packed_batch import PackedRows, use_packed_attention
from resources.prefix_cache import PrefixCache
from resources.tiny.blip2 import build_tiny_blip2
from resources.tiny.clip import build_tiny_clip
from resources.tiny.phi3 import build_tiny_phi3

CAPTIONS = [e.caption for e in EXAMPLES[:5]]
DEVICE = os.environ.get("PIXELSIFT_TEST_DEVICE", "cpu")


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    return load_chat_model(str(build_tiny_phi3(tmp_path_factory.mktemp("phi3"))), DEVICE, torch.float32)


@pytest.fixture(scope="module")
def prompts(chat):
    return prompt_ids(chat.tokenizer, [metadata_chat(c) for c in CAPTIONS])


def packed_logits(model, prefix, sequences, steps, capacity, compact_after=None):
    """Feed each row's tokens in steps of the given sizes; returns each step's per-row last logits."""
    start = len(prefix.token_ids) if prefix else 0
    rows = list(range(len(sequences)))
    state = PackedRows(model, prefix, len(rows), capacity)
    fed = [0] * len(sequences)
    out = []
    for k, step in enumerate(steps):
        if k == compact_after:
            state.select(list(range(0, len(rows), 2)))  # positions in the cache's current row order
            rows = rows[::2]
        ids, positions = [], []
        for r in rows:
            ids += sequences[r][fed[r] : fed[r] + step[r]]
            positions += range(start + fed[r], start + fed[r] + step[r])
            fed[r] += step[r]
        counts = [step[r] for r in rows]
        mask = state.plan(counts)
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids], device=model.device), attention_mask=mask,
                           position_ids=torch.tensor([positions], device=model.device), cache=state, use_cache=True,
                           logits_to_keep=torch.tensor(counts, device=model.device).cumsum(0) - 1,
                           packed=state).logits[0]
        out.append(dict(zip(rows, logits)))
    return out


@pytest.mark.parametrize("with_prefix", [False, True])
def test_packed_rows_compute_what_each_row_computes_alone(chat, with_prefix):
    model = chat.model
    use_packed_attention(model)
    gen = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, 300, (40,), generator=gen).tolist() for _ in range(3)]
    steps = [[5, 9, 3], [1, 1, 1], [3, 1, 4], [1, 2, 1], [4, 4, 1], [1, 1, 2]]
    prefix = PrefixCache().get(model, tuple(range(10, 30)))[0] if with_prefix else None
    # Capacity 4 forces the row buffers to grow several times; compaction drops row 1 midway.
    together = packed_logits(model, prefix, sequences, steps, capacity=4, compact_after=3)
    for r in range(3):
        alone = packed_logits(model, prefix, [sequences[r]], [[s[r]] for s in steps], capacity=64)
        for k, step in enumerate(together):
            if r in step:
                torch.testing.assert_close(step[r], alone[k][0], rtol=1e-4, atol=1e-4)


def naive_reference(chat, prompt: list[int], schema, budget: int) -> list[int]:
    """The seed's loop, independent of the decoder under test: whole prompt, SDPA, one token per call."""
    grammar = chat.grammars.compile(schema)
    matcher = xgr.GrammarMatcher(grammar)
    bitmask = xgr.allocate_token_bitmask(1, chat.grammars.vocab_size)
    cache = DynamicCache(config=chat.model.config)
    feed, generated = list(prompt), []
    with torch.inference_mode():
        while len(generated) < budget:
            logits = chat.model(input_ids=torch.tensor([feed], device=chat.model.device), cache=cache, use_cache=True,
                                logits_to_keep=1).logits[:, -1].float().cpu()
            matcher.fill_next_token_bitmask(bitmask)
            xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=chat.grammars.vocab_size)
            token = int(logits.argmax())
            assert matcher.accept_token(token)
            if token in chat.grammars.stop_token_ids:
                break
            generated.append(token)
            feed = [token]
            if matcher.is_completed():
                matcher.fill_next_token_bitmask(bitmask)
                if chat.grammars.only_stop_allowed(bitmask[0]):
                    break
    return generated


def test_batched_prefix_cached_decoding_equals_the_independent_naive_loop(chat, prompts):
    prefix_ids, full = prompts
    budget = 400
    expected = [naive_reference(chat, p, ImageMetadataOutput, budget) for p in full]
    with torch.inference_mode():
        decoded, stats = generate_constrained(
            chat.model, chat.grammars, chat.grammars.compile(ImageMetadataOutput), full, max_new_tokens=budget,
            batch_size=3, prefix_ids=prefix_ids, prefix_cache=PrefixCache(), jump_forward=False,
        )
    assert [d.token_ids for d in decoded] == expected
    assert stats.prefix_hits == 1 and stats.forward_calls < sum(len(e) for e in expected)


def test_jump_forward_changes_the_spelling_of_forced_text_never_the_text(chat, prompts):
    prefix_ids, full = prompts
    targets = [document(e.metadata) for e in EXAMPLES[: len(full)]]
    grammar = chat.grammars.compile(ImageMetadataOutput)
    texts = {}
    for jump_forward in (False, True):
        with torch.inference_mode():
            decoded, stats = generate_constrained(
                chat.model, chat.grammars, grammar, full, max_new_tokens=1000, batch_size=4, prefix_ids=prefix_ids,
                prefix_cache=PrefixCache(), jump_forward=jump_forward, choose=DocumentSteering(chat.grammars, targets),
            )
        texts[jump_forward] = [d.text for d in decoded]
        assert (stats.jump_forward_tokens > 0) == jump_forward
    assert texts[True] == texts[False] == targets
    assert [ImageMetadataOutput.model_validate_json(t) for t in texts[True]] == [e.metadata for e in EXAMPLES[:5]]


def test_unsteered_jump_forward_outputs_are_valid_documents(chat, prompts):
    prefix_ids, full = prompts
    with torch.inference_mode():
        decoded, _ = generate_constrained(
            chat.model, chat.grammars, chat.grammars.compile(ImageMetadataOutput), full, max_new_tokens=1000,
            batch_size=5, prefix_ids=prefix_ids, prefix_cache=PrefixCache(), jump_forward=True,
        )
    for d in decoded:
        assert d.finished
        ImageMetadataOutput.model_validate_json(d.text)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (20 + 5 * i, 36, 3), dtype=np.uint8)) for i in range(5)]


def test_batched_captions_equal_single_image_captions(tmp_path_factory, images):
    model = str(build_tiny_blip2(tmp_path_factory.mktemp("blip2")))
    settings = {"model": model, "device": DEVICE, "dtype": "float32", "max_new_tokens": 8, "min_new_tokens": 8}
    captioner = CaptionerResource(**settings)
    single = [c for image in images for c in captioner.caption([image], "")]
    batched = captioner.caption(images, "")
    assert [c.text for c in batched] == [c.text for c in single]


def test_batched_clip_embeddings_equal_single_image_ones(tmp_path_factory, images):
    model = str(build_tiny_clip(tmp_path_factory.mktemp("clip")))
    embedder = ClipEmbedderResource(model=model, device=DEVICE, dtype="float32")
    single = np.concatenate([embedder.embed([image]).vectors for image in images])
    batched = embedder.embed(images)
    # On CUDA, kernels (and cuDNN's TF32 convolutions) are chosen per batch shape: measured up to 4.4e-5 on an H200.
    np.testing.assert_allclose(batched.vectors, single, atol=1e-5 if DEVICE == "cpu" else 2e-4)
