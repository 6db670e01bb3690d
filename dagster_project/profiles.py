"""Which models back the pipeline: the real ones from the Hugging Face Hub, or tiny offline ones.

``hub`` (default): BLIP-2 OPT-2.7B, Phi-3.5-mini-instruct and open_clip ViT-B-32, by hub id
(or by local directory, if you point the resources' ``model`` at one).
``tiny``: models of the same architectures with random weights, built locally on first use.
They run the exact same loading and inference code, so an air-gapped install can be checked
end to end, but their outputs are MEANINGLESS.
"""

from __future__ import annotations

import os
from pathlib import Path

PROFILES = ("hub", "tiny")
TINY_WARNING = "tiny models: random weights, outputs are meaningless (for checking an install offline only)"


def current_profile() -> str:
    profile = os.environ.get("PIXELSIFT_MODELS", "hub")
    if profile not in PROFILES:
        raise ValueError(f"PIXELSIFT_MODELS={profile!r}: choose one of {', '.join(PROFILES)}")
    return profile


def tiny_models_dir() -> Path:
    return Path(os.environ.get("PIXELSIFT_TINY_MODELS_DIR", "data/models/tiny"))


def ensure_tiny_models(root: Path) -> dict[str, Path]:
    """Build the three tiny models under ``root`` unless already there (seeded: same weights every time)."""
    from resources.tiny.blip2 import build_tiny_blip2
    from resources.tiny.clip import build_tiny_clip
    from resources.tiny.phi3 import build_tiny_phi3

    builders = {"blip2": build_tiny_blip2, "phi3": build_tiny_phi3, "clip": build_tiny_clip}
    paths = {}
    for name, build in builders.items():
        target = root / name
        if not (target / ".complete").exists():
            build(target)
            (target / ".complete").write_text("built by pixelsift\n")
        paths[name] = target
    return paths


def model_resources(profile: str | None = None) -> dict:
    """The captioner, metadata LLM and CLIP embedder resources for a profile."""
    # Imported here, not at the top: the `pixelsift` command loads this module, and torch with it
    # would cost every command (and every worker process it starts) seconds.
    from resources.captioner import CaptionerResource
    from resources.clip_embedder import ClipEmbedderResource
    from resources.metadata_llm import MetadataLLMResource

    profile = profile or current_profile()
    if profile == "hub":
        return {
            "captioner": CaptionerResource(),
            "metadata_llm": MetadataLLMResource(),
            "clip_embedder": ClipEmbedderResource(),
        }
    paths = ensure_tiny_models(tiny_models_dir())
    return {
        "captioner": CaptionerResource(model=str(paths["blip2"].resolve()), device="cpu", dtype="float32"),
        "metadata_llm": MetadataLLMResource(model=str(paths["phi3"].resolve()), device="cpu", dtype="float32"),
        "clip_embedder": ClipEmbedderResource(model=str(paths["clip"].resolve()), device="cpu", dtype="float32"),
    }
