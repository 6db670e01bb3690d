"""Comparing two runs on the same batch, field by field (``pixelsift eval compare A B``).

A run is a warehouse directory, for example one per model version or batch size
(``PIXELSIFT_WAREHOUSE_DIR=data/warehouse-v2 pixelsift run --batch sample``). Per-image
figures are compared over the images scored in both runs with a paired bootstrap:
the same resampled images for A and B, so the interval of B - A is free of the
between-image spread. A difference whose interval excludes 0 is reported as B better
or B worse; otherwise it is within noise. Batch-level figures without per-image values
(kappa, ARI, validity) are shown with their difference only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from evals.metrics import paired_bootstrap_diff
from evals.summary import fresh_rows
from resources.warehouse import partition_file, read_table

# Per-image figures: (label, metadata_eval column, higher is better).
PAIRED_FIELDS: list[tuple[str, str, bool]] = [
    ("metadata_accuracy (per-image score)", "score", True),
    ("primary_category accuracy", "category_score", True),
    ("scene_type accuracy", "scene_type_score", True),
    ("tags F1 exact", "tags_exact_f1", True),
    ("tags F1 semantic", "tags_semantic_f1", True),
    ("objects F1 exact", "objects_exact_f1", True),
    ("objects F1 semantic", "objects_semantic_f1", True),
    ("description similarity", "description_similarity", True),
    ("cluster name similarity", "cluster_name_similarity", True),
    ("palette CIEDE2000", "palette_delta_e", False),
]
# Batch-level figures from eval_summary: (label, column, higher is better).
SUMMARY_FIELDS: list[tuple[str, str, bool]] = [
    ("primary_category kappa", "category_kappa", True),
    ("scene_type kappa", "scene_type_kappa", True),
    ("clusters ARI vs names", "ari_cluster_name", True),
    ("clusters NMI vs names", "nmi_cluster_name", True),
    ("silhouette", "silhouette", True),
    ("label ~ members' names", "label_member_similarity", True),
    ("schema-valid LLM outputs", "json_validity", True),
    ("fallback rate", "fallback_rate", False),
    ("images per second", "images_per_second", True),
]


@dataclass
class Run:
    warehouse: Path
    metadata_eval: dict[str, dict[str, Any]]  # by path
    summary: dict[str, Any]
    end_to_end_ms: dict[str, float]  # by path, images timed in that run


@dataclass(frozen=True)
class Difference:
    figure: str
    a: float | None
    b: float | None
    diff: float | None
    low: float | None  # interval of B - A, None where there is no per-image pairing
    high: float | None
    verdict: str


class RunNotFound(FileNotFoundError):
    pass


def load_run(warehouse: Path, batch: str) -> Run:
    def table(asset: str) -> pa.Table:
        path = partition_file(warehouse, asset, batch)
        if not path.exists():
            raise RunNotFound(f"{path} is missing: materialize {asset} for batch {batch!r} in that warehouse first")
        return read_table(path)

    timed = fresh_rows(table("image_metadata")).select(["path", "processing_time_ms"]).to_pylist()
    return Run(
        warehouse=warehouse,
        metadata_eval={r["path"]: r for r in table("metadata_eval").to_pylist()},
        summary=table("eval_summary").to_pylist()[0],
        end_to_end_ms={r["path"]: r["processing_time_ms"] for r in timed if r["processing_time_ms"] is not None},
    )


def _verdict(low: float, high: float, higher_is_better: bool) -> str:
    if low <= 0 <= high:
        return "within noise"
    return "B better" if (low > 0) == higher_is_better else "B worse"


def _paired(label: str, a: list[float], b: list[float], higher_is_better: bool, samples: int, seed: int,
            confidence: float, **statistic: Callable[[np.ndarray], np.ndarray]) -> Difference:
    d = paired_bootstrap_diff(a, b, samples, seed, confidence, **statistic)
    if np.isnan(d.a):
        return Difference(label, None, None, None, None, None, "not measured")
    return Difference(label, d.a, d.b, d.diff, d.low, d.high, _verdict(d.low, d.high, higher_is_better))


def common_images(a: Run, b: Run) -> list[str]:
    """Paths scored in both runs, on the same bytes."""
    return sorted(
        p for p, row in a.metadata_eval.items()
        if row["covered"] and p in b.metadata_eval and b.metadata_eval[p]["covered"]
        and b.metadata_eval[p]["image_id"] == row["image_id"]
    )


def compare_runs(a: Run, b: Run, samples: int = 2000, seed: int = 0, confidence: float = 0.95) -> list[Difference]:
    paths = common_images(a, b)
    out = []
    for label, column, higher in PAIRED_FIELDS:
        values = [(a.metadata_eval[p].get(column), b.metadata_eval[p].get(column)) for p in paths]
        values = [(np.nan if x is None else x, np.nan if y is None else y) for x, y in values]
        out.append(_paired(label, [x for x, _ in values], [y for _, y in values], higher, samples, seed, confidence))
    timed = sorted(set(a.end_to_end_ms) & set(b.end_to_end_ms))
    for q in (50, 95):
        out.append(_paired(
            f"end-to-end ms per image p{q}", [a.end_to_end_ms[p] for p in timed], [b.end_to_end_ms[p] for p in timed],
            False, samples, seed, confidence, statistic=lambda x, q=q: np.percentile(x, q, axis=-1),
        ))
    for label, column, higher in SUMMARY_FIELDS:
        x, y = a.summary.get(column), b.summary.get(column)
        diff = None if x is None or y is None else y - x
        out.append(Difference(label, x, y, diff, None, None, "no interval" if diff is not None else "not measured"))
    return out


def _cell(value: float | None, width: int) -> str:
    return ("–" if value is None else f"{value:.3f}").rjust(width)


def format_comparison(a: Run, b: Run, rows: list[Difference], confidence: float = 0.95) -> str:
    lines = []
    for name, run in (("A", a), ("B", b)):
        s = run.summary
        lines += [
            f"{name}: {run.warehouse}",
            f"   models: captions {s.get('caption_model')}; metadata {s.get('metadata_model')}; "
            f"clip {s.get('clip_model')}",
            f"   baseline: {s.get('baseline_source')}; metadata_accuracy {_cell(s.get('metadata_accuracy'), 0)} "
            f"({confidence:.0%} CI {_cell(s.get('metadata_accuracy_ci_low'), 0)}–"
            f"{_cell(s.get('metadata_accuracy_ci_high'), 0)})",
        ]
    paths = common_images(a, b)
    lines.append(f"Compared on {len(paths)} images scored in both runs; intervals are {confidence:.0%} paired "
                 "bootstrap intervals of B - A.")
    if a.summary.get("baseline_file") != b.summary.get("baseline_file"):
        lines.append("warning: the two runs were scored against different baseline files.")
    width = max(len(r.figure) for r in rows)
    lines.append("")
    lines.append(f"{'figure'.ljust(width)}  {'A':>8}  {'B':>8}  {'B - A':>8}  {'interval of B - A':>19}  verdict")
    for r in rows:
        interval = "" if r.low is None else f"[{r.low:+.3f}, {r.high:+.3f}]"
        diff = "–" if r.diff is None else f"{r.diff:+.3f}"
        lines.append(
            f"{r.figure.ljust(width)}  {_cell(r.a, 8)}  {_cell(r.b, 8)}  {diff:>8}  {interval:>19}  {r.verdict}"
        )
    return "\n".join(lines)
