"""Steer grammar-constrained decoding to known target documents (random weights write no JSON).

At every step the chosen token is the longest vocabulary piece that continues the row's
target text and that the grammar mask allows, instead of the argmax. The forward calls,
the grammar work and jump-forward are exactly those of a model that wrote this text, so
token counts and costs are realistic; only what the model "wanted" is overridden.
"""

from __future__ import annotations

from typing import Sequence

import torch

from resources.json_grammar import SchemaGrammars


class DocumentSteering:
    """A ``Chooser`` for ``generate_constrained``: row i writes ``targets[i]``, then stops."""

    def __init__(self, grammars: SchemaGrammars, targets: Sequence[str]):
        self._targets = [t.encode("utf-8") for t in targets]
        self._stop = min(grammars.stop_token_ids)
        self._pieces: list[bytes] = grammars.info.decoded_vocab
        special = set(grammars.info.special_token_ids) | grammars.stop_token_ids
        self._id_by_piece: dict[bytes, int] = {}
        for token_id, piece in enumerate(self._pieces[: grammars.vocab_size]):
            if piece and token_id not in special:
                self._id_by_piece.setdefault(piece, token_id)
        self._longest = max(map(len, self._id_by_piece))
        # row -> (its list of generated tokens, how many were counted, the bytes they spell):
        # counting only the new tokens keeps a call O(1); a new list is a new decode of that row.
        self._progress: dict[int, tuple[Sequence[int], int, int]] = {}

    def __call__(self, index: int, generated: Sequence[int], bitmask_row: torch.Tensor) -> int:
        seen, counted, written = self._progress.get(index, (None, 0, 0))
        if seen is not generated:
            counted, written = 0, 0
        written += sum(len(self._pieces[t]) for t in generated[counted:])
        self._progress[index] = (generated, len(generated), written)
        target = self._targets[index]
        rest = target[written:]
        if not rest:
            return self._stop
        for end in range(min(len(rest), self._longest), 0, -1):
            token_id = self._id_by_piece.get(rest[:end])
            if token_id is not None and int(bitmask_row[token_id >> 5]) >> (token_id & 31) & 1:
                return token_id
        raise ValueError(f"target {index} cannot continue at byte {written}: {rest[:20]!r} (not valid for the grammar?)")
