"""A tiny random-weight BLIP-2 (ViT + Q-Former + OPT) saved like a hub checkpoint.

It uses the real config, model, image processor and processor classes, so
``CaptionerResource(model=str(path))`` exercises exactly the loading and
generation path of ``Salesforce/blip2-opt-2.7b``, in about a second on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessor,
    OPTConfig,
)

from resources.tiny.tokenizer import build_tokenizer

IMAGE_SIZE = 32
NUM_QUERY_TOKENS = 4
HIDDEN = 32


def blip2_processor(tokenizer, image_size: int, num_query_tokens: int) -> tuple[Blip2Processor, int]:
    """The processor for a BLIP-2 of this shape, and the id of its "<image>" token.

    The processor registers "<image>" (one per query token, placed before BOS); the model's
    config must carry the id it got so the model can swap those slots for image features.
    """
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        num_query_tokens=num_query_tokens,
    )
    return processor, processor.tokenizer.convert_tokens_to_ids("<image>")


def build_tiny_blip2(out_dir: Path, seed: int = 0) -> Path:
    """Build, seed and save the tiny BLIP-2 and its processor into ``out_dir``; returns it."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(vocab_size=384)
    processor, image_token_id = blip2_processor(tokenizer, IMAGE_SIZE, NUM_QUERY_TOKENS)

    config = Blip2Config(
        vision_config=Blip2VisionConfig(
            hidden_size=HIDDEN,
            intermediate_size=2 * HIDDEN,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=8,
            # The real default (1e-10) makes random image features nearly constant.
            initializer_range=0.02,
        ),
        qformer_config=Blip2QFormerConfig(
            vocab_size=64,
            hidden_size=HIDDEN,
            num_hidden_layers=2,  # cross-attention every 2nd layer, so 2 layers include one
            num_attention_heads=2,
            intermediate_size=2 * HIDDEN,
            max_position_embeddings=64,
        ),
        text_config=OPTConfig(
            vocab_size=len(processor.tokenizer),
            hidden_size=HIDDEN,
            word_embed_proj_dim=HIDDEN,
            ffn_dim=2 * HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=128,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=image_token_id,
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
