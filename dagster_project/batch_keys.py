"""What a batch key may be: a folder name that cannot escape the images root or the warehouse.

Kept free of Dagster so the command line can check keys without loading it.
"""

from __future__ import annotations

import re

_VALID_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class InvalidBatchKey(ValueError):
    pass


def validate_batch_key(key: str) -> str:
    """Reject keys that could escape the images root or the warehouse, or that name hidden folders."""
    if not isinstance(key, str) or not key:
        raise InvalidBatchKey("a batch key must be a non-empty string")
    if key in {".", ".."} or ".." in key:
        raise InvalidBatchKey(f"batch key {key!r} may not contain '..'")
    if "/" in key or "\\" in key or "\x00" in key:
        raise InvalidBatchKey(f"batch key {key!r} may not contain path separators")
    if key.startswith("."):
        raise InvalidBatchKey(f"batch key {key!r} names a hidden folder")
    if not _VALID_KEY.match(key):
        raise InvalidBatchKey(
            f"batch key {key!r} must be 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return key
