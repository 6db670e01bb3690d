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

    def __call__(self, index: int, generated: Sequence[int], masked_logits: torch.Tensor) -> int:
        target = self._targets[index]
        written = sum(len(self._pieces[t]) for t in generated)
        rest = target[written:]
        if not rest:
            return self._stop
        for end in range(min(len(rest), self._longest), 0, -1):
            token_id = self._id_by_piece.get(rest[:end])
            if token_id is not None and masked_logits[token_id] != float("-inf"):
                return token_id
        raise ValueError(f"target {index} cannot continue at byte {written}: {rest[:20]!r} (not valid for the grammar?)")
