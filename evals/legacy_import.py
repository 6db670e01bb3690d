"""Importing a baseline from an export of the Gemini-based system pixelsift replaces.

That system stored, per asset row, a ``metadata`` JSON object (or a JSON string of
one) with ``vlm_primary_category``, ``vlm_tags``, ``vlm_description``,
``vlm_detected_objects``, ``vlm_scene_type``, ``vlm_color_palette``, ``vlm_model`` and
``vlm_fallback_used``, next to the row's ``sha256`` (and sometimes a ``path``). Its
cluster rows carry ``id``, ``name`` and the same ``vlm_*`` keys for the cluster label;
an asset row's ``cluster_id`` points at one. The export may be JSONL, a JSON array (or
an object of arrays), CSV or Parquet.

Rows whose metadata came from the fallback (``vlm_fallback_used``) are left out: they
are not the reference model's answers. The export is held to the bounds of a baseline
(``evals.baseline``'s ``MAX_*``): a row over them is reported, a file over them is not read.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from evals.baseline import (
    Problem, Unparsable, check_file_size, parse_json, parse_records, read_jsonl, read_parquet_rows, shorten,
)

IMAGE_KEYS = {
    "vlm_primary_category": "primary_category",
    "vlm_tags": "tags",
    "vlm_description": "description",
    "vlm_detected_objects": "detected_objects",
    "vlm_scene_type": "scene_type",
    "vlm_color_palette": "color_palette",
    "vlm_suggested_cluster_name": "suggested_cluster_name",
    "vlm_model": "vlm_model",
}
CLUSTER_KEYS = {"vlm_description": "description", "vlm_tags": "tags", "vlm_primary_category": "primary_category"}


@dataclass
class ImportResult:
    records: list[dict[str, Any]] = field(default_factory=list)  # baseline records, images then clusters
    skipped: list[Problem] = field(default_factory=list)  # rows left out on purpose, with why
    problems: list[Problem] = field(default_factory=list)  # rows that are malformed


def read_rows(path: Path) -> list[Any]:
    """The export's rows in file order: dicts, None for a blank JSONL line, or for an unreadable JSONL
    line the error. ValueError when the file as a whole cannot be read."""
    suffix = path.suffix.lower()
    if suffix not in {".parquet", ".csv", ".jsonl", ".json"}:
        raise ValueError(f"unsupported export format {suffix!r} (use .jsonl, .json, .csv or .parquet)")
    check_file_size(path)
    if suffix == ".parquet":
        return read_parquet_rows(path)
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            try:
                return [dict(row) for row in reader]
            except csv.Error as error:  # e.g. a field over csv's 128 KiB limit
                raise ValueError(f"line {reader.line_num}: {error}") from None
    if suffix == ".jsonl":
        rows: list[Any] = []
        for number, value in read_jsonl(path):
            rows += [None] * (number - 1 - len(rows))  # blank lines keep the numbering
            rows.append(ValueError(value.reason) if isinstance(value, Unparsable) else value)
        return rows
    data = parse_json(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):  # e.g. {"assets": [...], "clusters": [...]}
        return [row for value in data.values() if isinstance(value, list) for row in value]
    if isinstance(data, list):
        return data
    raise ValueError("expected a JSON array of rows or an object of arrays")


def _metadata(row: dict[str, Any]) -> dict[str, Any]:
    meta = row.get("metadata", row)
    if isinstance(meta, str):
        meta = parse_json(meta) if meta.strip() else {}
    if not isinstance(meta, dict):
        raise ValueError("'metadata' is not a JSON object")
    return meta


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in {"true", "1", "yes"}


def _maybe_json(value: Any) -> Any:
    # CSV exports flatten lists into JSON strings.
    if isinstance(value, str) and value.strip()[:1] in "[{":
        try:
            return parse_json(value)
        except ValueError:
            return value
    return value


def convert_rows(rows: Iterable[Any]) -> ImportResult:
    """Turn export rows (numbered from 1) into baseline records; see the module docstring."""
    result = ImportResult()
    images: list[tuple[int, dict[str, Any], Any]] = []  # (row, record, cluster_id)
    clusters: dict[str, tuple[int, dict[str, Any]]] = {}
    cluster_lines: dict[str, int] = {}  # every cluster id seen, labelled or not
    for number, row in enumerate(rows, start=1):
        if row is None:
            continue
        if not isinstance(row, dict):
            reason = str(row) if isinstance(row, ValueError) else f"not an object but {type(row).__name__}"
            result.problems.append(Problem(number, reason))
            continue
        try:
            meta = _metadata(row)
        except ValueError as error:
            result.problems.append(Problem(number, f"metadata: {error}"))
            continue
        is_image = row.get("sha256") or row.get("path")
        keys = IMAGE_KEYS if is_image else CLUSTER_KEYS
        found = {target: _maybe_json(meta[source]) for source, target in keys.items() if meta.get(source) is not None}
        if not is_image and row.get("name") is not None and row.get("id") is not None:
            cluster_id = str(row["id"])
            if cluster_id in cluster_lines:  # the first stands, as for a baseline's duplicate images
                result.problems.append(Problem(
                    number, f"duplicate of line {cluster_lines[cluster_id]} (same cluster id {shorten(cluster_id)!r})"
                ))
                continue
            cluster_lines[cluster_id] = number
            if not found:
                result.skipped.append(Problem(number, "cluster without a VLM label"))
            else:
                clusters[cluster_id] = (number, {"record": "cluster", "cluster_name": row["name"], **found})
        elif not is_image:
            result.problems.append(Problem(number, "neither an asset (sha256 or path) nor a cluster (id and name)"))
        elif _truthy(meta.get("vlm_fallback_used")):
            result.skipped.append(Problem(number, "fallback output (vlm_fallback_used), not the reference model's"))
        elif not found:
            result.skipped.append(Problem(number, "no VLM metadata"))
        else:
            key = {k: row[k] for k in ("path", "sha256") if row.get(k)}
            images.append((number, {"record": "image", **key, **found}, row.get("cluster_id")))

    for number, record, cluster_id in images:
        cluster = clusters.get(str(cluster_id)) if cluster_id is not None else None
        if cluster is not None:
            # The old system named an asset's cluster from Gemini's suggestion.
            record.setdefault("suggested_cluster_name", cluster[1]["cluster_name"])
            cluster[1].setdefault("members", []).append(record.get("path") or record["sha256"])
    numbered = [(n, r) for n, r, _ in images] + sorted(clusters.values(), key=lambda c: c[0])
    checked = parse_records(numbered)
    result.problems += checked.problems
    bad = {p.line for p in checked.problems}
    result.records = [r for n, r in numbered if n not in bad]
    result.problems.sort(key=lambda p: p.line)
    return result


def write_baseline(path: Path, source: str, records: list[dict[str, Any]]) -> None:
    """A baseline JSONL file: the source record first, then one record per line.

    Written whole to a temporary file beside ``path``, then renamed over it: until the new file is
    complete, readers (and a failed write) see the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"record": "source", "source": source})] + [json.dumps(r) for r in records]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def import_export(export: Path, out: Path) -> ImportResult:
    """Convert ``export`` and write the baseline to ``out``, unless no row converts: then ``out`` is
    left as it was. ValueError, naming ``export``, when the export cannot be read at all."""
    try:
        rows = read_rows(export)
    except (ValueError, OSError) as error:
        raise ValueError(f"cannot import {export}: {error}") from None
    result = convert_rows(rows)
    if result.records:
        write_baseline(out, f"imported from {export.name} (export of the Gemini-based system)", result.records)
    return result
