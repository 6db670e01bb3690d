"""The default models at full size with random weights, built from their published configurations.

Weights cannot be downloaded here, but the arithmetic per token depends only on the
architecture: a random-weight model of the published shape costs what the trained one
does. Each model is saved like a hub checkpoint and loaded by the pipeline's own
resources, so the benchmark times exactly the production loading and inference code.
The tokenizers are stand-ins (see ``benchmarks/tokenizer.py``); what the text means
does not matter, only how many tokens it is.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    OPTConfig,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerBase,
)

from benchmarks.tokenizer import build_opt_tokenizer, build_phi3_tokenizer
from resources.tiny.blip2 import blip2_processor

CLIP_MODEL = "ViT-B-32"  # open_clip's built-in config; pretrained="" gives random weights

# microsoft/Phi-3.5-mini-instruct config.json: LongRoPE factors per rotary frequency (head_dim 96 / 2).
PHI35_SHORT_FACTOR = [
    1.0, 1.0199999809265137, 1.0299999713897705, 1.0299999713897705, 1.0499999523162842, 1.0499999523162842,
    1.0499999523162842, 1.0499999523162842, 1.0499999523162842, 1.0699999332427979, 1.0999999046325684,
    1.1099998950958252, 1.1599998474121094, 1.1599998474121094, 1.1699998378753662, 1.2899998426437378,
    1.339999794960022, 1.679999828338623, 1.7899998426437378, 1.8199998140335083, 1.8499997854232788,
    1.8799997568130493, 1.9099997282028198, 1.9399996995925903, 1.9899996519088745, 2.0199997425079346,
    2.0199997425079346, 2.0199997425079346, 2.0199997425079346, 2.0199997425079346, 2.0199997425079346,
    2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914,
    2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0799996852874756,
    2.0899996757507324, 2.189999580383301, 2.2199995517730713, 2.5899994373321533, 2.729999542236328,
    2.749999523162842, 2.8399994373321533,
]
PHI35_LONG_FACTOR = [
    1.0800000429153442, 1.1100000143051147, 1.1399999856948853, 1.340000033378601, 1.5899999141693115,
    1.600000023841858, 1.6200000047683716, 2.620000123977661, 3.2300000190734863, 3.2300000190734863,
    4.789999961853027, 7.400000095367432, 7.700000286102295, 9.09000015258789, 12.199999809265137,
    17.670000076293945, 24.46000099182129, 28.57000160217285, 30.420001983642578, 30.840002059936523,
    32.590003967285156, 32.93000411987305, 42.320003509521484, 44.96000289916992, 50.340003967285156,
    50.45000457763672, 57.55000305175781, 57.93000411987305, 58.21000289916992, 60.1400032043457,
    62.61000442504883, 62.62000274658203, 62.71000289916992, 63.1400032043457, 63.1400032043457,
    63.77000427246094, 63.93000411987305, 63.96000289916992, 63.970001220703125, 64.02999877929688,
    64.06999969482422, 64.08000183105469, 64.12000274658203, 64.41000366210938, 64.4800033569336,
    64.51000213623047, 64.52999877929688, 64.83999633789062,
]


def phi35_mini_config(bos: int, eos: int, pad: int) -> Phi3Config:
    """microsoft/Phi-3.5-mini-instruct (3.8B): 32 layers of 3072, 32 heads (no GQA), vocab 32064."""
    return Phi3Config(
        vocab_size=32064,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        hidden_act="silu",
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": PHI35_SHORT_FACTOR,
            "long_factor": PHI35_LONG_FACTOR,
        },
        sliding_window=262144,
        tie_word_embeddings=False,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def blip2_opt_27b_config(image_token_index: int, bos: int, eos: int, pad: int) -> Blip2Config:
    """Salesforce/blip2-opt-2.7b: ViT-g/14 (39 layers of 1408), Q-Former (12 x 768, 32 queries), OPT-2.7B."""
    return Blip2Config(
        vision_config=Blip2VisionConfig(
            hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
            image_size=224, patch_size=14, layer_norm_eps=1e-6, qkv_bias=True,
        ),
        qformer_config=Blip2QFormerConfig(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            cross_attention_frequency=2, encoder_hidden_size=1408,
        ),
        text_config=OPTConfig(
            vocab_size=50272, hidden_size=2560, word_embed_proj_dim=2560, ffn_dim=10240, num_hidden_layers=32,
            num_attention_heads=32, max_position_embeddings=2048, do_layer_norm_before=True,
            activation_function="relu", bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
        ),
        num_query_tokens=32,
        image_token_index=image_token_index,
    )


def _save(model: torch.nn.Module, out_dir: Path) -> None:
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / ".complete").write_text("random weights, published configuration\n")


def _random_bf16(factory, device: str) -> torch.nn.Module:
    """Build in bf16 (the dtype the benchmark runs in; half the memory and init time of float32),
    on the benchmark's device: a GPU fills 4 billion random weights in a second, a CPU in a minute."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            return factory().eval()
    finally:
        torch.set_default_dtype(previous)


def build_phi35_mini(out_dir: Path, device: str = "cpu", tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    """``tokenizer``: a stand-in saved earlier (its corpus package need not be installed); default: build it."""
    out_dir = Path(out_dir)
    if (out_dir / ".complete").exists():
        return out_dir
    tokenizer = build_phi3_tokenizer() if tokenizer is None else tokenizer
    config = phi35_mini_config(tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = _random_bf16(lambda: Phi3ForCausalLM(config), device)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    tokenizer.save_pretrained(out_dir)
    _save(model, out_dir)
    return out_dir


def build_blip2_opt_27b(out_dir: Path, device: str = "cpu") -> Path:
    out_dir = Path(out_dir)
    if (out_dir / ".complete").exists():
        return out_dir
    tokenizer = build_opt_tokenizer()
    processor, image_token = blip2_processor(tokenizer, image_size=224, num_query_tokens=32)
    config = blip2_opt_27b_config(image_token, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = _random_bf16(lambda: Blip2ForConditionalGeneration(config), device)
    processor.save_pretrained(out_dir)
    _save(model, out_dir)
    return out_dir
