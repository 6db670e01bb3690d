"""What a benchmark run measures: its stages, models and settings (no model code, so the CLI loads fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGES = ("decode", "captions", "image_metadata", "clip_embeddings", "palette", "cluster_labels")


@dataclass(frozen=True)
class ModelPaths:
    blip2: str
    phi3: str
    clip: str
    clip_pretrained: str  # "" for random weights of a built-in open_clip config


@dataclass
class BenchConfig:
    models: ModelPaths
    models_label: str  # "full" or "tiny"
    images: Path
    count: int
    naive_count: int
    device: str = "auto"
    dtype: str = "auto"
    caption_batch: tuple[int, ...] = (16,)  # several: each is measured and the fastest counts
    llm_batch: tuple[int, ...] = (32,)
    clip_batch: int = 32
    jump_forward: bool = True
    stages: tuple[str, ...] = STAGES
    int8: bool = False  # also measure int8 weight-only linears against bf16 (CPU)
    cpu_workers: int = 0  # processes/threads for decoding and palettes; 0 = one per core, up to 16
