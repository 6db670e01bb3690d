"""Watching the images root: a new subfolder becomes a batch partition, a changed one is re-run;
a changed reference file re-runs only that batch's evaluation."""

import hashlib
import json
import os
from pathlib import Path

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, sensor

from assets.batch_files import BatchOutsideRoot, check_batch_folder, entry_stat, list_batch_files
from dagster_project.jobs import process_batch_job
from resources.batch_keys import InvalidBatchKey, validate_batch_key
from resources.partitions import batch_partitions
from evals.assets import eval_assets
from evals.baseline import BASELINE_SUFFIXES
from resources.settings import PixelsiftSettings

EVAL_ASSET_KEYS = [key for definition in eval_assets for key in definition.keys]


def files_signature(stats: dict[str, os.stat_result]) -> str:
    """Changes when a file (by relative name) is added, removed, renamed or rewritten (size or mtime)."""
    digest = hashlib.sha256()
    for name, stat in stats.items():
        # surrogateescape: a file name that is not UTF-8 is still bytes to hash, not a crash of every tick.
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def folder_signature(folder: Path) -> str:
    # Nothing is opened (a FIFO would block), and no link is followed out of the root (entry_stat).
    files = list_batch_files(folder)
    return files_signature({p.relative_to(folder).as_posix(): entry_stat(p, folder) for p in files})


def baseline_signature(baselines_dir: Path, batch: str) -> str:
    """Changes when the batch's reference file appears, disappears or is rewritten."""
    candidates = (baselines_dir / f"{batch}{suffix}" for suffix in BASELINE_SUFFIXES)
    return files_signature({p.name: p.stat() for p in candidates if p.is_file()})


def batch_folders(root: Path, log=None) -> list[str]:
    """The batch keys under ``root``: its subfolders with valid names. Others, and links that lead out
    of the root, are skipped, each with a warning on ``log`` (anything with a ``warning`` method);
    hidden folders are skipped silently."""
    keys = []
    if not root.is_dir():
        return keys
    for folder in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        try:
            check_batch_folder(folder)  # before is_dir(), which would look at a link's target
            if folder.is_dir():
                keys.append(validate_batch_key(folder.name))
        except (InvalidBatchKey, BatchOutsideRoot) as exc:
            if log:
                # The name only as repr: it may hold a newline or bytes that are not text.
                log.warning(f"skipping folder {folder.name!r} in {root}: {exc}")
    return keys


def scan_batches(root: Path, log=None) -> dict[str, str]:
    """Batch folders under ``root`` with their signatures."""
    return {key: folder_signature(root / key) for key in batch_folders(root, log)}


@sensor(job=process_batch_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def batch_folder_sensor(context: SensorEvaluationContext, settings: PixelsiftSettings) -> SensorResult:
    """Registers each new subfolder of the images root as a batch and runs it; re-runs a batch whose
    files changed, and only the evaluation of a batch whose reference file changed (a new import)."""
    seen: dict[str, list[str]] = json.loads(context.cursor) if context.cursor else {}
    folders = scan_batches(Path(settings.images_root), context.log)
    current = {k: [sig, baseline_signature(Path(settings.baselines_dir), k)] for k, sig in folders.items()}
    known = set(context.instance.get_dynamic_partitions(batch_partitions.name))
    new_keys = [k for k in current if k not in known]
    runs = []
    for key, (images, baseline) in current.items():
        before = seen.get(key)
        if isinstance(before, str):  # a cursor from before reference files were watched
            before = [before, baseline]
        run_key = f"{key}:{images}:{baseline}"
        if before is None or before[0] != images:
            runs.append(RunRequest(partition_key=key, run_key=run_key))
        elif before[1] != baseline:
            # The pipeline's results are unchanged: re-score them against the new reference.
            runs.append(RunRequest(partition_key=key, run_key=run_key, asset_selection=EVAL_ASSET_KEYS))
    return SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[batch_partitions.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(current, sort_keys=True),
    )
