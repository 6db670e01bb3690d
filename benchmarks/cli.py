"""``pixelsift bench`` / ``python -m benchmarks``: throughput of every stage, naive and optimised, in one run."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from unittest.mock import patch

import click

# Only light imports here: this module is loaded with every `pixelsift` command.
from benchmarks.config import STAGES, BenchConfig, ModelPaths


def _model_paths(models: str, models_dir: Path, device: str) -> ModelPaths:
    if models == "tiny":
        from dagster_project.profiles import ensure_tiny_models, tiny_models_dir

        paths = ensure_tiny_models(tiny_models_dir())
        return ModelPaths(str(paths["blip2"].resolve()), str(paths["phi3"].resolve()), str(paths["clip"].resolve()), "")
    from benchmarks.full_size import CLIP_MODEL, build_blip2_opt_27b, build_phi35_mini
    from resources.torch_runtime import resolve_device

    click.echo(f"full-size random-weight models in {models_dir} (built on first use, ~16 GB)", err=True)
    device = resolve_device(device)
    return ModelPaths(str(build_blip2_opt_27b(models_dir / "blip2", device)),
                      str(build_phi35_mini(models_dir / "phi35", device)), CLIP_MODEL, "")


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of batch sizes") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter("batch sizes must be positive")
    return sizes


def _command_line(ctx: click.Context) -> str:
    """The run's command with every option spelled out, defaults included, so it can be repeated exactly."""
    words = ["pixelsift", "bench"]
    for param in ctx.command.params:
        value = ctx.params[param.name]
        if param.is_flag and param.secondary_opts:  # --x/--no-x
            words.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.is_flag:
            words += [param.opts[0]] if value else []
        elif value is not None:
            words += [param.opts[0], str(value)]
    return shlex.join(words)


@click.command()
@click.option("--models", type=click.Choice(["full", "tiny"]), default="full", show_default=True,
              help="full: the default architectures at full size with random weights; tiny: the test models.")
@click.option("--models-dir", type=click.Path(path_type=Path), default=Path("data/models/bench"), show_default=True,
              help="Where the full-size random-weight checkpoints are built and kept.")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("data/images/sample"), show_default=True, help="Folder of images (cycled to --count).")
@click.option("--count", default=32, show_default=True, help="Images through the optimised path.")
@click.option("--naive-count", type=int, default=None,
              help="Images through the naive path (default: --count; 0 skips it). Its cost per image does not depend on how many.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
@click.option("--dtype", default="auto", show_default=True, help="auto (bf16 on CUDA and bf16-capable CPUs), float32, ...")
@click.option("--caption-batch", default="16", show_default=True,
              help="Batch size, or a comma-separated list to sweep: each is measured and the fastest is used.")
@click.option("--llm-batch", default="32", show_default=True, help="As --caption-batch, for the metadata LLM.")
@click.option("--clip-batch", default=32, show_default=True)
@click.option("--jump-forward/--no-jump-forward", default=True, show_default=True)
@click.option("--cpu-workers", default=0, show_default=True, type=click.IntRange(min=0),
              help="Workers for decoding and palettes on the optimised path (0: one per core, up to 16).")
@click.option("--stages", "stage_list", default=",".join(STAGES), show_default=True, help="Comma-separated subset.")
@click.option("--int8", is_flag=True, help="Also time int8 weight-only linears (Phi-3.5 shapes) against bf16 on CPU.")
@click.option("--side-by-side", is_flag=True,
              help="Only compare the metadata LLM SmolLM2-135M-Instruct in-process and on llama.cpp's server, on "
              "--count captions (batches of --llm-batch, --server-concurrency requests in flight).")
@click.option("--server-concurrency", default=1, show_default=True, type=click.IntRange(min=1),
              help="With --side-by-side: requests in flight to the server.")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="JSON file for the raw figures (default: benchmarks/results/<models>-<device>.json).")
def bench(models, models_dir, images, count, naive_count, device, dtype, caption_batch, llm_batch, clip_batch,
          jump_forward, cpu_workers, stage_list, int8, side_by_side, server_concurrency, output) -> None:
    """Measure each stage and the whole pipeline, naive vs optimised, on the same images in one process.

    Example: pixelsift bench --models tiny --count 8

    Example: pixelsift bench --side-by-side --count 16 --llm-batch 16
    """
    if side_by_side:
        from benchmarks import serving

        command = _command_line(click.get_current_context())
        result = serving.side_by_side(count, max(_sizes(llm_batch)), server_concurrency,
                                      "float32" if dtype == "auto" else dtype, log=lambda line: click.echo(line, err=True))
        click.echo(serving.render(result))
        target = output or Path("benchmarks/results/side-by-side-cpu.json")
        serving.write(result, target, command)
        click.echo(f"\nraw figures: {target}")
        return
    from benchmarks.report import table, write_json
    from benchmarks.runner import run_benchmark
    from resources.torch_runtime import resolve_device

    chosen = tuple(s.strip() for s in stage_list.split(",") if s.strip())
    unknown = set(chosen) - set(STAGES)
    if unknown:
        raise click.BadParameter(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGES)}")
    config = BenchConfig(
        models=_model_paths(models, models_dir, device), models_label=models, images=images, count=count,
        naive_count=count if naive_count is None else naive_count, device=device, dtype=dtype, caption_batch=_sizes(caption_batch),
        llm_batch=_sizes(llm_batch), clip_batch=clip_batch, jump_forward=jump_forward, stages=chosen, int8=int8,
        cpu_workers=cpu_workers,
    )
    target = output or Path("benchmarks/results") / f"{models}-{resolve_device(device)}.json"
    command = _command_line(click.get_current_context())
    # One stage at a time, each with every core, as `pixelsift run` runs them. Without this a stage
    # took the threads of a step sharing the machine with another (one of two cores): captions
    # under AVX2 took 10.9 s per image that way and 7.7 s with both cores (BENCHMARKS.md, "int8
    # per token"). Set for the run only, so a caller's process (a test) keeps its own budget.
    one_step = {"PIXELSIFT_STEPS_AT_ONCE": os.environ.get("PIXELSIFT_STEPS_AT_ONCE", "1")}
    with patch.dict(os.environ, one_step):
        result = run_benchmark(config, log=lambda line: click.echo(line, err=True),
                               on_result=lambda partial: write_json(partial, target, command, complete=False))
    click.echo(table(result))
    write_json(result, target, command)
    click.echo(f"\nraw figures: {target}")
