"""The pipeline's assets, in the order data moves through them.

images ─┬─ captions ──────────────┬─ image_metadata
        ├─ color_palettes ────────┘
        └─ clip_embeddings ── clusters ── cluster_labels (+ captions)

images + clip_embeddings of every batch ── near_duplicates (the whole collection, not one batch)

Palettes and embeddings depend only on ``images``, so they never wait for a language model.
The asset modules are imported on first use of ``pipeline_assets``, so a worker process that
needs only the pure helpers here (decoding, palettes) does not import Dagster and the models.
"""


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
        from assets.near_duplicates import near_duplicates

        return [near_duplicates]
    raise AttributeError(f"module 'assets' has no attribute {name!r}")


__all__ = ["pipeline_assets", "collection_assets"]
