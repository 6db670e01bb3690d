"""The JSON text the in-process grammar lets a model write: one line, ", " and ": " between items.

The grammar forces every separator, so the spaces carry nothing the model chose, yet each is a
token it must run forward. Dropping them ("," and ":") was measured (``benchmarks/separators.py``,
BENCHMARKS.md "Compact JSON separators: measured, not taken"): 18-20% fewer tokens per metadata
document, but on SmolLM2 (the one trained model here) tags agreed less with good answers on both
backends. Spaced JSON is what instruction-tuned models mostly saw, so it stays until a run on the
real model (``pixelsift eval``) says otherwise.
"""

from __future__ import annotations

import json
from typing import Any

SEPARATORS = (", ", ": ")
COMPACT = (",", ":")  # the measured alternative


def json_text(value: Any) -> str:
    """``value`` as the grammar writes it (fields in the order given, characters unescaped)."""
    return json.dumps(value, separators=SEPARATORS, ensure_ascii=False)
