"""``collection_clusters``: clusters across every batch, whose ids keep their meaning as batches come and go.

Not partitioned, like ``near_duplicates``: the ``refresh_collection`` job, ``pixelsift run`` after its
batches and the ``collection_automation`` sensor update it after any batch's embeddings change. One
step writes two tables: ``collection_clusters`` (one row per embedded file of every batch) and
``collection_cluster_centroids`` (one row per cluster id ever issued: its mean vector and size).
The next update starts from both (``assets.collection_clustering``): earlier images keep their
cluster, new ones join the nearest cluster or found new ones, images of removed batches leave; no id
is renumbered or reused. Each CLIP model (``clip_embeddings.model_id``) has its own clusters, ids
unique across models, so vectors of two models are never compared. ``pixelsift recluster`` (config
``recluster: true``) starts over.

``collection_cluster_labels`` names each cluster with the metadata LLM from its representatives'
captions, reusing a cluster's label while its model, prompt and captions are unchanged
(``assets.cluster_labels.label_clusters``).
"""

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import (AssetExecutionContext, AssetKey, AssetOut, AssetsDefinition, ResourceParam, multi_asset,
                     Output)
from pydantic import Field

from assets.cluster_labels import ClusterLabelConfig, label_clusters
from assets.clip_embeddings import clip_embeddings
from assets.clustering import NOISE
from assets.clusters import ClusteringConfig
from assets.collection_clustering import NEW, Clusters, update_clusters
from assets.near_duplicates import AFTER_ANY_BATCH
from assets.parquet_schemas import COLLECTION_CLUSTER_CENTROIDS, COLLECTION_CLUSTER_LABELS, COLLECTION_CLUSTERS, OK
from assets.random_weights import note_random_weights
from assets.reuse import ModelStep
from resources.backends import StructuredGenerator
from resources.concurrency import model_step
from resources.settings import PixelsiftSettings
from resources.warehouse import collection_file, connect, damage

CLUSTERS, CENTROIDS = "collection_clusters", "collection_cluster_centroids"


class CollectionClusteringConfig(ClusteringConfig):
    """The per-batch clustering settings (``distance_threshold`` also decides when a new image joins a cluster:
    its average cosine distance to the members), plus the explicit full recluster."""

    recluster: bool = Field(
        default=False, description="Cluster every image again from scratch instead of updating. A new cluster "
        "keeps an old id when the two share more than half of each other's images; other clusters get new ids.")


class StoredClustersError(RuntimeError):
    pass


def _stored(root: str, log, recluster: bool) -> tuple[pa.Table | None, pa.Table | None]:
    """The last update's two tables (None before the first). A damaged or lone table stops an update
    with a clear error, never a silent start from scratch (that would give every cluster a new id);
    a full recluster takes what it can read, so it is also the way out."""
    paths = {name: collection_file(root, name) for name in (CLUSTERS, CENTROIDS)}
    problems = {name: damage(path) if path.is_file() else "missing" for name, path in paths.items()}
    if all(p == "missing" for p in problems.values()):
        return None, None
    if any(problems.values()):
        what = "; ".join(f"{paths[name]}: {p}" for name, p in problems.items() if p)
        if not recluster:
            raise StoredClustersError(f"{what}: the collection's cluster ids cannot be kept; run `pixelsift "
                                      "recluster` to cluster again (ids kept where it can read them), or restore "
                                      "the file from a backup")
        log.warning(f"{what}: reclustering with what can be read")
    return tuple(None if problems[name] else pq.read_table(paths[name]) for name in (CLUSTERS, CENTROIDS))


def _embedded(root: str) -> tuple[pa.Table, pa.Table]:
    """(every ok copy: batch, path, image_id, model_id), (the same rows' model_id, image_id, embedding).
    Not sorted or made distinct in SQL: a sort would hold every vector twice (2 GB each at 1M images)."""
    con = connect(root)
    tables = {name for (name,) in con.sql("show tables").fetchall()}
    if "clip_embeddings" not in tables:
        empty = pa.table({"batch": pa.array([], pa.string()), "path": pa.array([], pa.string()),
                          "image_id": pa.array([], pa.string()), "model_id": pa.array([], pa.string())})
        return empty, empty.select(["model_id", "image_id"])
    ok = "status = 'ok' AND embedding IS NOT NULL"
    copies = _arrow(con.sql(f"SELECT batch, path, image_id, coalesce(model_id, '') AS model_id FROM clip_embeddings "
                            f"WHERE {ok}"))
    vectors = _arrow(con.sql(f"SELECT coalesce(model_id, '') AS model_id, image_id, embedding FROM clip_embeddings "
                             f"WHERE {ok}"))
    return copies, vectors


def _arrow(relation: duckdb.DuckDBPyRelation) -> pa.Table:
    table = relation.arrow()
    return table.read_all() if hasattr(table, "read_all") else table  # newer DuckDB hands back a reader


def _distinct_images(rows: pa.Table, before: pa.Table | None, model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One CLIP model's distinct images in sha256 order: (sha256s, vectors, earlier cluster id or NEW)."""
    ids, first = np.unique(rows["image_id"].to_numpy(zero_copy_only=False), return_index=True)
    previous = np.full(len(ids), NEW, dtype=np.int64)
    if before is not None:
        mine = before.filter(pc.equal(before["model_id"], model))
        known = dict(zip(mine["image_id"].to_pylist(), mine["cluster_id"].to_pylist()))
        previous = np.array([known.get(i, NEW) for i in ids], dtype=np.int64)
    return ids, _take_rows(rows["embedding"], first), previous


def _take_rows(column: pa.ChunkedArray, index: np.ndarray) -> np.ndarray:
    """Rows ``index`` of a fixed-size list column as one float32 matrix, chunk by chunk: one copy,
    of the rows taken only (no Python float per number, no whole-column concatenation)."""
    dim = column.type.list_size
    out = np.empty((len(index), dim), dtype=np.float32)
    order = np.argsort(index, kind="stable")
    wanted = index[order]
    start = 0
    for chunk in column.chunks:
        stop = start + len(chunk)
        lo, hi = np.searchsorted(wanted, [start, stop])
        if hi > lo:
            block = chunk.flatten().to_numpy(zero_copy_only=False).reshape(len(chunk), dim)
            out[order[lo:hi]] = block[wanted[lo:hi] - start]
        start = stop
    return out


def _stored_clusters(centroids: pa.Table | None, model: str, dim: int) -> Clusters:
    if centroids is None:
        return Clusters.empty(dim)
    rows = centroids.filter(pc.equal(centroids["model_id"], model)).sort_by("cluster_id")
    if not rows.num_rows:
        return Clusters.empty(dim)
    means = np.array([c or [0.0] * dim for c in rows["centroid"].to_pylist()], dtype=np.float32).reshape(rows.num_rows, dim)
    return Clusters(np.asarray(rows["cluster_id"], dtype=np.int64), means, np.asarray(rows["images"], dtype=np.int64))


def _ids_only(before: pa.Table) -> pa.Table:
    """Centroid rows with the ids and sizes the images give and zero means (which attract nothing)."""
    counts = _arrow(duckdb.connect(":memory:").from_arrow(before).aggregate(
        "cluster_id, model_id, count(DISTINCT image_id)::INT AS images", "cluster_id, model_id").filter("cluster_id >= 0"))
    zeros = pa.array([0] * counts.num_rows, pa.int32())
    return counts.append_column("joined", zeros).append_column("left", zeros).append_column(
        "centroid", pa.array([None] * counts.num_rows, pa.list_(pa.float32()))).select(COLLECTION_CLUSTER_CENTROIDS.names)


@multi_asset(
    name="collection_clusters",
    outs={
        CLUSTERS: AssetOut(io_manager_key="io_manager", kinds={"parquet"}, automation_condition=AFTER_ANY_BATCH,
                           description="Every embedded image of every batch with its cluster in the whole "
                           "collection; ids keep their meaning across updates."),
        CENTROIDS: AssetOut(io_manager_key="io_manager", kinds={"parquet"}, automation_condition=AFTER_ANY_BATCH,
                            description="One row per collection cluster id ever issued: its mean vector, its "
                            "size and what the last update changed."),
    },
    deps=[clip_embeddings], group_name="collection",
)
def collection_clusters(context: AssetExecutionContext, config: CollectionClusteringConfig,
                        settings: PixelsiftSettings):
    """Update the collection's clusters from every batch's CLIP embeddings (see the module doc)."""
    before, centroids = _stored(settings.warehouse_dir, context.log, config.recluster)
    if centroids is None and before is not None:  # a recluster without the centroids: ids from the images
        centroids = _ids_only(before)
    next_id = int(pc.max(centroids["cluster_id"]).as_py()) + 1 if centroids is not None and centroids.num_rows else 0
    copies, embedded = _embedded(settings.warehouse_dir)
    per_image, per_cluster = [], []
    models = sorted(set(embedded["model_id"].unique().to_pylist()))
    per_model = {model: _distinct_images(embedded if len(models) == 1 else embedded.filter(
        pc.equal(embedded["model_id"], model)), before, model) for model in models}
    del embedded  # the vectors are copied out: hold them once, not twice
    distinct_images = sum(len(ids) for ids, _, _ in per_model.values())
    for model in models:
        ids, vectors, previous = per_model.pop(model)
        update = update_clusters(
            vectors, list(ids), previous, _stored_clusters(centroids, model, vectors.shape[1]), next_id,
            distance_threshold=config.distance_threshold, min_cluster_size=config.min_cluster_size,
            n_representatives=config.representatives, recluster=config.recluster)
        del vectors
        next_id = update.next_id
        per_image.append(pa.table({
            "model_id": pa.array([model] * len(ids), pa.string()), "image_id": pa.array(ids, pa.string()),
            "cluster_id": pa.array(update.labels, pa.int32()),
            "distance": pa.array(update.distances, pa.float32(), from_pandas=True),
            "is_representative": pa.array(update.representatives), "change": pa.array(update.change, pa.string())}))
        kept = update.clusters
        per_cluster.append(pa.table({
            "cluster_id": pa.array(kept.ids, pa.int32()), "model_id": pa.array([model] * len(kept.ids), pa.string()),
            "images": pa.array(kept.sizes, pa.int32()), "joined": pa.array(update.joined, pa.int32()),
            "left": pa.array(update.left, pa.int32()),
            "centroid": pa.array(list(kept.means), pa.list_(pa.float32()))}))
    if centroids is not None:  # a model none of whose images is left: its ids stay issued, with no images
        gone = centroids.filter(pc.invert(pc.is_in(centroids["model_id"], pa.array(models, pa.string()))))
        per_cluster.append(gone.select(["cluster_id", "model_id", "centroid"]).append_column(
            "images", pa.array([0] * gone.num_rows, pa.int32())).append_column(
            "joined", pa.array([0] * gone.num_rows, pa.int32())).append_column("left", gone["images"]).select(
            COLLECTION_CLUSTER_CENTROIDS.names))
    clusters = _per_copy(copies, per_image)
    centroid_table = (pa.concat_tables([t.cast(COLLECTION_CLUSTER_CENTROIDS) for t in per_cluster])
                      if per_cluster else COLLECTION_CLUSTER_CENTROIDS.empty_table()).sort_by("cluster_id")
    changes = clusters["change"].to_pylist()
    context.log.info(f"collection clusters ({'full recluster' if config.recluster else 'update'}): "
                     f"{len(models)} CLIP model(s), {distinct_images} distinct images")
    summary = {"clusters": int(sum(1 for n in centroid_table["images"].to_pylist() if n)),
               "ids_issued": centroid_table.num_rows, "recluster": config.recluster,
               **{f"images_{c}": changes.count(c) for c in ("kept", "joined", "new", "noise")}}
    yield Output(clusters, output_name=CLUSTERS, metadata=summary)
    yield Output(centroid_table, output_name=CENTROIDS, metadata={"clusters": summary["clusters"]})


def _per_copy(copies: pa.Table, per_image: list[pa.Table]) -> pa.Table:
    """One row per copy (batch, path) from one per distinct image; only an image's first copy (by
    batch and path) is a representative, as in the per-batch clusters."""
    if not per_image:
        return COLLECTION_CLUSTERS.empty_table()
    con = duckdb.connect(":memory:")
    con.register("copies", copies)
    con.register("result", pa.concat_tables(per_image))
    table = _arrow(con.sql("""
        SELECT r.cluster_id, c.batch, c.path, c.image_id, c.model_id, r.distance,
               r.is_representative AND row_number() OVER (PARTITION BY c.model_id, c.image_id ORDER BY c.batch, c.path) = 1
                   AS is_representative,
               r.change
        FROM copies c JOIN result r USING (model_id, image_id) ORDER BY c.batch, c.path, c.model_id"""))
    return table.cast(COLLECTION_CLUSTERS)


def _collection_cluster_labels(context: AssetExecutionContext, config: ClusterLabelConfig, collection_clusters: pa.Table,
                               settings: PixelsiftSettings, metadata_llm: ResourceParam[StructuredGenerator]) -> pa.Table:
    """A name, description, tags and category per collection cluster with images (noise is not
    labelled); a cluster whose representatives' captions did not change keeps its label."""
    note_random_weights(context, "metadata_llm", metadata_llm.model_id)
    clustered = collection_clusters.filter(pc.greater_equal(collection_clusters["cluster_id"], 0))
    totals = {c: n for c, n in zip(*np.unique(np.asarray(clustered["cluster_id"], dtype=np.int64), return_counts=True))}
    reps = clustered.filter(clustered["is_representative"]).select(["cluster_id", "image_id", "distance"])
    con = connect(settings.warehouse_dir)
    con.register("reps", reps)
    has_captions = "captions" in {name for (name,) in con.sql("show tables").fetchall()}
    # An image's caption from its first copy with one (by batch, path): the same text for every copy.
    found = con.sql(f"""
        SELECT r.cluster_id, c.caption FROM reps r
        {"LEFT JOIN (SELECT DISTINCT ON (image_id) image_id, caption FROM captions WHERE status = 'ok' "
         "ORDER BY image_id, batch, path) c USING (image_id)" if has_captions else ", (SELECT NULL AS caption) c"}
        ORDER BY r.cluster_id, r.distance, r.image_id""").fetchall()
    captions: dict[int, list[str]] = {int(c): [] for c in totals}
    for cluster_id, caption in found:
        if caption is not None:
            captions[cluster_id].append(caption)
    # A batch's cluster with the same representatives' captions got this very label (the same model,
    # prompt and captions: the same fingerprint), so a collection of one batch is not labelled twice.
    step = ModelStep.of(context, settings, COLLECTION_CLUSTER_LABELS, also_from=("cluster_labels",))
    rows, reused = label_clusters(config, step, metadata_llm, captions, {int(c): int(n) for c, n in totals.items()})
    context.add_output_metadata({"clusters": len(rows), "reused": reused, "labelled_now": len(rows) - reused})
    return pa.Table.from_pylist(rows, schema=COLLECTION_CLUSTER_LABELS)


# After the clusters change, or after a batch's captions change (a representative's caption did).
AFTER_CLUSTERS_OR_CAPTIONS = AFTER_ANY_BATCH.with_label("after the collection's clusters or any batch's captions update")


def collection_cluster_labels_asset(in_process: bool = True) -> AssetsDefinition:
    """The labels asset; ``in_process`` False (the LLM is on a model server) frees it of the large-model slot."""
    return model_step(in_process, name="collection_cluster_labels", group_name="collection",
                      io_manager_key="io_manager", kinds={"parquet", "pytorch" if in_process else "openai"},
                      deps=[AssetKey("captions")], automation_condition=AFTER_CLUSTERS_OR_CAPTIONS)(_collection_cluster_labels)


collection_cluster_labels = collection_cluster_labels_asset()
