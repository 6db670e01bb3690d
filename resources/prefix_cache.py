"""KV caches of shared prompt prefixes: each distinct prefix is prefilled once per model.

Every metadata prompt starts with the same system message and instruction, so their
keys and values are computed once (batch of one) and kept. Decoding reads this single
copy for every row (``resources/packed_batch.py``); only the per-input suffix is
prefilled per input.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel


@dataclass(frozen=True)
class SharedPrefix:
    """Keys and values of a prompt prefix, per layer, batch of one; never updated in place."""

    token_ids: tuple[int, ...]
    keys: tuple[torch.Tensor, ...]  # each (1, kv_heads, prefix_len, head_dim)
    values: tuple[torch.Tensor, ...]


class PrefixCache:
    """The most recently used prefixes of one model (a handful: one per prompt kind)."""

    def __init__(self, max_entries: int = 8):
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[int, ...], SharedPrefix] = OrderedDict()

    def get(self, model: PreTrainedModel, token_ids: tuple[int, ...]) -> tuple[SharedPrefix, bool]:
        """The prefix's keys and values and whether it had to be prefilled now (a miss)."""
        if token_ids in self._entries:
            self._entries.move_to_end(token_ids)
            return self._entries[token_ids], False
        cache = DynamicCache(config=model.config)
        ids = torch.tensor([token_ids], device=model.device)
        positions = torch.arange(len(token_ids), device=model.device)[None]
        model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        layers = cache.layers
        self._entries[token_ids] = SharedPrefix(
            token_ids, tuple(layer.keys for layer in layers), tuple(layer.values for layer in layers)
        )
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return self._entries[token_ids], True
