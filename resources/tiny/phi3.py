"""A tiny random-weight Phi-3 with a Phi-3-style chat tokenizer, saved like a real checkpoint.

``MetadataLLMResource(model=str(build_tiny_phi3(dir)))`` then loads it through exactly the
code path used for microsoft/Phi-3.5-mini-instruct: same architecture class, LongRoPE
and sliding-window settings, chat markers and stop token; only the sizes differ.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Phi3Config, Phi3ForCausalLM

from resources.tiny.tokenizer import build_tokenizer

CHAT_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPECIAL_TOKENS = ("<unk>", "<s>", "<|endoftext|>", *CHAT_MARKERS)

# Phi-3's template: each message is "<|role|>\n{content}<|end|>\n"; the generation prompt is "<|assistant|>\n".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

HIDDEN = 64
HEADS = 4


def build_tiny_phi3(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny Phi-3 checkpoint (safetensors) and its tokenizer to ``out_dir``; return it."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(
        special_tokens=SPECIAL_TOKENS,
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        add_bos_token=False,  # the chat template is the whole prompt, as with the real model
        vocab_size=512,
        chat_template=CHAT_TEMPLATE,
    )
    rotary_half = HIDDEN // HEADS // 2
    config = Phi3Config(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=8192,
        original_max_position_embeddings=4096,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": [1.0 + 0.1 * i for i in range(rotary_half)],
            "long_factor": [2.0 + 0.5 * i for i in range(rotary_half)],
        },
        sliding_window=4096,  # Phi-3.5 has a (very wide) sliding window too; longer than any test prompt
        # Wider than the default 0.02 so random logits are well separated: greedy choices
        # then do not hinge on float rounding, and batched vs single decoding agree exactly.
        initializer_range=0.5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
