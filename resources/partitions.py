"""The one partitioning of pixelsift: each immediate subfolder of the images root is a batch."""

from __future__ import annotations

from dagster import BackfillPolicy, DynamicPartitionsDefinition

# Keys are checked by resources.batch_keys.validate_batch_key wherever they come in.
batch_partitions = DynamicPartitionsDefinition(name="batch")


def batches_backfill_policy(batches_per_run: int) -> BackfillPolicy:
    """How a backfill of many batches is split into runs: one run over all of them (0), or runs of
    at most ``batches_per_run``. Each run's model steps load their model once for all its batches
    (assets/batch_range.py); a smaller run holds fewer batches' tables in memory at once."""
    if batches_per_run <= 0:
        return BackfillPolicy.single_run()
    return BackfillPolicy.multi_run(max_partitions_per_run=batches_per_run)


def batch_ranges(partition_order: list[str], batches: list[str], batches_per_run: int = 0) -> list[list[str]]:
    """``batches`` cut into runs over ranges of partitions, as a backfill cuts them: each run covers
    batches next to each other in ``partition_order`` (the order they were registered in; a range
    must not take in a batch that was not asked for), at most ``batches_per_run`` of them (0: no limit)."""
    position = {key: i for i, key in enumerate(partition_order)}
    unknown = [b for b in batches if b not in position]
    if unknown:
        raise ValueError(f"not batch partitions (yet): {', '.join(unknown)}")
    runs: list[list[str]] = []
    for batch in sorted(set(batches), key=position.__getitem__):
        last = runs[-1] if runs else None
        if last and position[batch] == position[last[-1]] + 1 and not (0 < batches_per_run <= len(last)):
            last.append(batch)
        else:
            runs.append([batch])
    return runs
