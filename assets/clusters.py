"""Stage 6, ``clusters``: group images by CLIP embedding; outliers stay noise (cluster -1)."""

import math

import numpy as np
import pyarrow as pa
from dagster import AssetExecutionContext, Config, asset
from pydantic import Field

from assets.batch_range import per_batch
from assets.clustering import NOISE, cluster_embeddings
from assets.per_image import Failed, assemble, unique_ok_images
from assets.parquet_schemas import CLUSTERS, OK
from resources.partitions import batch_partitions


class ClusteringConfig(Config):
    """How images are grouped: where groups stop merging, and what counts as noise."""

    distance_threshold: float = Field(
        default=0.35, description="Average cosine distance under which groups of images merge (0..2)."
    )
    min_cluster_size: int = Field(default=2, description="Smaller groups are noise (cluster -1).")
    representatives: int = Field(default=5, description="Images nearest each centroid that name the cluster.")


@asset(partitions_def=batch_partitions, group_name="pipeline", kinds={"parquet", "scikitlearn"})
@per_batch
def clusters(
    context: AssetExecutionContext, config: ClusteringConfig, images: pa.Table, clip_embeddings: pa.Table
) -> pa.Table:
    """Cluster id, cosine distance to the centroid and representative flag per image."""
    rows = clip_embeddings.select(["image_id", "status", "error"]).to_pylist()
    ok_ids = list(dict.fromkeys(r["image_id"] for r in rows if r["status"] == OK))
    by_id = {image_id: i for i, image_id in enumerate(clip_embeddings.column("image_id").to_pylist())}
    embeddings = clip_embeddings.column("embedding").to_pylist()
    dim = clip_embeddings.schema.field("embedding").type.list_size  # also right when no image is ok
    vectors = np.array([embeddings[by_id[i]] for i in ok_ids], dtype=np.float32).reshape(len(ok_ids), dim)
    result = cluster_embeddings(vectors, ok_ids, distance_threshold=config.distance_threshold,
                                min_cluster_size=config.min_cluster_size, n_representatives=config.representatives)

    results: dict[str, dict | Failed] = {
        r["image_id"]: Failed(f"no embedding: {r['error']}") for r in rows if r["status"] != OK
    }
    for k, image_id in enumerate(ok_ids):
        distance = float(result.distances[k])
        results[image_id] = {
            "cluster_id": int(result.labels[k]),
            "distance": None if math.isnan(distance) else distance,
            "is_representative": bool(result.representatives[k]),
        }
    n_clusters = int(result.labels.max() + 1) if len(ok_ids) else 0
    context.add_output_metadata({"clusters": n_clusters, "noise_images": int((result.labels == NOISE).sum())})
    return _one_representative_per_image(assemble(images, results, CLUSTERS), unique_ok_images(images))


def _one_representative_per_image(table: pa.Table, first_path: dict[str, str]) -> pa.Table:
    """Copies of a file share its cluster, but only the first copy counts as a representative."""
    flags = [None if rep is None else rep and first_path.get(image_id) == path for image_id, path, rep in zip(
        table.column("image_id").to_pylist(), table.column("path").to_pylist(),
        table.column("is_representative").to_pylist())]
    index = table.schema.get_field_index("is_representative")
    return table.set_column(index, table.schema.field(index), pa.array(flags, pa.bool_()))
