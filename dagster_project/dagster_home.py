"""DAGSTER_HOME's instance settings: the dagster.yaml shipped next to this module, copied in."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SHIPPED = Path(__file__).with_name("dagster.yaml")


def install_instance_settings(home: Path) -> None:
    """Put the shipped dagster.yaml in ``home`` when it has none, or an older copy of ours (same first
    line); a dagster.yaml with another first line is someone's own and left alone."""
    shipped = SHIPPED.read_text(encoding="utf-8")
    target = home / "dagster.yaml"
    try:
        current = target.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        current = None
    if current is not None and (current == shipped or current.partition("\n")[0] != shipped.partition("\n")[0]):
        return
    # Written whole then renamed: a second pixelsift starting at the same moment never reads half a file.
    fd, tmp = tempfile.mkstemp(dir=home, prefix=".dagster.yaml.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(shipped)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def initialize_pools(instance) -> None:
    """Record each pool's limit now, from this one process. Dagster otherwise records a pool's
    default limit at the pool's first use, and two runs first using it at the same moment on a new
    instance could both take the slot (seen with sqlite in tests/test_run_limits.py)."""
    from resources.concurrency import GPU_POOL, LARGE_MODEL_POOL, gpu_count

    if gpus := gpu_count():  # one slot per GPU, whatever the default: the setting says how many there are
        instance.event_log_storage.set_concurrency_slots(GPU_POOL, gpus)
    if instance.get_concurrency_config().pool_config.default_pool_limit is None:
        return  # no limit configured: nothing to record
    info = instance.event_log_storage.get_pool_limits()
    if not any(limit.name == LARGE_MODEL_POOL for limit in info):
        instance.event_log_storage.initialize_concurrency_limit_to_default(LARGE_MODEL_POOL)
