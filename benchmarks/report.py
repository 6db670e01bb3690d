"""The benchmark's outputs: a table on the terminal and the raw figures as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.config import STAGES
from benchmarks.runner import BenchResult


def table(result: BenchResult) -> str:
    """Markdown table, per stage and end to end: seconds per item for both paths and the speed-up."""
    lines = [
        "| stage | naive s/item | optimised s/item | batch (opt.) | speed-up | optimised items/s "
        "| generated tok/s (opt.) | peak RSS GiB (opt.) | peak GPU GiB (opt.) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stage in STAGES:
        naive, opt = result.stage(stage, "naive"), result.stage(stage, "optimised")
        if opt is None:
            continue
        tokens = f"{opt.generated_tokens / opt.seconds:.1f}" if opt.generated_tokens else ""
        speedup = f"{naive.seconds_per_item / opt.seconds_per_item:.1f}x" if naive else ""
        naive_s = f"{naive.seconds_per_item:.3f}" if naive else ""
        lines.append(f"| {stage} | {naive_s} | {opt.seconds_per_item:.3f} | {opt.batch_size} | {speedup} "
                     f"| {opt.items / opt.seconds:.2f} "
                     f"| {tokens} | {opt.peak_rss_gib:.1f} "
                     f"| {'' if opt.peak_gpu_gib is None else f'{opt.peak_gpu_gib:.1f}'} |")
    e2e = result.as_dict()["end_to_end"]
    if not e2e["optimised_seconds_per_image"] or not e2e["naive_seconds_per_image"]:
        return "\n".join(lines)
    speedup = f"{e2e['speedup']:.1f}x" if e2e["speedup"] else ""
    lines.append(f"| **end to end, per image** | {e2e['naive_seconds_per_image']:.2f} | "
                 f"{e2e['optimised_seconds_per_image']:.2f} | | {speedup} | {e2e['optimised_images_per_second'] or 0:.2f} | | | |")
    return "\n".join(lines)


def write_json(result: BenchResult, path: Path, command: str, complete: bool = True) -> None:
    """Written after every stage too (``complete`` false), so a run cut short keeps what it measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": command, "complete": complete, **result.as_dict()}, indent=2) + "\n")
