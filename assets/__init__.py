"""The pipeline's assets, in the order data moves through them.

images ─┬─ captions ──────────────┬─ image_metadata
        ├─ color_palettes ────────┘
        └─ clip_embeddings ── clusters ── cluster_labels (+ captions)

images + clip_embeddings of every batch ── near_duplicates (the whole collection, not one batch)
clip_embeddings of every batch ── collection_clusters (+ collection_cluster_centroids)
                                  ── collection_cluster_labels (+ captions of every batch)

Palettes and embeddings depend only on ``images``, so they never wait for a language model.
The asset modules are imported on first use of ``pipeline_assets``, so a worker process that
needs only the pure helpers here (decoding, palettes) does not import Dagster and the models.
"""


def build_pipeline_assets(in_process: dict[str, bool], batches_per_run: int = 0) -> list:
    """The pipeline's assets, the model steps limited to one at a time only where their model runs in
    process: ``in_process`` maps a model resource key (``captioner``, ``metadata_llm``) to whether it does.
    A backfill runs them over ``batches_per_run`` batches per run (0: all), each model loaded once a run."""
    from assets.captions import captions_asset
    from assets.cluster_labels import cluster_labels_asset
    from assets.clip_embeddings import clip_embeddings
    from assets.clusters import clusters
    from assets.color_palettes import color_palettes
    from assets.image_metadata import image_metadata_asset
    from assets.images import images

    from resources.partitions import batches_backfill_policy

    captioner, llm = in_process.get("captioner", True), in_process.get("metadata_llm", True)
    policy = batches_backfill_policy(batches_per_run)
    return [a.with_attributes(backfill_policy=policy) for a in (
        images, captions_asset(captioner), color_palettes, image_metadata_asset(llm), clip_embeddings, clusters,
        cluster_labels_asset(llm))]


def build_collection_assets(in_process: dict[str, bool]) -> list:
    """The assets over every batch; the cluster labels limited like the pipeline's model steps."""
    from assets.collection_clusters import collection_cluster_labels_asset, collection_clusters
    from assets.near_duplicates import near_duplicates

    return [near_duplicates, collection_clusters, collection_cluster_labels_asset(in_process.get("metadata_llm", True))]


def __getattr__(name: str):
    if name == "pipeline_assets":
        from assets.captions import captions
        from assets.cluster_labels import cluster_labels
        from assets.clip_embeddings import clip_embeddings
        from assets.clusters import clusters
        from assets.color_palettes import color_palettes
        from assets.image_metadata import image_metadata
        from assets.images import images

        return [images, captions, color_palettes, image_metadata, clip_embeddings, clusters, cluster_labels]
    if name == "collection_assets":
        return build_collection_assets({})
    raise AttributeError(f"module 'assets' has no attribute {name!r}")


__all__ = ["build_pipeline_assets", "build_collection_assets", "pipeline_assets", "collection_assets"]
