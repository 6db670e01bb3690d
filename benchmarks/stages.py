"""One function per pipeline stage: run it on the benchmark's images the naive or the optimised way.

Each calls the pipeline's own code (the model resources, the palette and decoding
functions) and returns a ``StageResult``. The naive way is the seed's design: one image
at a time, the whole prompt prefilled for every input, one token per forward call.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from assets.batch_files import list_batch_files
from assets.image_files import ImageDecodeError, inspect_file, open_image
from assets.palette import palette_of_file
from resources.parallel import process_map, thread_map
from assets.prompts import CAPTION_PROMPT, cluster_chat, metadata_chat
from assets.llm_schemas import ClusterLabelOutput, ImageMetadataOutput
from resources.backends import Chat
from benchmarks.image_copies import distinct_copies
from benchmarks.measure import measured
from benchmarks.steering import DocumentSteering
from benchmarks.workload import CAPTION_TOKENS, CLUSTER_EXAMPLES, EXAMPLES, IMAGES_PER_CLUSTER, document
from resources.captioner import CaptionerResource
from resources.clip_embedder import ClipEmbedderResource
from resources.constrained_decoding import generate_constrained
from resources.metadata_llm import ChatModel, prompt_ids
from resources.prefix_cache import PrefixCache

MAX_IMAGE_PIXELS = 89_478_485  # the pipeline's default decompression-bomb limit


@dataclass
class StageResult:
    stage: str
    path: str  # "naive" or "optimised"
    items: int  # images (clusters for cluster_labels)
    seconds: float
    batch_size: int
    peak_rss_gib: float
    peak_gpu_gib: float | None = None
    generated_tokens: int = 0
    prompt_tokens: int = 0  # prompt tokens run through the model (a shared prefix once)
    details: dict = field(default_factory=dict)

    @property
    def seconds_per_item(self) -> float:
        return self.seconds / self.items

    def as_dict(self) -> dict:
        out = asdict(self)
        out["seconds_per_item"] = self.seconds_per_item
        out["items_per_second"] = self.items / self.seconds
        if self.generated_tokens:
            out["generated_tokens_per_second"] = self.generated_tokens / self.seconds
        return out


def load_images(folder: Path, count: int) -> list[Image.Image]:
    """``count`` distinct images from ``folder`` as the models see them (``benchmarks/image_copies.py``)."""
    decoded = []
    for path in list_batch_files(folder):
        try:
            decoded.append(open_image(folder, path.relative_to(folder).as_posix(), MAX_IMAGE_PIXELS))
        except ImageDecodeError:
            continue
    if not decoded:
        raise ValueError(f"no decodable images in {folder}")
    return distinct_copies(decoded, count)


MODEL_STAGES_OPENING = 2  # captions and clip_embeddings each open every image (palettes: palette_stage)


def decode_stage(folder: Path, count: int, device: str, path: str, workers: int) -> StageResult:
    """What decoding costs the pipeline per image: the ``images`` asset hashes and decodes every file
    (worker processes), then the captions and CLIP stages each open it again and check its sha256 (threads)."""
    files = list_batch_files(folder)
    files = [files[i % len(files)] for i in range(count)]
    with measured(device) as m:
        records = process_map(partial(inspect_file, batch_dir=folder, max_pixels=MAX_IMAGE_PIXELS), files, workers)
        for _ in range(MODEL_STAGES_OPENING):
            thread_map(partial(_open_or_none, folder), [(r.image_id, r.path) for r in records], workers)
    return StageResult("decode", path, count, m.seconds, workers, m.peak_rss_gib, m.peak_gpu_gib,
                       details={"workers": workers})


def _open_or_none(folder: Path, image: tuple[str, str]) -> Image.Image | None:
    image_id, name = image
    try:
        return open_image(folder, name, MAX_IMAGE_PIXELS, sha256=image_id)
    except ImageDecodeError:
        return None  # the pipeline has already recorded it as an error row


def palette_stage(folder: Path, count: int, device: str, path: str, workers: int) -> StageResult:
    """What the ``color_palettes`` asset does: open each file and extract its palette, in worker processes."""
    files = list_batch_files(folder)
    files = [files[i % len(files)] for i in range(count)]
    # The images step's sha256 of each file, which color_palettes checks the file still has.
    images = [(hashlib.sha256(f.read_bytes()).hexdigest(), f.relative_to(folder).as_posix()) for f in files]
    with measured(device) as m:
        process_map(partial(palette_of_file, folder=folder, max_pixels=MAX_IMAGE_PIXELS), images, workers)
    return StageResult("palette", path, count, m.seconds, workers, m.peak_rss_gib, m.peak_gpu_gib,
                       details={"workers": workers})


def in_calls(items: Sequence, per_call: int) -> list[Sequence]:
    """The calls a pipeline step makes: its items in chunks of the model's ``items_per_call``."""
    return [items[start : start + per_call] for start in range(0, len(items), per_call)]


def clip_stage(embedder: ClipEmbedderResource, images: Sequence[Image.Image], device: str, path: str) -> StageResult:
    embedder.embed(images[:1])  # warm-up: first-call allocation and kernel selection
    with measured(device) as m:
        for chunk in in_calls(images, embedder.items_per_call):
            embedder.embed(chunk)
    return StageResult("clip_embeddings", path, len(images), m.seconds, embedder.items_per_call, m.peak_rss_gib,
                       m.peak_gpu_gib)


def caption_stage(captioner: CaptionerResource, images: Sequence[Image.Image], device: str, path: str) -> StageResult:
    captioner.caption(images[:1], CAPTION_PROMPT)  # warm-up
    with measured(device) as m:
        captions = [c for chunk in in_calls(images, captioner.items_per_call)
                    for c in captioner.caption(chunk, CAPTION_PROMPT)]
    generated = sum(c.new_tokens for c in captions)
    if generated != CAPTION_TOKENS * len(images):
        raise RuntimeError(f"captions should be {CAPTION_TOKENS} tokens each, got {generated} in all")
    return StageResult("captions", path, len(images), m.seconds, captioner.items_per_call, m.peak_rss_gib,
                       m.peak_gpu_gib, generated_tokens=generated)


@dataclass(frozen=True)
class DecodeSettings:
    batch_size: int
    prefix_cache: bool
    jump_forward: bool

    @classmethod
    def naive(cls) -> DecodeSettings:
        return cls(batch_size=1, prefix_cache=False, jump_forward=False)


def metadata_workload(count: int) -> tuple[list[Chat], list[str]]:
    """LLM prompts (from realistic captions) and the documents to steer to, for ``count`` images."""
    examples = [EXAMPLES[i % len(EXAMPLES)] for i in range(count)]
    return [metadata_chat(e.caption) for e in examples], [document(e.metadata) for e in examples]


def cluster_workload(images: int) -> tuple[list[Chat], list[str]]:
    """One cluster per ``IMAGES_PER_CLUSTER`` images (at least one)."""
    clusters = [CLUSTER_EXAMPLES[i % len(CLUSTER_EXAMPLES)] for i in range(max(1, math.ceil(images / IMAGES_PER_CLUSTER)))]
    return [cluster_chat(list(captions)) for captions, _ in clusters], [document(label) for _, label in clusters]


def llm_stage(
    chat: ChatModel,
    stage: str,
    inputs: list[Chat],
    targets: list[str],
    settings: DecodeSettings,
    device: str,
    path: str,
) -> StageResult:
    """Steered constrained decoding of every input, as ``MetadataLLMResource.generate_json`` runs it."""
    schema = ImageMetadataOutput if stage == "image_metadata" else ClusterLabelOutput
    prefix_ids, prompts = prompt_ids(chat.tokenizer, inputs)
    grammar = chat.grammars.compile(schema)
    budget = 4 * max(len(t) for t in targets)  # never binding: the steering ends every document

    def run(rows: list[int], cache: PrefixCache | None):
        with torch.inference_mode():
            return generate_constrained(
                chat.model, chat.grammars, grammar, [prompts[i] for i in rows], max_new_tokens=budget,
                batch_size=settings.batch_size, prefix_ids=prefix_ids, prefix_cache=cache,
                jump_forward=settings.jump_forward, choose=DocumentSteering(chat.grammars, [targets[i] for i in rows]),
            )

    # Warm-up on one input with a fresh cache; the timed run then prefills its prefix itself, as a new process would.
    run([0], PrefixCache() if settings.prefix_cache else None)
    with measured(device) as m:
        decoded, stats = run(list(range(len(inputs))), PrefixCache() if settings.prefix_cache else None)
    if [d.text for d in decoded] != targets:
        raise RuntimeError(f"{stage}: steering did not reproduce the target documents")
    generated = stats.decode_tokens + stats.jump_forward_tokens
    return StageResult(
        stage, path, len(inputs), m.seconds, settings.batch_size, m.peak_rss_gib, m.peak_gpu_gib,
        generated_tokens=generated, prompt_tokens=stats.prefill_tokens,
        details={
            "prefix_cache": settings.prefix_cache,
            "jump_forward": settings.jump_forward,
            "shared_prefix_tokens": len(prefix_ids),
            "forward_calls": stats.forward_calls,
            "sampled_tokens": stats.decode_tokens,
            "jump_forward_tokens": stats.jump_forward_tokens,
            "attention_padding_slots": stats.padding_tokens,
            "model_seconds": stats.model_seconds,
            "grammar_seconds": stats.grammar_seconds,
            "grammar_share_of_model_time": stats.grammar_seconds / stats.model_seconds,
            "grammar_us_per_generated_token": 1e6 * stats.grammar_seconds / generated,
        },
    )
