"""How our clusters and their labels compare with the reference: the row of ``cluster_eval``.

Agreement of the grouping: adjusted Rand index and NMI between our cluster ids and the
groups the reference forms by (normalised) ``suggested_cluster_name``, and by
``primary_category``. Noise images (cluster -1) are each their own singleton there,
since noise is not a group. Silhouette (cosine, noise left out) on the CLIP embeddings
says how separated our clusters are regardless of any reference.

Label quality, per cluster of ours: the similarity of its name to the reference
``suggested_cluster_name`` of each member; and, when the baseline has cluster
records, comparison with the reference cluster that shares most members (Jaccard):
name and description similarity, tags semantic F1 and category agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from evals.baseline import Baseline, ClusterReference, Coverage
from evals.metrics import cosine_silhouette, partition_agreement, semantic_prf
from evals.normalize import canonical_label, normalize_term, normalize_terms
from evals.semantic import SentenceEncoder, TextVectors
from evals.settings import EvalSettings
from evals.parquet_schemas import CLUSTER_EVAL

NOISE = -1


@dataclass(frozen=True)
class ClusteredImage:
    path: str
    image_id: str
    cluster_id: int
    embedding: np.ndarray | None


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(present)) if present else None


def _nan_to_none(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _agreement(images: list[ClusteredImage], reference: dict[str, str | None]) -> tuple[float, float, int]:
    compared = [i for i in images if reference.get(i.path)]
    ours = [f"noise:{i.path}" if i.cluster_id == NOISE else str(i.cluster_id) for i in compared]
    ari, nmi = partition_agreement(ours, [reference[i.path] for i in compared])
    return ari, nmi, len(compared)


def _best_reference(
    members: list[ClusteredImage], references: list[ClusterReference]
) -> tuple[ClusterReference, float] | None:
    best, best_overlap = None, 0.0
    for ref in references:
        theirs = set(ref.members)  # paths or sha256s
        shared = sum(1 for m in members if m.path in theirs or m.image_id in theirs)
        overlap = shared / (len(members) + len(theirs) - shared)
        if overlap > best_overlap:
            best, best_overlap = ref, overlap
    return None if best is None else (best, best_overlap)


def _cluster_detail(
    cid: int,
    members: list[ClusteredImage],
    label: dict[str, Any],
    ref_names: dict[str, str | None],
    ref_clusters: list[ClusterReference],
    vectors: TextVectors,
    threshold: float,
) -> dict[str, Any]:
    name = normalize_term(label.get("cluster_name")) or None
    detail: dict[str, Any] = {"cluster_id": cid, "size": len(members), "cluster_name": label.get("cluster_name")}
    member_names = [ref_names[m.path] for m in members if ref_names.get(m.path)]
    # A cluster left without a label (or a part of one) scores 0 there, like any failed output.
    if member_names:
        detail["member_name_similarity"] = _mean([vectors.cosine(name, n) for n in member_names]) if name else 0.0
    best = _best_reference(members, ref_clusters)
    if best is None:
        return detail
    ref, overlap = best
    description = (label.get("description") or "").strip()
    detail |= {"reference_cluster_name": ref.cluster_name, "reference_overlap": overlap,
               "name_similarity": vectors.cosine(name, normalize_term(ref.cluster_name)) if name else 0.0}
    if ref.description:
        detail["description_similarity"] = vectors.cosine(description, ref.description) if description else 0.0
    if ref.tags is not None:
        ours = normalize_terms(label.get("tags"))
        detail["tags_semantic_f1"] = semantic_prf(vectors.similarity(ours, normalize_terms(ref.tags)), threshold).f1
    if ref.primary_category is not None:
        detail["category_score"] = float(canonical_label(label.get("primary_category"), "primary_category")
                                         == canonical_label(ref.primary_category, "primary_category"))
    return detail


def score_clusters(
    images: list[ClusteredImage],
    labels: dict[int, dict[str, Any]],
    coverage: dict[str, Coverage],
    baseline: Baseline,
    encoder: SentenceEncoder,
    settings: EvalSettings,
) -> pa.Table:
    """One-row ``cluster_eval`` table. ``labels`` are our ``cluster_labels`` rows by cluster id."""
    ref_names = {p: normalize_term(c.reference.suggested_cluster_name) or None
                 for p, c in coverage.items() if c.reference is not None}
    ref_categories = {p: canonical_label(c.reference.primary_category, "primary_category")
                      for p, c in coverage.items() if c.reference is not None}
    ref_clusters = [c for _, c in baseline.clusters]

    texts = list(ref_names.values())
    for ref in ref_clusters:
        texts += [normalize_term(ref.cluster_name), ref.description or "", *normalize_terms(ref.tags)]
    for label in labels.values():
        texts += [normalize_term(label.get("cluster_name")), (label.get("description") or "").strip(),
                  *normalize_terms(label.get("tags"))]
    vectors = TextVectors(encoder, [t for t in texts if t])

    details = [
        _cluster_detail(cid, [i for i in images if i.cluster_id == cid], labels.get(cid, {}), ref_names,
                        ref_clusters, vectors, settings.semantic_match_threshold)
        for cid in sorted({i.cluster_id for i in images} - {NOISE})
    ]
    ari_name, nmi_name, n_compared = _agreement(images, ref_names)
    ari_category, nmi_category, _ = _agreement(images, ref_categories)
    clustered = [i for i in images if i.cluster_id != NOISE and i.embedding is not None]
    silhouette = (
        cosine_silhouette(np.stack([i.embedding for i in clustered]), [i.cluster_id for i in clustered],
                          settings.silhouette_max_images, settings.bootstrap_seed)
        if clustered else float("nan")
    )
    row = {
        "n_images": len(images),
        "n_clusters": len(details),
        "noise_share": sum(i.cluster_id == NOISE for i in images) / len(images) if images else None,
        "n_compared": n_compared,
        "ari_cluster_name": _nan_to_none(ari_name),
        "nmi_cluster_name": _nan_to_none(nmi_name),
        "ari_category": _nan_to_none(ari_category),
        "nmi_category": _nan_to_none(nmi_category),
        "silhouette": _nan_to_none(silhouette),
        "label_member_similarity": _mean([d.get("member_name_similarity") for d in details]),
        "label_name_similarity": _mean([d.get("name_similarity") for d in details]),
        "label_description_similarity": _mean([d.get("description_similarity") for d in details]),
        "label_tags_f1": _mean([d.get("tags_semantic_f1") for d in details]),
        "label_category_score": _mean([d.get("category_score") for d in details]),
        "clusters": details,
    }
    return pa.Table.from_pylist([row], schema=CLUSTER_EVAL)
