"""xgrammar state for one tokenizer: compiled JSON-schema grammars and the token byte table.

Compiling a tokenizer's vocabulary into xgrammar is slow (hundreds of ms for a 32k
vocabulary), so one ``SchemaGrammars`` is built per loaded model and kept with it;
each pydantic schema is then compiled once and reused for every call.
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

import torch
import xgrammar as xgr
from pydantic import BaseModel
from transformers import PreTrainedTokenizerBase

from resources.json_text import SEPARATORS

_SPELLED_MAX = 4096  # forced strings remembered per tokenizer


class SchemaGrammars:
    """Grammars, stop tokens and token spellings for one tokenizer and model vocabulary."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_token_ids: Iterable[int]):
        self.vocab_size = vocab_size
        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(set(stop_token_ids))
        )
        self.stop_token_ids = frozenset(self.info.stop_token_ids)
        self._tokenizer = tokenizer
        # The compiler's own cache is off: its grammar hasher crashes on some schemas in
        # xgrammar 0.2.8 ("per_rule_fsm_hashes ... has_value() is false", e.g. our Sentence
        # pattern; mlc-ai/xgrammar#647), and each schema is compiled once below anyway.
        self._compiler = xgr.GrammarCompiler(self.info, cache_enabled=False)
        self._compiled: dict[tuple[str, tuple[str, str]], xgr.CompiledGrammar] = {}
        # The exact bytes each token stands for, as the grammar sees them (byte-level and
        # byte-fallback vocabularies decoded), so output text is exactly what was matched.
        self._token_bytes: list[bytes] = self.info.decoded_vocab
        special = set(self.info.special_token_ids) | set(tokenizer.all_special_ids) | self.stop_token_ids
        self._id_by_bytes: dict[bytes, int] = {}
        for token_id, piece in enumerate(self._token_bytes):
            # On duplicates keep the later id: SentencePiece vocabularies list their <0xNN>
            # byte-fallback tokens before the ordinary token for the same character.
            if piece and token_id not in special:
                self._id_by_bytes[piece] = token_id
        self._longest_piece = max(map(len, self._id_by_bytes), default=1)
        self._non_stop_bits = self._bitmask_without(self.stop_token_ids)
        self._spelled: dict[str, list[int]] = {}

    def compile(self, schema: type[BaseModel]) -> xgr.CompiledGrammar:
        """The grammar for JSON valid against ``schema``, written as ``json_text`` writes it."""
        text = json.dumps(schema.model_json_schema())  # key order is the order fields are written
        key = (text, SEPARATORS)  # the separators as they are now: benchmarks/separators.py compares both
        if key not in self._compiled:
            self._compiled[key] = self._compiler.compile_json_schema(text, any_whitespace=False, separators=SEPARATORS)
        return self._compiled[key]

    def text(self, token_ids: Sequence[int]) -> str:
        return b"".join(self._token_bytes[t] for t in token_ids).decode("utf-8", errors="replace")

    def only_stop_allowed(self, bitmask_row: torch.Tensor) -> bool:
        """True when a filled bitmask row allows nothing but stop tokens (the document is complete)."""
        return not bool(torch.any(bitmask_row & self._non_stop_bits))

    def accept_forced(self, matcher: xgr.GrammarMatcher, limit: int) -> list[int]:
        """Accept up to ``limit`` tokens spelling the continuation the grammar forces; return them.

        The tokenizer's own encoding of the forced string is used when it spells the string
        exactly; SentencePiece tokenizers prepend a space to a standalone string, so otherwise
        the string is split greedily into the longest vocabulary pieces. Every token is still
        checked by the matcher, and acceptance stops at the first one it rejects.
        """
        forced = matcher.find_jump_forward_string()
        if not forced or limit <= 0:
            return []
        accepted: list[int] = []
        for token_id in self._spell(forced)[:limit]:
            if not matcher.accept_token(token_id):
                break
            accepted.append(token_id)
        return accepted

    def _spell(self, text: str) -> list[int]:
        # Forced strings repeat in every document (keys, punctuation), and tokenizing is the slow part.
        if text not in self._spelled:
            if len(self._spelled) >= _SPELLED_MAX:
                self._spelled.clear()
            self._spelled[text] = self._spell_uncached(text)
        return self._spelled[text]

    def _spell_uncached(self, text: str) -> list[int]:
        target = text.encode("utf-8")
        natural = self._tokenizer.encode(text, add_special_tokens=False)
        if all(t < self.vocab_size for t in natural) and b"".join(self._token_bytes[t] for t in natural) == target:
            return natural
        ids: list[int] = []
        start = 0
        while start < len(target):
            for end in range(min(len(target), start + self._longest_piece), start, -1):
                token_id = self._id_by_bytes.get(target[start:end])
                if token_id is not None:
                    ids.append(token_id)
                    start = end
                    break
            else:
                break  # no token spells the next byte; the caller decodes the rest normally
        return ids

    def _bitmask_without(self, token_ids: frozenset[int]) -> torch.Tensor:
        words = xgr.allocate_token_bitmask(1, self.vocab_size)[0]
        for token_id in token_ids:
            word, bit = divmod(token_id, 32)
            words[word] &= ~(1 << bit) if bit < 31 else 0x7FFFFFFF
        return words
