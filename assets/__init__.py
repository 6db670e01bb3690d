"""The pipeline's assets, in the order data moves through them.

images ─┬─ captions ──────────────┬─ image_metadata
        ├─ color_palettes ────────┘
        └─ clip_embeddings ── clusters ── cluster_labels (+ captions)

Palettes and embeddings depend only on ``images``, so they never wait for a language model.
"""

from assets.captions import captions
from assets.cluster_labels import cluster_labels
from assets.clip_embeddings import clip_embeddings
from assets.clusters import clusters
from assets.color_palettes import color_palettes
from assets.image_metadata import image_metadata
from assets.images import images

pipeline_assets = [images, captions, color_palettes, image_metadata, clip_embeddings, clusters, cluster_labels]

__all__ = ["pipeline_assets"]
