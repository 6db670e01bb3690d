"""KV caches of shared prompt prefixes: each distinct prefix is prefilled once per model.

Every metadata prompt starts with the same system message and instruction, so their
keys and values are computed once (batch of one) and copied into each batch's cache;
only the per-input suffix is prefilled per input.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel


@dataclass(frozen=True)
class SharedPrefix:
    token_ids: tuple[int, ...]
    cache: DynamicCache  # batch of one; never updated in place

    def expand(self, batch: int) -> DynamicCache:
        """A fresh cache holding the prefix for ``batch`` rows, ready to be extended."""
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(batch)
        return cache


class PrefixCache:
    """The most recently used prefixes of one model (a handful: one per prompt kind)."""

    def __init__(self, max_entries: int = 8):
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[int, ...], SharedPrefix] = OrderedDict()

    def get(self, model: PreTrainedModel, token_ids: tuple[int, ...]) -> tuple[SharedPrefix, bool]:
        """The prefix's KV cache and whether it had to be prefilled now (a miss)."""
        if token_ids in self._entries:
            self._entries.move_to_end(token_ids)
            return self._entries[token_ids], False
        cache = DynamicCache(config=model.config)
        ids = torch.tensor([token_ids], device=model.device)
        positions = torch.arange(len(token_ids), device=model.device)[None]
        model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        self._entries[token_ids] = SharedPrefix(token_ids, cache)
        if len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return self._entries[token_ids], True
