"""A small byte-level BPE tokenizer trained in-process, for the tiny test models.

Byte-level means every UTF-8 byte has a token, so any text (JSON, emoji, prompts)
round-trips through encode/decode without <unk>, just like the real GPT/OPT/Phi tokenizers.
"""

from __future__ import annotations

from typing import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Enough varied English, punctuation and JSON to learn a few hundred merges.
DEFAULT_CORPUS: tuple[str, ...] = (
    "a photo of a cat sitting on a wooden table next to a window",
    "a dog running across a green field under a blue sky",
    "two people walking along the beach at sunset with the ocean behind them",
    "a plate of food with rice, vegetables and a glass of water",
    "a red car parked on a city street in front of a tall building",
    "a mountain landscape covered in snow with pine trees in the foreground",
    "a close-up of a yellow flower with a bee on its petals",
    "an empty room with white walls, a lamp and a grey sofa",
    '{"subject": "cat", "scene": "indoor", "objects": ["table", "window"], "mood": "calm"}',
    '{"subject": "dog", "scene": "outdoor", "objects": ["grass", "sky"], "count": 1, "night": false}',
    '{"tags": ["beach", "sunset", "people"], "colors": ["orange", "blue"], "score": 0.75, "ok": true}',
    "Describe the image in one sentence. Answer with JSON only, following the schema.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>/\\|@#$%^&*-_=+~`",
)


def build_tokenizer(
    *,
    special_tokens: Sequence[str] = ("<pad>", "</s>", "<unk>"),
    bos_token: str | None = "</s>",
    eos_token: str | None = "</s>",
    pad_token: str | None = "<pad>",
    unk_token: str | None = "<unk>",
    add_bos_token: bool = True,
    vocab_size: int = 512,
    chat_template: str | None = None,
    corpus: Sequence[str] = DEFAULT_CORPUS,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus`` and wrap it for transformers.

    ``special_tokens`` get ids 0..k-1 in the order given; each of bos/eos/pad/unk
    must be one of them (or None). The defaults mimic OPT (``</s>`` is both BOS and
    EOS and is prepended to every encoded text).
    """
    named = [t for t in (bos_token, eos_token, pad_token, unk_token) if t is not None]
    missing = [t for t in named if t not in special_tokens]
    if missing:
        raise ValueError(f"bos/eos/pad/unk tokens {missing} are not in special_tokens")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(special_tokens):
        raise ValueError(f"vocab_size must be at least {len(alphabet) + len(special_tokens)} (bytes + specials)")

    backend = Tokenizer(models.BPE(unk_token=unk_token))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=alphabet,  # every byte stays representable whatever the corpus
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token=unk_token,
        add_bos_token=add_bos_token and bos_token is not None,
        extra_special_tokens=[t for t in special_tokens if t not in named],
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
