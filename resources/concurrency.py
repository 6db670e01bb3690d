"""What limits how many steps run side by side: the tag that marks a step holding a large model.

Assets carry the tag; the executor in ``dagster_project/jobs.py`` allows one tagged step at a
time. It lives here, at the bottom, so asset modules never import the composition root.
"""

LARGE_MODEL_TAG = "pixelsift/large_model"

# Steps that hold a multi-GB model (BLIP-2, Phi-3.5-mini: 9-14 GiB each at the benchmarked batch
# sizes) carry this tag; only one of them runs at a time so two never share 24 GiB of memory.
# CLIP, palettes, clustering and the evals run beside them.
LARGE_MODEL = {LARGE_MODEL_TAG: "true"}
