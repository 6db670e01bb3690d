"""Which batches are stale, and why: what the scheduled backfill (dagster_project/schedules.py) runs.

A batch is stale when a run now would not reproduce its stored results:
- it was never processed (no ``images`` materialization in this Dagster instance): "new batch";
- its files changed since ``images`` read them: the folder signature that asset recorded differs
  from the folder's now (files added, removed, renamed or rewritten): "new or changed images";
- a model, prompt or setting changed: the fingerprint on the rows of ``captions``,
  ``clip_embeddings`` or ``image_metadata`` is not the one the configured model stamps now
  (the same functions the assets stamp with): "model changed: captioner", ...;
- a result is missing or unreadable (a run failed or was stopped before writing it).

Settings given as run config in the launchpad (token budgets) are not known here: the defaults are
compared. Error rows carry no fingerprint and do not make a batch stale on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from assets.batch_files import FOLDER_SIGNATURE, BatchOutsideRoot, folder_signature
from assets.captions import captions_fingerprint
from assets.clip_embeddings import clip_fingerprint
from assets.image_metadata import MetadataConfig, metadata_fingerprint
from assets.parquet_schemas import OK
from resources.backends import Captioner, ImageEmbedder, StructuredGenerator
from resources.warehouse import partition_file

PIPELINE_ASSETS = ["images", "captions", "color_palettes", "image_metadata", "clip_embeddings", "clusters",
                   "cluster_labels"]


@dataclass(frozen=True)
class StaleBatch:
    batch: str
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.batch}: {', '.join(self.reasons)}"


@dataclass(frozen=True)
class CurrentFingerprints:
    """What the configured models would stamp on rows computed now."""

    captions: str
    clip_embeddings: str
    metadata_llm: StructuredGenerator

    @classmethod
    def of(cls, captioner: Captioner, clip_embedder: ImageEmbedder, metadata_llm: StructuredGenerator):
        return cls(captions_fingerprint(captioner), clip_fingerprint(clip_embedder), metadata_llm)

    def image_metadata(self, caption_fingerprint: str) -> str:
        return metadata_fingerprint(self.metadata_llm, MetadataConfig(), {caption_fingerprint})


def _recorded_signature(instance: DagsterInstance, batch: str) -> tuple[bool, str | None]:
    """(whether ``images`` was ever materialized for the batch, the folder signature it recorded)."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("images"), asset_partitions=[batch]), limit=1).records
    if not records:
        return False, None
    entry = records[0].asset_materialization.metadata.get(FOLDER_SIGNATURE)
    return True, entry.value if entry is not None else None


def _stored_fingerprints(path: Path) -> set[str] | None:
    """The fingerprints on the OK rows of one stored partition; None if it is missing or unreadable."""
    try:
        table = pq.read_table(path, columns=["status", "fingerprint"])
    except (OSError, pa.ArrowException):
        return None
    return {row["fingerprint"] for row in table.to_pylist() if row["status"] == OK and row["fingerprint"]}


def why_stale(instance: DagsterInstance, images_root: str | Path, warehouse_dir: str | Path, batch: str,
              current: CurrentFingerprints) -> tuple[str, ...]:
    """Why ``batch`` must be run again; empty when its results are current."""
    ran, recorded = _recorded_signature(instance, batch)
    if not ran:
        return ("new batch",)
    reasons = []
    try:
        now = folder_signature(Path(images_root) / batch)
    except (OSError, BatchOutsideRoot) as exc:
        return (f"folder unreadable: {exc}",)
    if recorded is None:
        reasons.append("images read by an older pixelsift (no folder signature)")
    elif recorded != now:
        reasons.append("new or changed images")
    missing = [a for a in PIPELINE_ASSETS if not partition_file(warehouse_dir, a, batch).is_file()]
    if missing:
        reasons.append(f"results missing: {', '.join(missing)}")
    stored = {a: _stored_fingerprints(partition_file(warehouse_dir, a, batch))
              for a in ("captions", "clip_embeddings", "image_metadata") if a not in missing}
    if stored.get("captions") not in (None, set(), {current.captions}):
        reasons.append("model changed: captioner")
    if stored.get("clip_embeddings") not in (None, set(), {current.clip_embeddings}):
        reasons.append("model changed: clip_embedder")
    # Metadata rows carry the captions' fingerprint too: judged only once the captions are current.
    if stored.get("captions") == {current.captions} and stored.get("image_metadata") not in (
            None, set(), {current.image_metadata(current.captions)}):
        reasons.append("model, prompt or settings changed: metadata_llm")
    unreadable = [a for a, fps in stored.items() if fps is None]
    if unreadable:
        reasons.append(f"results unreadable: {', '.join(unreadable)}")
    return tuple(reasons)


def stale_batches(instance: DagsterInstance, images_root: str | Path, warehouse_dir: str | Path,
                  batches: list[str], current: CurrentFingerprints) -> list[StaleBatch]:
    found = []
    for batch in batches:
        reasons = why_stale(instance, images_root, warehouse_dir, batch, current)
        if reasons:
            found.append(StaleBatch(batch, reasons))
    return found
