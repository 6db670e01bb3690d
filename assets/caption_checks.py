"""Whether a caption can be described at all: the one test the LLM steps and the quality checks share.

An empty caption, or one without words, gives the LLM nothing but its instruction, and it answers
with a confident record made up from the instruction's own words. Text decoded from broken bytes
shows as U+FFFD replacement characters. Such captions go straight to the recorded fallback.
"""

from __future__ import annotations

import re

REPLACEMENT_CHAR = "\ufffd"
# A share of replacement characters above which the text is mostly what a decoder could not read.
MAX_REPLACEMENT_SHARE = 0.1
_WORD = re.compile(r"[^\W\d_]{2,}")  # two or more letters, any script


def unusable_caption(caption: str | None) -> str | None:
    """Why the caption cannot be described (the fallback's reason), or None when it can."""
    text = (caption or "").strip()
    if not text:
        return "empty caption"
    visible = [c for c in text if not c.isspace()]
    broken = sum(c == REPLACEMENT_CHAR for c in visible)
    if broken and broken / len(visible) > MAX_REPLACEMENT_SHARE:
        return f"caption is {broken / len(visible):.0%} replacement characters (undecodable text)"
    if not _WORD.search(text.replace(REPLACEMENT_CHAR, " ")):
        return "caption has no words"
    return None
