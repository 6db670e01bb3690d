"""Content-hash reuse: the one place that decides what a model step reuses and what it computes.

Rows carry a ``fingerprint`` of everything that determined them (model, settings, prompt;
for per-image assets the image is identified by its sha256 ``image_id``). Lookups span
every batch of the asset in the warehouse, so a photo copied into a new batch is not sent
to the model again either, and the chunks a stopped step had finished (``Progress``), so a
re-run resumes where it stopped. Error rows have no fingerprint and are never reused, nor are
fallbacks caused by a model failure (those may succeed next time).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Hashable, Mapping, TypeVar

import duckdb
import pyarrow as pa
from dagster import AssetExecutionContext

from assets.model_stage import MODEL_FAILURE_PREFIX
from resources.settings import PixelsiftSettings
from resources.warehouse import reusable_files, save_partial

K = TypeVar("K", bound=Hashable)
WHOLE_COLLECTION = "collection"  # the "batch" of a step of an unpartitioned asset (collection_cluster_labels)


@dataclass(frozen=True)
class ModelStep:
    """A model step of one asset partition: where it finds earlier results and saves its progress."""

    settings: PixelsiftSettings
    asset: str
    batch: str
    table: pa.Schema  # the asset's Parquet schema, which saved chunks use too
    logger: logging.Logger
    # Other assets whose rows are this one's results where the fingerprints are equal (the same
    # model, prompt and input): looked up too, never written to.
    also_from: tuple[str, ...] = ()

    @classmethod
    def of(cls, context: AssetExecutionContext, settings: PixelsiftSettings, table: pa.Schema,
           also_from: tuple[str, ...] = ()) -> ModelStep:
        """The step Dagster is running: its asset, its batch partition (an asset of the whole collection:
        ``WHOLE_COLLECTION``, the name its saved chunks go under), its log."""
        batch = context.partition_key if context.has_partition_key else WHOLE_COLLECTION
        return cls(settings, "/".join(context.asset_key.path), batch, table, context.log, also_from)

    def split_reusable(self, fingerprints: Mapping[K, str], *, key_column: str | None) -> tuple[dict[K, dict], list[K]]:
        """(an earlier row for each item that has one, the items left to compute, in order).

        An item is identified by its fingerprint and, when ``key_column`` is given, by that column
        too (per-image assets: ``image_id``, since one fingerprint covers the whole batch).
        """
        found: dict[tuple, dict] = {}
        if self.settings.reuse_results:
            wanted = {(item if key_column else None, fp) for item, fp in fingerprints.items()}
            for row in _earlier_rows(self.settings.warehouse_dir, (self.asset, *self.also_from), wanted, key_column):
                key = (row[key_column] if key_column else None, row["fingerprint"])
                found.setdefault(key, row)
        reused, todo = {}, []
        for item, fp in fingerprints.items():
            row = found.get((item if key_column else None, fp))
            if row is None:
                todo.append(item)
            else:
                reused[item] = row
        return reused, todo

    def progress(self, total: int) -> Progress:
        return Progress(self, total)


def _earlier_rows(warehouse_dir: str, assets: tuple[str, ...], wanted: set[tuple], key_column: str | None) -> list[dict]:
    """Stored rows of ``assets`` (partitions and saved chunks), in one query, matching one of the
    ``wanted`` (key, fingerprint) pairs (key None: the fingerprint alone), except those whose result
    was a fallback for a model failure. The keys are matched in the query: matching the fingerprint alone brought
    back every row one model ever made (the whole collection, vectors and all, into Python) for each
    batch, so a backfill grew as batches x collection."""
    files = [f for asset in assets for f in reusable_files(warehouse_dir, asset)]
    if not files or not wanted:
        return []
    con = duckdb.connect(":memory:")
    keys, fps = zip(*sorted(wanted, key=lambda pair: (str(pair[0]), pair[1])))
    con.register("wanted", pa.table({"k": pa.array([str(k) if key_column else "" for k in keys], pa.string()),
                                     "fingerprint": pa.array(fps, pa.string())}))
    key = f'CAST(p."{key_column}" AS VARCHAR)' if key_column else "''"
    rows = con.sql(
        f"SELECT p.* FROM read_parquet($files, union_by_name = true, hive_partitioning = false) p "
        f"JOIN wanted w ON w.fingerprint = p.fingerprint AND w.k = {key}",
        params={"files": [str(f) for f in files]},
    ).arrow().read_all().to_pylist()
    return [r for r in rows if not (r.get("fallback_reason") or "").startswith(MODEL_FAILURE_PREFIX)]


class Progress:
    """Saves a model step's finished rows chunk by chunk, in the asset's schema, until the step's
    partition is written; a stopped step then loses at most the chunk it was computing. Logs how
    far the step is, which is what the Dagster UI shows during a long step."""

    def __init__(self, step: ModelStep, total: int):
        self.step, self.total, self.saved = step, total, 0

    def save(self, rows: list[dict]) -> None:
        if not rows:
            return
        step = self.step
        self.saved += len(rows)
        step.logger.info("%s: %d of %d done", step.asset, self.saved, self.total)
        try:
            save_partial(pa.Table.from_pylist(rows, schema=step.table), step.settings.warehouse_dir, step.asset,
                         step.batch)
        except OSError as exc:
            # A safety net, not the result: the step goes on and its partition is still written.
            step.logger.warning("could not save a finished chunk of %s: %s", step.asset, exc)
