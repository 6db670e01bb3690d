"""Per-image scores of our metadata against the reference: the rows of ``metadata_eval``.

Every covered image gets a score per field, each in [0, 1]; a field the reference
leaves out is not scored for that image. An image our pipeline failed on still
counts, with 0 for every field the reference has: failures are not silently dropped.
The per-image ``score`` is the weighted mean of the field scores (``EvalSettings``
weights, renormalised over the fields scored for that image); ``metadata_accuracy``
is its mean over covered images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from assets.colorspace import hex_to_rgb, rgb_to_lab
from evals.baseline import Coverage, ImageReference, to_hex_color
from evals.metrics import PRF, exact_prf, palette_distance, ramp, semantic_prf
from evals.normalize import canonical_label, normalize_term, normalize_terms
from evals.semantic import SentenceEncoder, TextVectors
from evals.settings import EvalSettings
from evals.parquet_schemas import METADATA_EVAL


@dataclass(frozen=True)
class Answer:
    """One image's metadata as it is compared, from either side, already normalised."""

    primary_category: str | None
    scene_type: str | None
    tags: list[str] | None
    object_names: list[str] | None
    description: str | None
    cluster_name: str | None
    palette_lab: np.ndarray | None  # (n, 3)

    @classmethod
    def build(cls, *, primary_category, scene_type, tags, object_names, description, cluster_name, palette) -> Answer:
        return cls(
            primary_category=canonical_label(primary_category, "primary_category"),
            scene_type=canonical_label(scene_type, "scene_type"),
            tags=None if tags is None else normalize_terms(tags),
            object_names=None if object_names is None else normalize_terms(object_names),
            description=(description or "").strip() or None,
            cluster_name=normalize_term(cluster_name) or None,
            palette_lab=None if palette is None else _lab(palette),
        )

    @classmethod
    def from_reference(cls, ref: ImageReference) -> Answer:
        return cls.build(
            primary_category=ref.primary_category, scene_type=ref.scene_type, tags=ref.tags,
            object_names=ref.object_names, description=ref.description,
            cluster_name=ref.suggested_cluster_name, palette=ref.color_palette,
        )

    @classmethod
    def from_metadata_row(cls, row: dict[str, Any]) -> Answer:
        """From an ``image_metadata`` row (an error row has no fields, and so scores 0)."""
        objects = row.get("detected_objects")
        return cls.build(
            primary_category=row.get("primary_category"), scene_type=row.get("scene_type"),
            tags=row.get("tags") or [], object_names=[o["name"] for o in objects or []],
            description=row.get("description"), cluster_name=row.get("suggested_cluster_name"),
            palette=row.get("color_palette") or [],
        )

    def texts(self) -> list[str]:
        return [*(self.tags or []), *(self.object_names or []), self.description or "", self.cluster_name or ""]


def _lab(colors: list[str]) -> np.ndarray:
    valid = []
    for c in colors:
        try:
            valid.append(hex_to_rgb(to_hex_color(c)))
        except ValueError:
            continue  # an unreadable colour of ours simply does not count as a colour
    return rgb_to_lab(np.array(valid).reshape(-1, 3))


@dataclass(frozen=True)
class ImageToScore:
    image_id: str
    path: str
    status: str
    coverage: Coverage
    ours: Answer


def _label_score(ref: str | None, ours: str | None) -> float | None:
    return None if ref is None else float(ref == ours)


def _prf_columns(prefix: str, exact: PRF | None, semantic: PRF | None) -> dict[str, float | None]:
    out = {}
    for kind, result in (("exact", exact), ("semantic", semantic)):
        for metric in ("precision", "recall", "f1"):
            out[f"{prefix}_{kind}_{metric}"] = None if result is None else getattr(result, metric)
    return out


def _term_scores(prefix: str, ref: list[str] | None, ours: list[str] | None, vectors: TextVectors,
                 threshold: float) -> dict[str, float | None]:
    if ref is None:
        return _prf_columns(prefix, None, None)
    ours = ours or []
    return _prf_columns(prefix, exact_prf(ours, ref), semantic_prf(vectors.similarity(ours, ref), threshold))


def _text_scores(prefix: str, ref: str | None, ours: str | None, vectors: TextVectors,
                 settings: EvalSettings) -> dict[str, float | None]:
    if ref is None:
        return {f"{prefix}_similarity": None, f"{prefix}_score": None}
    if ours is None:
        return {f"{prefix}_similarity": None, f"{prefix}_score": 0.0}
    cosine = vectors.cosine(ours, ref)
    return {f"{prefix}_similarity": cosine,
            f"{prefix}_score": ramp(cosine, settings.similarity_floor, settings.similarity_ceiling)}


def _palette_scores(ref: np.ndarray | None, ours: np.ndarray | None, settings: EvalSettings) -> dict[str, float | None]:
    if ref is None or len(ref) == 0:
        return {"palette_delta_e": None, "palette_score": None}
    if ours is None or len(ours) == 0:
        return {"palette_delta_e": None, "palette_score": 0.0}
    delta_e = palette_distance(ours, ref)
    return {"palette_delta_e": delta_e, "palette_score": max(0.0, 1.0 - delta_e / settings.palette_max_delta_e)}


def weighted_score(row: dict[str, Any], weights: dict[str, float]) -> float | None:
    """Weighted mean of the field scores present in ``row``; None if no field is scored."""
    present = {column: w for column, w in weights.items() if row.get(column) is not None}
    total = sum(present.values())
    if total == 0:
        return None
    return sum(row[column] * w for column, w in present.items()) / total


def score_images(items: list[ImageToScore], encoder: SentenceEncoder, settings: EvalSettings) -> pa.Table:
    """The ``metadata_eval`` table: one row per image of the batch, covered or not."""
    references = {i.path: Answer.from_reference(i.coverage.reference) for i in items if i.coverage.reference}
    vectors = TextVectors(encoder, [t for i in items if i.path in references
                                    for t in i.ours.texts() + references[i.path].texts()])
    weights = settings.weights()
    rows = []
    for item in items:
        row: dict[str, Any] = {
            "image_id": item.image_id, "path": item.path, "status": item.status,
            "covered": item.path in references, "matched_by": item.coverage.matched_by,
            "uncovered_reason": item.coverage.reason,
        }
        ref = references.get(item.path)
        if ref is not None:
            ours = item.ours
            row |= {
                "category_reference": ref.primary_category, "category_ours": ours.primary_category,
                "category_score": _label_score(ref.primary_category, ours.primary_category),
                "scene_type_reference": ref.scene_type, "scene_type_ours": ours.scene_type,
                "scene_type_score": _label_score(ref.scene_type, ours.scene_type),
                **_term_scores("tags", ref.tags, ours.tags, vectors, settings.semantic_match_threshold),
                **_term_scores("objects", ref.object_names, ours.object_names, vectors,
                               settings.semantic_match_threshold),
                **_text_scores("description", ref.description, ours.description, vectors, settings),
                **_text_scores("cluster_name", ref.cluster_name, ours.cluster_name, vectors, settings),
                **_palette_scores(ref.palette_lab, ours.palette_lab, settings),
            }
            row["score"] = weighted_score(row, weights)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=METADATA_EVAL)
