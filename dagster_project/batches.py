"""Batch partitions whose folder is gone, found and removed on request (`pixelsift batches prune`).

Never done by the sensor on its own: a folder missing for a moment (a drive not yet mounted, a
folder being renamed) would lose its partition and, when it comes back, be run again in full.
"""

from __future__ import annotations

from pathlib import Path

from dagster import DagsterInstance

from dagster_project.sensors import find_batch_folders
from resources.partitions import batch_partitions


class NoImagesRoot(FileNotFoundError):
    """The images root itself is missing: every partition would look stale, so none is."""


def partitions_without_folder(instance: DagsterInstance, root: Path) -> list[str]:
    """Partitions of ``batch`` that are not a batch folder of ``root`` (gone, renamed, or added by hand)."""
    if not root.is_dir():
        raise NoImagesRoot(f"the images root {root} does not exist (a drive not mounted? PIXELSIFT_IMAGES_ROOT "
                           "set in this shell?); no partition was removed")
    folders = set(find_batch_folders(root)[0])
    return sorted(k for k in instance.get_dynamic_partitions(batch_partitions.name) if k not in folders)


def prune_partitions(instance: DagsterInstance, root: Path) -> list[str]:
    """Remove the partitions without a folder; their runs and warehouse files stay. Returns their keys."""
    stale = partitions_without_folder(instance, root)
    for key in stale:
        instance.delete_dynamic_partition(batch_partitions.name, key)
    return stale
