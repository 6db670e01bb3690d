"""How a model is named in the data and identified for reuse: never by a machine's path.

``portable_model_name`` is what the Parquet ``model_id``/``vlm_model`` columns and the Dagster UI
show: the same on every machine. ``model_identity`` is what reuse fingerprints hold: for a local
model, the hashes of its files, so new weights in the same folder are a new model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
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
    of its files' contents. Each file is hashed once, not once per process: Phi-3.5-mini's 7.6 GB
    take seconds, and every model step of a UI run is a process of its own (``hash_cache_file``)."""
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


def user_cache(variable: str, name: str) -> Path:
    """Where pixelsift keeps what it derives from models between processes: the path in the
    environment variable ``variable``, else ``name`` under ``$XDG_CACHE_HOME/pixelsift`` (``~/.cache/...``)."""
    configured = os.environ.get(variable)
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pixelsift" / name


def hash_cache_file() -> Path:
    """Where file hashes are kept between processes (``PIXELSIFT_MODEL_HASH_CACHE``)."""
    return user_cache("PIXELSIFT_MODEL_HASH_CACHE", "model_file_hashes.json")


def _file_hash(path: Path) -> str:
    resolved = str(path.resolve())
    stat = path.stat()
    # Any rewrite changes size, mtime or ctime (ctime even when a copy keeps the old mtime).
    state = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
    with _hash_lock:
        key = (resolved, *state)
        if key not in _hashes:
            cached = _read_hash_cache().get(resolved, {})
            if cached.get("state") == state and isinstance(cached.get("sha256"), str):
                _hashes[key] = cached["sha256"]
            else:
                _hashes[key] = _sha256(path)
                _remember_hash(resolved, state, _hashes[key])
        return _hashes[key]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _read_hash_cache() -> dict:
    try:
        entries = json.loads(hash_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, unreadable or damaged: hash again
        return {}
    return entries if isinstance(entries, dict) else {}


def _remember_hash(resolved: str, state: list[int], sha256: str) -> None:
    """Add one file's hash to the cache file (written whole, then renamed: a reader never sees half
    of it), dropping files that are gone. A cache that cannot be written only costs a re-hash."""
    target = hash_cache_file()
    entries = {name: entry for name, entry in _read_hash_cache().items() if os.path.exists(name)}
    entries[resolved] = {"state": state, "sha256": sha256}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(entries, handle)
        os.replace(tmp, target)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


# A file in a model directory that says its weights are random (pixelsift's tiny test models):
# every run that uses such a model says so (assets/random_weights.py, the eval report).
RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS"


def has_random_weights(model_id: str) -> bool:
    """Whether ``model_id`` is a local directory marked as holding random weights."""
    path = model_id.removeprefix("local-dir:")
    return os.path.isabs(path) and (Path(path) / RANDOM_WEIGHTS_MARKER).is_file()
