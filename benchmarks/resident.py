"""Peak memory of ``pixelsift run`` with the full-size models: one large model resident at a
time (the default) against both kept loaded (the behaviour before it).

    python -m benchmarks.resident [--models-dir data/models/bench] [--batch sample]

Runs the real ``process_batch`` job in one process, as ``pixelsift run`` does, with the
full-size random-weight BLIP-2 OPT-2.7B and Phi-3.5-mini in bf16 on the CPU (built on first use,
as by ``pixelsift bench --models full``) and ViT-B-32 with random weights. The LLM's token
budgets are cut to 16: random weights never finish a document, and memory depends on the weights
and the batch, not on how long the model writes. Each variant runs in a process of its own; the
figure is the kernel's high-water mark of its resident memory (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGETS = {"max_new_tokens": 16, "retry_max_new_tokens": 16}
VARIANTS = ("one_large_model", "both_kept")


def run_variant(variant: str, models_dir: Path, images_root: str, batch: str) -> dict:
    from dagster import DagsterInstance

    from benchmarks.full_size import CLIP_MODEL, build_blip2_opt_27b, build_phi35_mini
    from benchmarks.measure import peak_rss_bytes
    from dagster_project.definitions import build_definitions
    from resources import torch_runtime
    from resources.captioner import CaptionerResource
    from resources.clip_embedder import ClipEmbedderResource
    from resources.metadata_llm import MetadataLLMResource
    from resources.settings import PixelsiftSettings

    if variant == "both_kept":
        torch_runtime._release_large = lambda: None  # what load_once did before large models were released
    models = {
        "captioner": CaptionerResource(model=str(build_blip2_opt_27b(models_dir / "blip2")), device="cpu",
                                       dtype="bfloat16"),
        "metadata_llm": MetadataLLMResource(model=str(build_phi35_mini(models_dir / "phi35")), device="cpu",
                                            dtype="bfloat16"),
        "clip_embedder": ClipEmbedderResource(model=CLIP_MODEL, pretrained="", device="cpu", dtype="bfloat16"),
    }
    with tempfile.TemporaryDirectory() as scratch:
        settings = PixelsiftSettings(images_root=images_root, warehouse_dir=f"{scratch}/warehouse",
                                     reports_dir=f"{scratch}/reports", reuse_results=False)
        instance = DagsterInstance.ephemeral()
        instance.add_dynamic_partitions("batch", [batch])
        start = time.perf_counter()
        result = build_definitions(settings, models).resolve_job_def("process_batch").execute_in_process(
            partition_key=batch, instance=instance,
            run_config={"ops": {"image_metadata": {"config": BUDGETS}, "cluster_labels": {"config": BUDGETS}}},
        )
        wall = time.perf_counter() - start
    if not result.success:
        raise SystemExit(f"{variant}: run failed")
    return {"variant": variant, "peak_rss_gib": round(peak_rss_bytes() / 2**30, 2), "job_wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("data/models/bench"))
    parser.add_argument("--images-root", default="data/images")
    parser.add_argument("--batch", default="sample")
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant in this process (used internally)")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.models_dir, args.images_root, args.batch)))
        return
    results = []
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.resident", "--variant", variant, "--models-dir", str(args.models_dir),
             "--images-root", args.images_root, "--batch", args.batch],
            capture_output=True, text=True, check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
