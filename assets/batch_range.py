"""One step over several batches: how a pipeline asset runs in a run over a range of batches.

A backfill of many batches runs as one run over a range of partitions (the single-run backfill
policy, ``resources/partitions.py``), so each model step loads its model once for all of them
instead of once per batch. Every pipeline asset is written for one batch; ``per_batch`` runs it
once per batch of the step's range, with that batch's inputs, and returns a ``BatchTables`` that
the warehouse writes partition by partition. In a run of one batch nothing changes: the asset
reads and returns plain tables.

A model step saves finished chunks per batch as it goes (``assets/reuse.py``), so a step that
stops in its seventh batch keeps the first six batches' model results for the re-run.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Any, Callable

import pyarrow as pa
from dagster import AssetExecutionContext, DagsterType

from resources.warehouse import BatchTables, table_metadata

# What a pipeline asset reads and returns: one batch's table, or several batches' in a range run.
BatchTable = DagsterType(
    name="BatchTable",
    type_check_fn=lambda _, value: isinstance(value, (pa.Table, BatchTables)),
    description="A pyarrow Table of one batch, or a BatchTables (batch -> Table) in a run over several batches.",
)


class OneBatch:
    """The step's context as one batch's computation sees it: its ``partition_key`` is that batch,
    and its output metadata goes to that batch's materialization only. Everything else (log,
    instance, run id, asset key) is the step's."""

    def __init__(self, context: AssetExecutionContext, batch: str):
        self._context, self._batch = context, batch

    @property
    def partition_key(self) -> str:
        return self._batch

    @property
    def partition_keys(self) -> list[str]:
        return [self._batch]

    @property
    def has_partition_key(self) -> bool:  # the step's own is False over a range (assets/reuse.py asks)
        return True

    def add_output_metadata(self, metadata: dict) -> None:
        self._context.add_asset_metadata(metadata, partition_key=self._batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def per_batch(fn: Callable[..., pa.Table]) -> Callable[..., pa.Table | BatchTables]:
    """``fn`` (an asset's compute function for one batch, taking ``context`` first) made to run
    over every batch of the step. Its ``pa.Table`` inputs and output become ``BatchTable``."""
    hints = typing.get_type_hints(fn, include_extras=True)
    tables = {name for name, hint in hints.items() if hint is pa.Table and name != "return"}
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def compute(context: AssetExecutionContext, **inputs: Any) -> pa.Table | BatchTables:
        batches = list(context.partition_keys)
        if len(batches) == 1:
            return fn(context, **inputs)
        out = BatchTables()
        for batch in batches:
            own = {name: value[batch] if name in tables else value for name, value in inputs.items()}
            try:
                table = fn(OneBatch(context, batch), **own)
            except Exception as exc:
                exc.add_note(f"in batch {batch!r}, one of the {len(batches)} batches of this step")
                raise
            context.add_asset_metadata(table_metadata(table), partition_key=batch)
            out[batch] = table
        return out

    del compute.__wrapped__  # Dagster reads the signature below, not fn's
    compute.__annotations__ = {name: BatchTable if name in tables or name == "return" else hint
                               for name, hint in hints.items()}
    compute.__signature__ = signature.replace(
        parameters=[p.replace(annotation=BatchTable) if p.name in tables else p.replace(annotation=hints.get(p.name, p.annotation))
                    for p in signature.parameters.values()],
        return_annotation=BatchTable,
    )
    return compute
