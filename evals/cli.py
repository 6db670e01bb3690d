"""``pixelsift baseline ...`` and ``pixelsift eval ...``: the eval commands, added to the main group."""

from __future__ import annotations

from pathlib import Path

import click

from resources.batch_keys import batch_key_param


def _problem_lines(problems, limit: int = 20) -> list[str]:
    lines = [f"  line {p.line}: {p.reason}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  … and {len(problems) - limit} more")
    return lines


@click.group()
def baseline() -> None:
    """Reference datasets for the quality eval: one <batch>.jsonl or .parquet per batch."""


@baseline.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch", required=True, callback=batch_key_param, help="The batch this export describes.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Baselines folder [default: the baselines_dir setting, data/baselines].")
@click.option("--force", is_flag=True, help="Replace an existing baseline for the batch.")
def import_(file: Path, batch: str, out_dir: Path | None, force: bool) -> None:
    """Convert an export of the Gemini-based system (rows with vlm_* metadata) into a baseline.

    Example: pixelsift baseline import assets_export.jsonl --batch holiday
    """
    from evals.baseline import BASELINE_SUFFIXES
    from evals.legacy_import import import_export
    from resources.settings import PixelsiftSettings

    out_dir = out_dir or Path(PixelsiftSettings().baselines_dir)
    existing = [out_dir / f"{batch}{s}" for s in BASELINE_SUFFIXES if (out_dir / f"{batch}{s}").exists()]
    if existing and not force:
        raise click.ClickException(f"{existing[0]} exists; pass --force to replace it")
    # The old baseline goes only once the new one is written: a failed import leaves it as it was.
    kept = f"; {', '.join(map(str, existing))} left as it was" if existing else ""
    out = out_dir / f"{batch}.jsonl"
    try:
        result = import_export(file, out)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"{exc}{kept}") from None
    if result.skipped:
        click.echo(f"Left out {len(result.skipped)} rows on purpose:")
        click.echo("\n".join(_problem_lines(result.skipped)))
    if result.problems:
        click.echo(f"{len(result.problems)} malformed rows were not imported:", err=True)
        click.echo("\n".join(_problem_lines(result.problems)), err=True)
    if not result.records:
        raise click.ClickException(f"no row of {file} could be imported; nothing written{kept}")
    for path in existing:
        if path != out:  # e.g. an older <batch>.parquet: two files for one batch would be ambiguous
            path.unlink()
    images = sum(1 for r in result.records if r["record"] == "image")
    click.echo(f"Wrote {out}: {images} image records, {len(result.records) - images} cluster records.")


@baseline.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def validate(file: Path) -> None:
    """Check a baseline file line by line; exits with status 1 when a line does not load.

    Example: pixelsift baseline validate data/baselines/sample.jsonl
    """
    from evals.baseline import load_baseline

    try:
        loaded = load_baseline(file)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{file}: source {loaded.source or 'not stated'}; "
               f"{len(loaded.images)} image records, {len(loaded.clusters)} cluster records.")
    if loaded.problems:
        click.echo(f"{len(loaded.problems)} lines did not load:", err=True)
        click.echo("\n".join(_problem_lines(loaded.problems)), err=True)
        raise SystemExit(1)


@click.group("eval")
def eval_group() -> None:
    """Quality evaluation: compare runs, recalibrate the semantic thresholds."""


@eval_group.command()
@click.argument("a", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("b", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--batch", required=True, callback=batch_key_param, help="The batch both runs evaluated.")
@click.option("--samples", default=2000, show_default=True, help="Bootstrap resamples.")
@click.option("--seed", default=0, show_default=True, help="Bootstrap seed.")
def compare(a: Path, b: Path, batch: str, samples: int, seed: int) -> None:
    """Compare two runs on the same batch, field by field; A and B are warehouse directories.

    Example: pixelsift eval compare data/warehouse data/warehouse-v2 --batch sample
    """
    from evals.compare import RunNotFound, compare_runs, format_comparison, load_run

    try:
        run_a, run_b = load_run(a, batch), load_run(b, batch)
    except RunNotFound as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_comparison(run_a, run_b, compare_runs(run_a, run_b, samples=samples, seed=seed)))


@eval_group.command()
def calibrate() -> None:
    """Recompute the semantic thresholds from the labelled examples in evals/calibration.py.

    Example: pixelsift eval calibrate
    """
    from evals.calibration import calibrate as run_calibration
    from evals.semantic import SentenceEncoder
    from evals.settings import EvalSettings

    result = run_calibration(SentenceEncoder())
    defaults = EvalSettings()
    click.echo(f"semantic_match_threshold = {result.match_threshold:.2f} (default {defaults.semantic_match_threshold}; "
               f"classifies {result.term_accuracy:.0%} of the labelled term pairs correctly)")
    click.echo(f"similarity_floor = {result.similarity_floor:.2f} (default {defaults.similarity_floor})")
    click.echo(f"similarity_ceiling = {result.similarity_ceiling:.2f} (default {defaults.similarity_ceiling})")
