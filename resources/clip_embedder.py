"""open_clip embeddings (``ViT-B-32`` with ``laion2b_s34b_b79k`` weights by default): images for the
pipeline, and text for search (the same model's text tower, so a query lands in the images' space).

torch and open_clip are imported when they are first needed, not with the module: the code location
loads this resource without running it (resources/torch_runtime.py).
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from dagster import ConfigurableResource
from PIL import Image
from pydantic import Field

from resources.backends import Embeddings, ModelLoadError, fingerprint
from resources.model_names import model_identity
from resources.parallel import thread_map, worker_count
from resources.settings import env_default
from resources.torch_runtime import device_type, load_once, local_model_dir, resolve_device, resolve_dtype

if TYPE_CHECKING:
    import torch

# open_clip's own precision names; "bf16"/"fp16" keep LayerNorms in float32 like the OpenAI release.
_PRECISION = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}


def _open_clip_name(model: str, pretrained: str) -> tuple[str, str | None]:
    """The (model_name, pretrained) pair for open_clip.

    A directory becomes ``local-dir:<path>`` (open_clip then reads ``open_clip_config.json``
    and the weights file there); the ``pretrained`` tag only applies to built-in names.
    """
    if model.startswith(("local-dir:", "hf-hub:")):
        return model, None
    path = local_model_dir(
        model, "give a directory holding open_clip_config.json and open_clip_model.safetensors, "
        "'hf-hub:org/repo', or a built-in name such as 'ViT-B-32'"
    )
    if path:
        return f"local-dir:{path}", None
    return model, pretrained


@lru_cache(maxsize=None)
def _embed_dim(name: str) -> int:
    import open_clip
    from open_clip.factory import parse_model_name

    schema, _ = parse_model_name(name)
    # Built-in names may be spelled "ViT-B/32"; create_model looks them up with "-" too.
    config = open_clip.get_model_config(name if schema else name.replace("/", "-"))
    if config is None:
        raise ValueError(f"unknown open_clip model {name!r}; see open_clip.list_models()")
    return int(config["embed_dim"])


def _load(name: str, pretrained: str | None, device: str, dtype: torch.dtype) -> tuple[torch.nn.Module, Callable]:
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=pretrained, precision=_PRECISION[str(dtype)], device=device
    )
    return model.eval(), preprocess


def _load_tokenizer(name: str, model: torch.nn.Module) -> Callable:
    import open_clip

    tokenizer = open_clip.get_tokenizer(name)
    vocab = getattr(model, "vocab_size", None)
    known = getattr(tokenizer, "vocab_size", None)
    # A token id past the model's embedding table would fail deep inside torch with an index error.
    if vocab is not None and known is not None and known > vocab:
        raise ModelLoadError(f"open_clip model {name}: its text tower knows {vocab} tokens but its tokenizer "
                             f"{known}; text search needs a matching pair (an old tiny model: delete its folder "
                             "and it is built again)")
    return tokenizer


class ClipEmbedderResource(ConfigurableResource):
    """L2-normalised image embeddings; the model loads once per process on first use."""

    model: str = Field(
        default_factory=lambda: env_default("CLIP_MODEL", "ViT-B-32"),
        description="open_clip built-in name, 'hf-hub:org/repo', or a local directory "
        "with open_clip_config.json + open_clip_model.safetensors (PIXELSIFT_CLIP_MODEL).",
    )
    pretrained: str = Field(
        default="laion2b_s34b_b79k", description="Weights tag for a built-in model name (ignored otherwise)."
    )
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: str = Field(default="auto", description="'auto', 'float32', 'bfloat16' or 'float16'.")
    batch_size: int = Field(default=32, ge=1, description="Images per forward pass (the step's chunk size).")

    @property
    def items_per_call(self) -> int:
        return self.batch_size

    @property
    def model_id(self) -> str:
        # A built-in name alone does not identify the weights, so the tag is part of the id.
        pretrained = _open_clip_name(self.model, self.pretrained)[1]
        return f"{self.model}/{pretrained}" if pretrained else self.model

    @property
    def dim(self) -> int:
        # Read from the model config, so the output schema is known without loading weights.
        return _embed_dim(_open_clip_name(self.model, self.pretrained)[0])

    def _resolved(self) -> tuple[str, torch.dtype]:
        device = resolve_device(self.device)
        return device, resolve_dtype(self.dtype, device)

    def fingerprint(self) -> str:
        device, dtype = self._resolved()
        name, pretrained = _open_clip_name(self.model, self.pretrained)
        return fingerprint(
            kind="open_clip-image",
            model=model_identity(name),  # a local model by its files' hashes, not its path
            pretrained=pretrained,
            device=device_type(device),
            dtype=str(dtype),
        )

    def _loaded(self) -> tuple[torch.nn.Module, Callable]:
        device, dtype = self._resolved()
        name, pretrained = _open_clip_name(self.model, self.pretrained)
        return load_once(("open_clip", name, pretrained, device, dtype), lambda: _load(name, pretrained, device, dtype))

    def embed(self, images: Sequence[Image.Image]) -> Embeddings:
        if not images:
            return Embeddings(vectors=np.zeros((0, self.dim), dtype=np.float32), ms=[])
        model, preprocess = self._loaded()
        started = time.perf_counter()
        vectors = self._embed_batch(model, preprocess, images)
        return Embeddings(vectors=vectors, ms=[(time.perf_counter() - started) * 1000 / len(images)] * len(images))

    def _embed_batch(self, model: torch.nn.Module, preprocess: Callable, images: Sequence[Image.Image]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        device, dtype = self._resolved()
        with torch.inference_mode():
            # Resizing releases the GIL, so preprocessing on threads keeps a GPU fed.
            tensors = thread_map(lambda image: preprocess(image.convert("RGB")), images, worker_count(0))
            pixels = torch.stack(tensors).to(device, dtype)
            # Normalise in float32 so rows are unit length to float32 precision whatever the model dtype.
            features = F.normalize(model.encode_image(pixels).float(), dim=-1)
            return features.cpu().numpy()

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 unit vectors for ``texts`` from the same model (and weights, device, dtype)
        as ``embed``: cosine against the stored image vectors ranks images for a text query."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model, _ = self._loaded()
        device, dtype = self._resolved()
        name, pretrained = _open_clip_name(self.model, self.pretrained)
        tokenizer = load_once(("open_clip-tokenizer", name, pretrained, device, dtype),
                              lambda: _load_tokenizer(name, model))
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            tokens = tokenizer(list(texts)).to(device)
            return F.normalize(model.encode_text(tokens).float(), dim=-1).cpu().numpy()
