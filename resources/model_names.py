"""A model id as the Dagster UI shows it: the same on every machine, not an absolute local path.

Only for display (materialization metadata); the Parquet `model_id` column keeps the id as given.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# A snapshot in the Hugging Face cache is the hub model it was downloaded from.
_HUB_CACHE_SNAPSHOT = re.compile(r"models--([^/]+)--([^/]+)/snapshots/[^/]+/?$")


def portable_model_name(model_id: str, cwd: Path | None = None, home: Path | None = None) -> str:
    """A hub id or built-in name as is; a local directory as its hub id when it is a cached
    snapshot, else relative to the working directory (the project), else `~/...`, else its name."""
    path = model_id.removeprefix("local-dir:")  # open_clip's spelling of a local directory
    if not os.path.isabs(path):
        return model_id
    cached = _HUB_CACHE_SNAPSHOT.search(path)
    if cached:
        return "/".join(cached.groups())
    absolute = Path(path)
    for base, shown in ((cwd or Path.cwd(), None), (home or Path.home(), "~")):
        if absolute.is_relative_to(base) and absolute != base:
            relative = absolute.relative_to(base).as_posix()
            return f"{shown}/{relative}" if shown else relative
    return absolute.name or model_id


# A file in a model directory that says its weights are random (pixelsift's tiny test models):
# every run that uses such a model says so (assets/random_weights.py, the eval report).
RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS"


def has_random_weights(model_id: str) -> bool:
    """Whether ``model_id`` is a local directory marked as holding random weights."""
    path = model_id.removeprefix("local-dir:")
    return os.path.isabs(path) and (Path(path) / RANDOM_WEIGHTS_MARKER).is_file()
