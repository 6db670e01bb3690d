"""A model's int8 layers kept on disk, so each model is quantised once per machine, not at every load.

Quantising is most of an int8 load: full-size BLIP-2 took 105 s to load in int8 and 19 s with
its layers read from here, Phi-3.5-mini 84 s and 19 s (BENCHMARKS.md, "int8 quantised once per
machine"). Each ``pixelsift run``
loads its models again, and each model step of a UI run does so in a process of its own. So the
first load quantises as before and writes every int8 layer's weights and scales to
``cache_dir()``; later loads read them in place of quantising. The rest of the model (embeddings,
norms, biases, kept layers) still comes from the checkpoint, loaded as before.

A cached layer is the freshly quantised one, bit for bit: the file is named by the model's content
(``resources/model_names.model_identity``, or a hub snapshot's commit), what ``Int8Linear`` stores
(``FORMAT``), the CPU's pair-saturation rule (``int8_linear.pairs_saturate``: it changes the scales)
and the layers kept in float32. A model with no such identity is not cached. A file that cannot
be read or does not match the model is quantised over and rewritten; one that cannot be written
(read-only or full disk) leaves the load as it was, with a warning. Writing a model's file removes
that model's files of an earlier ``FORMAT``, which nothing reads any more.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from resources import int8_linear
from resources.int8_linear import Int8Linear, pairs_saturate, replace_linears
from resources.model_names import model_identity, user_cache

log = logging.getLogger(__name__)

FORMAT = 2  # bump whenever what Int8Linear stores changes meaning (2: weights by input channel)
_SUFFIXES = ("weight_int8_by_input", "weight_scale")


def cache_dir() -> Path:
    """``PIXELSIFT_INT8_CACHE``, else ``$XDG_CACHE_HOME/pixelsift/int8`` (``~/.cache/...``)."""
    return user_cache("PIXELSIFT_INT8_CACHE", "int8")


def weights_identity(source: str) -> str | None:
    """What names ``source``'s weights by content: a local model's files' hash, a hub model's
    snapshot commit (from the local hub cache, no network); None where neither can be had."""
    identity = model_identity(source)
    if "@sha256:" in identity:
        return identity
    try:
        from transformers.utils import cached_file

        config = cached_file(source, "config.json", local_files_only=True)
    except Exception:  # noqa: BLE001 - not a hub model in the local cache: nothing to name it by
        return None
    return f"{source}@{Path(config).parent.name}" if config else None


def cache_file(identity: str, keep: tuple[str, ...]) -> Path:
    key = json.dumps([FORMAT, identity, pairs_saturate(), sorted(keep)])
    return cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"


def quantise_cached(model: torch.nn.Module, identity: str | None, keep: tuple[str, ...] = ()) -> torch.nn.Module:
    """``int8_linear.quantise_linears(model, keep)``, reading the int8 layers from the cache where
    ``identity``'s are there, and writing them there where they are not."""
    path = cache_file(identity, keep) if identity else None
    if path is not None and path.is_file():
        try:
            return _load_layers(model, path, keep)
        except Exception as exc:  # noqa: BLE001 - any unreadable or mismatched file is quantised over
            log.warning("int8 cache %s could not be used (%s: %s); quantising again", path, type(exc).__name__, exc)
    # Layers a failed read already replaced are the cached ones, equal to freshly quantised ones;
    # quantise_linears takes only the plain linear layers left.
    model = int8_linear.quantise_linears(model, keep)
    if path is not None:
        _save_layers(model, path, identity)
    return model


def _load_layers(model: torch.nn.Module, path: Path, keep: tuple[str, ...]) -> torch.nn.Module:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as stored:
        names = set(stored.keys())

        def cached(name: str, linear: torch.nn.Linear) -> Int8Linear:
            keys = [f"{name}.{suffix}" for suffix in _SUFFIXES]
            if not all(k in names for k in keys):
                raise KeyError(f"no stored layer {name!r}")
            return Int8Linear(linear, stored=tuple(stored.get_tensor(k) for k in keys))

        replace_linears(model, cached, keep)
    return model


def _save_layers(model: torch.nn.Module, path: Path, identity: str) -> None:
    from safetensors.torch import save_file

    tensors = {f"{name}.{suffix}": getattr(module, suffix) for name, module in model.named_modules()
               if isinstance(module, Int8Linear) for suffix in _SUFFIXES}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(path.parent).free < size * 1.1 + 2**30:  # leave the disk a GiB to spare
            raise OSError(f"{size / 2**30:.1f} GiB needed, too little free space")
        save_file(tensors, str(partial), metadata={"format": str(FORMAT), "identity": identity})
        os.replace(partial, path)  # readers see a whole file or none
    except Exception as exc:  # noqa: BLE001 - a cache that cannot be written must not fail the load
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        log.warning("int8 layers not cached in %s (%s); the next load quantises again", path.parent, exc)
        return
    _remove_older_formats(path.parent, identity)


def _remove_older_formats(folder: Path, identity: str) -> None:
    """Delete this model's files of an earlier ``FORMAT``: no load reads them again, and each is a
    few GiB. Files of other models, of this format, or unreadable are left as they are."""
    from safetensors import safe_open

    for other in folder.glob("*.safetensors"):
        try:
            with safe_open(str(other), framework="pt") as stored:
                meta = stored.metadata() or {}
            if meta.get("identity") == identity and int(meta.get("format", FORMAT)) < FORMAT:
                other.unlink()
                log.info("removed %s: int8 layers of format %s, now %d", other, meta["format"], FORMAT)
        except Exception:  # noqa: BLE001 - not ours to judge: leave it
            continue
