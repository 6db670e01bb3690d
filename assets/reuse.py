"""Content-hash reuse: results an identical image already got from the same model and settings.

Looks in every batch of the asset in the warehouse, so a photo copied into a new batch
is not sent to the model again either. Only ``ok`` rows are reused.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from resources.warehouse import DATA_FILE


def previous_results(warehouse_dir: str | Path, asset: str, fingerprint: str, image_ids: list[str]) -> dict[str, dict]:
    """Earlier ok rows of ``asset`` with this fingerprint, by image_id (one per image)."""
    asset_dir = Path(warehouse_dir) / asset
    files = sorted(asset_dir.glob(f"batch=*/{DATA_FILE}"))
    if not files or not image_ids:
        return {}
    con = duckdb.connect(":memory:")
    wanted = pa.table({"image_id": pa.array(sorted(set(image_ids)), pa.string())})
    con.register("wanted", wanted)
    rel = con.sql(
        "SELECT * EXCLUDE (rn) FROM ("
        "  SELECT p.*, row_number() OVER (PARTITION BY p.image_id ORDER BY p.path) AS rn"
        "  FROM read_parquet($files, union_by_name = true) p JOIN wanted USING (image_id)"
        "  WHERE p.status = 'ok' AND p.fingerprint = $fp"
        ") WHERE rn = 1",
        params={"files": [str(f) for f in files], "fp": fingerprint},
    )
    return {row["image_id"]: row for row in rel.arrow().to_pylist()}
