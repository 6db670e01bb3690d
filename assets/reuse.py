"""Content-hash reuse: results an identical input already got from the same model and settings.

Rows carry a ``fingerprint`` of everything that determined them (model, settings, prompt;
for per-image assets the image is identified by its sha256 ``image_id``). Lookups span
every batch of the asset in the warehouse, so a photo copied into a new batch is not sent
to the model again either, and the chunks a stopped step had finished (``Progress``), so a
re-run resumes where it stopped. Error rows have no fingerprint and are never reused, nor are
fallbacks caused by a model failure (those may succeed next time).
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import pyarrow as pa

from resources.warehouse import reusable_files, save_partial

MODEL_FAILURE_PREFIX = "model failed"


def earlier_rows(warehouse_dir: str | Path, asset: str, fingerprints: list[str], key: str) -> dict[str, dict]:
    """Reusable earlier rows of ``asset`` whose fingerprint is in ``fingerprints``, one per ``key`` value."""
    files = reusable_files(warehouse_dir, asset)
    if not files or not fingerprints:
        return {}
    con = duckdb.connect(":memory:")
    con.register("wanted", pa.table({"fingerprint": pa.array(sorted(set(fingerprints)), pa.string())}))
    rows = con.sql(
        "SELECT p.* FROM read_parquet($files, union_by_name = true, hive_partitioning = false) p "
        "JOIN wanted USING (fingerprint)",
        params={"files": [str(f) for f in files]},
    ).arrow().read_all().to_pylist()
    found: dict[str, dict] = {}
    for row in rows:
        if (row.get("fallback_reason") or "").startswith(MODEL_FAILURE_PREFIX):
            continue
        found.setdefault(row[key], row)
    return found


def previous_results(warehouse_dir: str | Path, asset: str, fingerprint: str, image_ids: list[str]) -> dict[str, dict]:
    """Earlier rows of a per-image asset made with ``fingerprint``, by image_id, for the given images."""
    wanted = set(image_ids)
    found = earlier_rows(warehouse_dir, asset, [fingerprint], key="image_id")
    return {image_id: row for image_id, row in found.items() if image_id in wanted}


class Progress:
    """Saves a model step's finished rows chunk by chunk, in the asset's schema, until the step's
    partition is written; a stopped step then loses at most the chunk it was computing. Logs how
    far the step is, which is what the Dagster UI shows during a long step."""

    def __init__(self, warehouse_dir: str | Path, asset: str, batch: str, schema: pa.Schema, logger: logging.Logger,
                 *, total: int):
        self.warehouse_dir, self.asset, self.batch, self.schema = warehouse_dir, asset, batch, schema
        self.logger, self.total, self.saved = logger, total, 0

    def save(self, rows: list[dict]) -> None:
        if not rows:
            return
        self.saved += len(rows)
        self.logger.info("%s: %d of %d done", self.asset, self.saved, self.total)
        try:
            save_partial(pa.Table.from_pylist(rows, schema=self.schema), self.warehouse_dir, self.asset, self.batch)
        except OSError as exc:
            # A safety net, not the result: the step goes on and its partition is still written.
            self.logger.warning("could not save a finished chunk of %s: %s", self.asset, exc)
