"""A tiny random-weight open_clip ViT CLIP saved in open_clip's local-directory layout.

``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) beside
``open_clip_model.safetensors`` is what open_clip's ``local-dir:`` schema (and its
hub repos) use, so ``ClipEmbedderResource(model=str(path))`` loads it exactly like
a downloaded checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from safetensors.torch import save_file

EMBED_DIM = 32

MODEL_CFG = {
    "embed_dim": EMBED_DIM,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "head_width": 32, "layers": 2},
    # Text search embeds queries with open_clip's default tokenizer (49408 tokens, 77 positions), so
    # the text tower takes all of them. The vision tower is built first: its weights are unchanged.
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def build_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """Build, seed and save the tiny CLIP into ``out_dir``; returns it."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**MODEL_CFG)

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), out_dir / HF_SAFE_WEIGHTS_NAME)
    config = {
        "model_cfg": MODEL_CFG,
        "preprocess_cfg": {
            "mean": list(OPENAI_DATASET_MEAN),
            "std": list(OPENAI_DATASET_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    (out_dir / HF_CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return out_dir
