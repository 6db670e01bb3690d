"""Decoding camera-sized JPEGs: the reduced-scale decode (``DECODE_MIN_SIDE``) against full size.

    python -m benchmarks.decoding [--count 16] [--width 4032 --height 3024]
    python -m benchmarks.decoding --write DIR --count 64   # only write the photos, for
                                                           # `pixelsift bench --images DIR`

Writes ``count`` photo-like JPEGs of the given size (the sample photos scaled up, with
sensor-like noise, quality 92) to a scratch folder, then times, on one thread, what the pipeline
does per image with the pixels: the ``images`` asset's check (read, hash, decode), and for each
model stage the decode plus that stage's own preprocessing (BLIP-2's 224 px processor, open_clip
ViT-B-32's transform, the palette's k-means). Full size is measured by raising the minimum side
above the image size, which turns the reduction off.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from assets import image_files
from assets.image_files import inspect_file, open_image
from assets.palette import extract_palette

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "images" / "sample"


def write_photos(folder: Path, count: int, size: tuple[int, int]) -> list[str]:
    sources = sorted(p for p in SAMPLE.iterdir() if p.suffix in (".png", ".jpg"))
    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        image = Image.open(sources[i % len(sources)]).convert("RGB").resize(size, Image.Resampling.BICUBIC)
        noisy = np.asarray(image).astype(np.int16) + rng.integers(-6, 7, (size[1], size[0], 3))
        names.append(f"{i:03d}.jpg")
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / names[-1], quality=92)
    return names


def per_image_ms(fn, names: list[str]) -> float:
    start = time.perf_counter()
    for name in names:
        fn(name)
    return round((time.perf_counter() - start) * 1000 / len(names), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--width", type=int, default=4032)
    parser.add_argument("--height", type=int, default=3024)
    parser.add_argument("--write", type=Path, help="write the photos to this folder and stop")
    args = parser.parse_args()
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        print(f"wrote {len(write_photos(args.write, args.count, (args.width, args.height)))} photos to {args.write}")
        return

    import open_clip
    import torch
    from transformers import BlipImageProcessor

    torch.set_num_threads(1)
    blip = BlipImageProcessor(size={"height": 224, "width": 224})
    clip = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)[2]
    limit = args.width * args.height + 1
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        names = write_photos(folder, args.count, (args.width, args.height))
        stages = {
            "images (check)": lambda n: inspect_file(folder / n, folder, limit),
            "captions (decode + BLIP-2 processor)": lambda n: blip(images=[open_image(folder, n, limit)]),
            "clip (decode + transform)": lambda n: clip(open_image(folder, n, limit)),
            "palette (decode + k-means)": lambda n: extract_palette(open_image(folder, n, limit)),
        }
        results = {}
        default = image_files.DECODE_MIN_SIDE
        for label, min_side in (("full size", 10**9), (f"reduced (min side {default})", default)):
            image_files.DECODE_MIN_SIDE = min_side
            per_stage = {stage: per_image_ms(fn, names) for stage, fn in stages.items()}
            results[label] = per_stage | {"total": round(sum(per_stage.values()), 1)}
        image_files.DECODE_MIN_SIDE = default
    print(json.dumps({"images": f"{args.count} JPEGs {args.width}x{args.height}", "ms_per_image": results}, indent=2))


if __name__ == "__main__":
    main()
