"""Run every stage naive and optimised, one model in memory at a time, and add up the per-image cost.

End to end per image = decode + captions + image_metadata + clip_embeddings + palette
+ cluster_labels / IMAGES_PER_CLUSTER (labels are per cluster). On a CPU the stages run
one after another (two cores leave nothing to overlap), so per-image costs add.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks import stages
from benchmarks.config import STAGES, BenchConfig
from benchmarks.measure import free_memory
from benchmarks.stages import DecodeSettings, StageResult
from benchmarks.workload import IMAGES_PER_CLUSTER
from resources.allocator import keep_freed_memory
from resources.captioner import CaptionerResource
from resources.clip_embedder import ClipEmbedderResource
from resources.metadata_llm import load_chat_model
from resources.parallel import worker_count
from resources.torch_runtime import apply_thread_budget, resolve_device, resolve_dtype

@dataclass
class BenchResult:
    config: dict
    machine: dict
    results: list[StageResult] = field(default_factory=list)
    int8_linears: list[dict] | None = None

    def stage(self, name: str, path: str) -> StageResult | None:
        """The stage's result on this path; of several batch sizes, the fastest (the one chosen)."""
        runs = [r for r in self.results if r.stage == name and r.path == path]
        return min(runs, key=lambda r: r.seconds_per_item, default=None)

    def per_image(self, path: str) -> float:
        """Amortised seconds per image over the stages that were run."""
        total = 0.0
        for name in STAGES:
            r = self.stage(name, path)
            if r is not None:
                total += r.seconds_per_item / (IMAGES_PER_CLUSTER if name == "cluster_labels" else 1)
        return total

    def as_dict(self) -> dict:
        naive, optimised = self.per_image("naive"), self.per_image("optimised")
        return {
            "config": self.config,
            "machine": self.machine,
            "stages": [r.as_dict() for r in self.results],
            "end_to_end": {
                "images_per_cluster": IMAGES_PER_CLUSTER,
                "naive_seconds_per_image": naive,
                "optimised_seconds_per_image": optimised,
                "optimised_images_per_second": 1 / optimised if optimised else None,
                "speedup": naive / optimised if optimised and naive else None,
                "chosen_batch_sizes": {
                    name: r.batch_size for name in STAGES if (r := self.stage(name, "optimised")) is not None
                },
            },
            "int8_weight_only_linears": self.int8_linears,
        }


def machine_description(device: str) -> dict:
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "")
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu": model or platform.processor(),
        "cpu_threads": torch.get_num_threads(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_benchmark(config: BenchConfig, log=print, on_result=None) -> BenchResult:
    """Run the configured stages; ``on_result(result)`` is called after each measurement (partial saves)."""
    device = resolve_device(config.device)
    # What a model step's first load does (resources/torch_runtime.load_once): the LLM stages below
    # load their model directly.
    apply_thread_budget()
    keep_freed_memory()
    # int8 is a precision of the captioner and the metadata LLM (resources/precision.py), not a
    # torch dtype; CLIP, which has no int8, stays float32 then.
    dtype_name = "int8" if config.dtype == "int8" else str(resolve_dtype(config.dtype, device)).removeprefix("torch.")
    result = BenchResult(
        config={
            "models": config.models_label, "images": str(config.images), "count": config.count,
            "naive_count": config.naive_count, "device": device, "dtype": dtype_name,
            "caption_batch": list(config.caption_batch), "llm_batch": list(config.llm_batch),
            "clip_batch": config.clip_batch,
            "jump_forward": config.jump_forward, "stages": list(config.stages), "int8": config.int8,
            "cpu_workers": worker_count(config.cpu_workers),
        },
        machine=machine_description(device),
    )
    paths = {"naive": config.naive_count, "optimised": config.count}
    naive = [("naive", 1)] if config.naive_count else []  # --naive-count 0 skips the naive path
    if not config.naive_count:
        del paths["naive"]

    def record(r: StageResult) -> None:
        result.results.append(r)
        if on_result is not None:
            on_result(result)
        log(f"  {r.stage:<16} {r.path:<9} batch {r.batch_size:>3}  {r.items:>3} items  {r.seconds_per_item:8.3f} s/item  "
            f"peak RSS {r.peak_rss_gib:5.1f} GiB")

    # The naive path is the seed's: one image after another in one process.
    workers = {"naive": 1, "optimised": worker_count(config.cpu_workers)}
    images = {path: stages.load_images(config.images, n) for path, n in paths.items()}
    if "decode" in config.stages:
        for path, n in paths.items():
            record(stages.decode_stage(config.images, n, device, path, workers[path]))

    if "palette" in config.stages:
        for path, n in paths.items():
            record(stages.palette_stage(config.images, n, device, path, workers[path]))

    if "clip_embeddings" in config.stages:
        for path, batch in naive + [("optimised", config.clip_batch)]:
            embedder = ClipEmbedderResource(model=config.models.clip, pretrained=config.models.clip_pretrained,
                                            device=device, dtype="float32" if dtype_name == "int8" else dtype_name,
                                            batch_size=batch)
            record(stages.clip_stage(embedder, images[path], device, path))
        free_memory(device)

    if "captions" in config.stages:
        log("captions: loading BLIP-2")
        for path, batch in naive + [("optimised", b) for b in config.caption_batch]:
            captioner = CaptionerResource(model=config.models.blip2, device=device, dtype=dtype_name, batch_size=batch,
                                          max_new_tokens=stages.CAPTION_TOKENS, min_new_tokens=stages.CAPTION_TOKENS)
            record(stages.caption_stage(captioner, images[path], device, path))
        free_memory(device)

    llm_stages = [s for s in ("image_metadata", "cluster_labels") if s in config.stages]
    if llm_stages:
        log("metadata LLM: loading")
        chat = load_chat_model(config.models.phi3, device, dtype_name)
        optimised = [DecodeSettings(b, prefix_cache=True, jump_forward=config.jump_forward) for b in config.llm_batch]
        for stage in llm_stages:
            workload = stages.metadata_workload if stage == "image_metadata" else stages.cluster_workload
            # Clusters are few (one per ten images): one batch size covers them all.
            sweep = optimised if stage == "image_metadata" else optimised[-1:]
            naive_settings = [("naive", DecodeSettings.naive())] if config.naive_count else []
            for path, settings in naive_settings + [("optimised", s) for s in sweep]:
                inputs, targets = workload(paths[path])
                record(stages.llm_stage(chat, stage, inputs, targets, settings, device, path))
        del chat
        free_memory(device)

    if config.int8:
        from benchmarks.int8 import measure_int8_linears

        log("int8 weight-only linears vs bf16")
        result.int8_linears = measure_int8_linears()
        for row in result.int8_linears:
            log(f"  {row['tokens_per_call']:>3} tokens/call: int8 {row['int8_speedup']:.2f}x bf16 speed, "
                f"relative error {row['max_relative_error_vs_bf16']:.4f}")
    return result
