"""Reference-free quality of the LLM's output, per batch: what a model too weak for the task writes.

Valid JSON that says nothing passes schema checks: a 135M model copied the prompt's option words
into every record, repeated tags, gave every object the same confidence and put every image in the
first category. These figures catch that on every batch, with or without a reference file. They
are shares over the model's own outputs (``json_valid``: fallbacks are built from the caption and
say nothing about the model), except ``degenerate_caption_rate``, over the batch's captions.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Iterable

from assets.caption_checks import unusable_caption
from assets.llm_schemas import CATEGORIES, SCENE_TYPES

# The fixed words the prompt offers as options; a tag made of them and absent from the caption
# is copied from the prompt, not read from the caption.
OPTION_WORDS = frozenset(w for option in (*CATEGORIES, *SCENE_TYPES) for w in option.split("_"))
_WORD = re.compile(r"[^\W\d_]+")
# A caption of at least this many words, under half of them distinct, is a decoder stuck in a loop.
_LOOP_MIN_WORDS = 6
# Fewer outputs than this say little about how varied the categories are.
MIN_ENTROPY_OUTPUTS = 8
_LOOP_MAX_DISTINCT = 0.5


def words(text: str | None) -> list[str]:
    return _WORD.findall((text or "").lower())


def _stem(word: str) -> str:
    """Plural and singular compare equal: 'cats' is grounded by 'cat' and the other way round."""
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def degenerate_caption(caption: str | None) -> bool:
    """Unusable (empty, no words, undecodable), or a loop of few words."""
    if unusable_caption(caption):
        return True
    found = words(caption)
    return len(found) >= _LOOP_MIN_WORDS and len(set(found)) / len(found) < _LOOP_MAX_DISTINCT


def _share(flags: Iterable[bool]) -> float | None:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else None


def _repeats(items: list[str]) -> bool:
    return len({i.casefold() for i in items}) < len(items)


def quality_figures(metadata_rows: list[dict[str, Any]], caption_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``eval_summary`` quality columns from ``image_metadata`` and ``captions`` rows (dicts)."""
    own = [r for r in metadata_rows if r.get("status") == "ok" and r.get("json_valid")]
    tag_words = [(set(map(_stem, words(r["description"]))), t) for r in own for t in r.get("tags") or []]
    objects = [r.get("detected_objects") or [] for r in own]
    categories = Counter(r["primary_category"] for r in own)
    return {
        "n_model_outputs": len(own),
        "duplicate_rate": _share((r.get("duplicates_removed") or 0) > 0 or _repeats(r.get("tags") or [])
                                 or _repeats([o["name"] for o in r.get("detected_objects") or []]) for r in own),
        "tag_grounding": _share(bool(caption & {_stem(w) for w in words(tag)}) for caption, tag in tag_words),
        "option_echo_rate": _share(
            bool(set(words(tag)) & OPTION_WORDS) and not {_stem(w) for w in words(tag)} & caption
            for caption, tag in tag_words),
        "constant_confidence_rate": _share(len({o["confidence"] for o in objs}) == 1 for objs in objects if len(objs) > 1),
        "category_entropy": _normalised_entropy(categories) if len(own) >= MIN_ENTROPY_OUTPUTS else None,
        "degenerate_caption_rate": _share(degenerate_caption(r.get("caption")) for r in caption_rows
                                          if r.get("status") == "ok"),
    }


def _normalised_entropy(counts: Counter) -> float:
    """Shannon entropy of the categories over its maximum for this many outputs: 0 = all one category."""
    n = sum(counts.values())
    entropy = -sum(c / n * math.log(c / n) for c in counts.values())
    return entropy / math.log(min(n, len(CATEGORIES)))
