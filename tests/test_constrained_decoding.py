"""The decode loop on a tiny random-weight Phi-3: parity of the fast paths with the naive loop,
the work each switch saves, budgets, and spelling forced text with a SentencePiece-style tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
import xgrammar as xgr
from pydantic import BaseModel
from transformers import LlamaTokenizer

from assets.llm_schemas import ClusterLabelOutput, ImageMetadataOutput
from resources.constrained_decoding import _shared_length, allowed_tokens, generate_constrained
from resources.json_grammar import SchemaGrammars
from resources.backends import Chat
from resources.metadata_llm import load_chat_model, prompt_ids
from resources.prefix_cache import PrefixCache
from resources.tiny.phi3 import build_tiny_phi3

INPUTS = [
    "a cat",
    "two dogs running on a wide sandy beach under a bright blue sky",
    "a plate of rice",
    "a red car parked in front of a tall glass building at night",
    "snow",
]
BUDGET = 1024  # the tiny model's documents here take about 130-350 tokens


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    return load_chat_model(str(build_tiny_phi3(tmp_path_factory.mktemp("phi3"))), "cpu", torch.float32)


@pytest.fixture(scope="module")
def prompts(chat):
    shared = "Write the metadata as JSON.\n\n"
    return prompt_ids(chat.tokenizer, [Chat(system="You label photos.", user=shared + text, shared=shared)
                                       for text in INPUTS])


def decode(chat, prompts, schema=ImageMetadataOutput, *, prefix_cache=None, **kwargs):
    prefix_ids, full = prompts
    kwargs.setdefault("max_new_tokens", BUDGET)
    kwargs.setdefault("batch_size", 1)
    with torch.inference_mode():
        return generate_constrained(
            chat.model,
            chat.grammars,
            chat.grammars.compile(schema),
            full,
            pad_token_id=chat.pad_token_id,
            prefix_ids=prefix_ids,
            prefix_cache=prefix_cache,
            **kwargs,
        )


@pytest.fixture(scope="module")
def naive(chat, prompts):
    return decode(chat, prompts)


def test_naive_loop_prefills_each_prompt_then_runs_one_forward_per_token(naive, prompts):
    decoded, stats = naive
    assert all(d.finished for d in decoded)
    for d in decoded:
        ImageMetadataOutput.model_validate_json(d.text)
    generated = sum(len(d.token_ids) for d in decoded)
    # The first forward (the prompt) yields the first token; a complete document needs no forward for its stop token.
    assert stats.forward_calls == generated == stats.decode_tokens
    assert stats.prefill_tokens == sum(len(p) for p in prompts[1])
    assert stats.padding_tokens == stats.jump_forward_tokens == stats.prefix_hits == 0
    assert stats.model_seconds > 0 and stats.grammar_seconds > 0


def test_batched_prefix_cached_decoding_matches_the_naive_loop_token_for_token(chat, prompts, naive):
    assert len({len(p) for p in prompts[1]}) > 1  # uneven suffixes, so rows are padded
    cache = PrefixCache()
    decoded, stats = decode(chat, prompts, batch_size=3, prefix_cache=cache)
    assert [d.token_ids for d in decoded] == [d.token_ids for d in naive[0]]
    assert [d.text for d in decoded] == [d.text for d in naive[0]]
    assert stats.padding_tokens > 0
    assert stats.forward_calls < naive[1].forward_calls

    shared = _shared_length(prompts[0], prompts[1])
    assert shared > 0.8 * len(prompts[0])
    suffixes = sum(len(p) - shared for p in prompts[1])
    assert stats.prefill_tokens == shared + suffixes  # the shared prefix ran once, for both batches
    assert stats.prefix_hits == 1

    again, stats = decode(chat, prompts, batch_size=3, prefix_cache=cache)
    assert [d.token_ids for d in again] == [d.token_ids for d in naive[0]]
    assert stats.prefill_tokens == suffixes and stats.prefix_hits == 2

    # Without a cached prefix the padded prompts start the batch: padding slots see nothing at all.
    uncached, stats = decode(chat, prompts, batch_size=3)
    assert [d.token_ids for d in uncached] == [d.token_ids for d in naive[0]]
    assert stats.prefill_tokens == naive[1].prefill_tokens


def test_jump_forward_saves_forward_calls_and_is_batch_invariant(chat, prompts, naive):
    single, stats = decode(chat, prompts, jump_forward=True)
    assert all(d.finished for d in single)
    for d in single:
        ImageMetadataOutput.model_validate_json(d.text)
    assert stats.jump_forward_tokens > 0
    assert stats.forward_calls == stats.decode_tokens < naive[1].forward_calls
    assert sum(len(d.token_ids) for d in single) == stats.decode_tokens + stats.jump_forward_tokens

    batched, _ = decode(chat, prompts, jump_forward=True, batch_size=3, prefix_cache=PrefixCache())
    assert [d.token_ids for d in batched] == [d.token_ids for d in single]


@pytest.mark.parametrize("jump_forward", [False, True])
@pytest.mark.parametrize("budget", [2, 20])  # 2 ends inside the forced opening {"cluster_name": " (14 tokens)
def test_a_small_budget_stops_rows_unfinished_at_exactly_the_budget(chat, prompts, jump_forward, budget):
    decoded, stats = decode(chat, prompts, ClusterLabelOutput, max_new_tokens=budget, batch_size=2, jump_forward=jump_forward)
    for d in decoded:
        assert not d.finished and len(d.token_ids) == budget
        with pytest.raises(json.JSONDecodeError):
            json.loads(d.text)
    if jump_forward and budget == 2:
        assert stats.forward_calls == 0 and stats.jump_forward_tokens == 2 * len(decoded)


def test_both_schemas_decode_to_valid_documents_in_one_batch(chat, prompts):
    decoded, _ = decode(chat, prompts, ClusterLabelOutput, batch_size=8, jump_forward=True, prefix_cache=PrefixCache())
    for d in decoded:
        assert d.finished and d.seconds > 0
        ClusterLabelOutput.model_validate_json(d.text)
        assert d.text == chat.tokenizer.decode(d.token_ids)


def test_arguments_are_checked(chat, prompts):
    assert decode(chat, ([], []))[0] == []
    with pytest.raises(ValueError, match="max_new_tokens"):
        decode(chat, prompts, max_new_tokens=0)
    with pytest.raises(ValueError, match="batch_size"):
        decode(chat, prompts, batch_size=0)


def test_shared_length_stops_where_a_prompt_diverges_and_leaves_a_token_to_decode():
    assert _shared_length([1, 2, 3, 4], [[1, 2, 3, 4, 5], [1, 2, 3, 9, 9]]) == 3
    assert _shared_length([1, 2, 3], [[1, 2, 3]]) == 2
    assert _shared_length([], [[1, 2]]) == 0


class Tags(BaseModel):
    tags: list[str]


def sentencepiece_style_tokenizer() -> LlamaTokenizer:
    """Phi-3's tokenizer class: Metaspace pre-tokenizer that prepends '▁', byte fallback."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab |= {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for piece in ["▁", "{", "}", "[", "]", '"', ":", ",", "t", "a", "g", "s", "ta", "gs", "tags", '{"', '":', "▁["]:
        vocab[piece] = len(vocab)
    merges = [("t", "a"), ("g", "s"), ("ta", "gs"), ("{", '"'), ('"', ":"), ("▁", "[")]
    return LlamaTokenizer(vocab=vocab, merges=merges)


def test_forced_text_is_spelled_exactly_even_when_the_tokenizer_prepends_a_space():
    tokenizer = sentencepiece_style_tokenizer()
    forced = '{"tags": ['  # the list may be empty, so no quote is forced yet
    assert tokenizer.tokenize(forced)[0] == "▁"  # its own spelling of the text would add a space
    grammars = SchemaGrammars(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
    matcher = xgr.GrammarMatcher(grammars.compile(Tags))
    assert matcher.find_jump_forward_string() == forced
    tokens = grammars.accept_forced(matcher, limit=100)
    assert grammars.text(tokens) == forced
    assert tokenizer.convert_ids_to_tokens(tokens) == ['{"', "tags", '":', "▁["]
    assert matcher.find_jump_forward_string() == ""
    assert grammars.accept_forced(xgr.GrammarMatcher(grammars.compile(Tags)), limit=2) == tokens[:2]


@pytest.mark.parametrize("width", [70, 100])  # logits at least as wide as the vocabulary
def test_unpacked_bitmask_masks_exactly_what_xgrammar_masks(width):
    """The GPU path unpacks the grammar's bitmask itself; on the CPU xgrammar applies it. Same result."""
    vocab = 70
    words = xgr.allocate_token_bitmask(3, vocab)
    words.random_(-(2**31), 2**31 - 1, generator=torch.Generator().manual_seed(1))
    logits = torch.randn(3, width, generator=torch.Generator().manual_seed(2))
    expected = logits.clone()
    xgr.apply_token_bitmask_inplace(expected, words, vocab_size=vocab)
    ours = logits.masked_fill(~allowed_tokens(words, width, vocab), float("-inf"))
    assert torch.equal(ours[:, :vocab], expected[:, :vocab])
    assert bool((ours[:, vocab:] == float("-inf")).all())  # ids past the vocabulary never win


def test_other_separators_are_another_prompt_version(monkeypatch):
    # They change what the model writes, so results stored under the spaced ones must not be reused.
    import importlib

    import assets.prompts
    import resources.json_text

    spaced = assets.prompts.PROMPT_VERSION
    monkeypatch.setattr(resources.json_text, "SEPARATORS", resources.json_text.COMPACT)
    try:
        assert importlib.reload(assets.prompts).PROMPT_VERSION != spaced
    finally:
        monkeypatch.undo()
        assert importlib.reload(assets.prompts).PROMPT_VERSION == spaced
