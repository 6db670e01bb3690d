"""How a model is named in the data and identified for reuse: never by a machine's path.

``portable_model_name`` is what the Parquet ``model_id``/``vlm_model`` columns and the Dagster UI
show: the same on every machine. ``model_identity`` is what reuse fingerprints hold: for a local
model, the hashes of its files, so new weights in the same folder are a new model.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
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


# What decides a local model's output: its configuration, tokenizer and weights, not READMEs.
_CONTENT_SUFFIXES = (".json", ".jinja", ".model", ".txt", ".safetensors", ".gguf", ".bin", ".pt", ".pth")
_hashes: dict[tuple, str] = {}
_hash_lock = threading.Lock()


def model_identity(model_id: str) -> str:
    """A hub id or built-in name as is; a local directory or file as its portable name plus a hash
    of its files' contents (each hashed once per process and modification; Phi-3.5-mini's 7.6 GB
    take seconds)."""
    path = Path(model_id.removeprefix("local-dir:")).expanduser()
    if not os.path.isabs(model_id.removeprefix("local-dir:")) and not path.exists():
        return model_id
    files = sorted(f for f in (path.rglob("*") if path.is_dir() else [path])
                   if f.is_file() and f.suffix.lower() in _CONTENT_SUFFIXES)
    if not files:
        return model_id
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_to(path).as_posix() if path.is_dir() else f.name}\0{_file_hash(f)}\0".encode())
    return f"{portable_model_name(model_id)}@sha256:{digest.hexdigest()[:16]}"


def _file_hash(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        if key not in _hashes:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
            _hashes[key] = digest.hexdigest()
        return _hashes[key]


# A file in a model directory that says its weights are random (pixelsift's tiny test models):
# every run that uses such a model says so (assets/random_weights.py, the eval report).
RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS"


def has_random_weights(model_id: str) -> bool:
    """Whether ``model_id`` is a local directory marked as holding random weights."""
    path = model_id.removeprefix("local-dir:")
    return os.path.isabs(path) and (Path(path) / RANDOM_WEIGHTS_MARKER).is_file()
