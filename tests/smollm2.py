"""SmolLM2-135M-Instruct for the tests: the shipped GGUF unpacked once into a saved model directory.

Unpacking the GGUF takes 10-20 s; loading the saved copy about a second. The copy lives in
pytest's cache (``.pytest_cache``), keyed by the hash of the GGUF's bytes and the transformers
version, so it is built once per checkout and reused by later sessions (a reinstall of the wheel
changes the file's time, not its hash).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import transformers

from resources.metadata_llm import load_chat_model
from resources.model_names import model_identity
from resources.smollm2 import smollm2_gguf_path


def smollm2_dir(cache_root: Path) -> Path:
    """A directory holding SmolLM2 as safetensors and its tokenizer (built under ``cache_root`` once)."""
    gguf = smollm2_gguf_path()
    content = model_identity(str(gguf)).rsplit(":", 1)[1]
    out = Path(cache_root) / f"smollm2-{content}-tf{transformers.__version__}"
    if (out / "config.json").is_file():
        return out
    # float32: the unpacked Q4_1 weights exactly; a test asks for bf16 or float32 when it loads them.
    loaded = load_chat_model(str(gguf), "cpu", torch.float32)
    partial = out.with_name(out.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    loaded.model.save_pretrained(partial)
    loaded.tokenizer.save_pretrained(partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)  # atomic: a session killed midway leaves no half-written model behind
    return out
