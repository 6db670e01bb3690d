"""What a batch key may be: a folder name that cannot escape the images root or the warehouse.

Kept free of Dagster so the command line can check keys without loading it; every layer that
takes a key from outside (folders, the CLI, the warehouse) checks it here.
"""

from __future__ import annotations

import re

# Matched with fullmatch: "$" would also match before a trailing newline, letting "name\n" through.
_VALID_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


class InvalidBatchKey(ValueError):
    pass


def validate_batch_key(key: str) -> str:
    """Reject keys that could escape the images root or the warehouse, or that name hidden folders."""
    if not isinstance(key, str) or not key:
        raise InvalidBatchKey("a batch key must be a non-empty string")
    if key == ".":
        raise InvalidBatchKey("batch key '.' names the images root itself, not a folder in it")
    if key == "..":
        raise InvalidBatchKey("batch key '..' names the folder above the images root")
    if ".." in key:
        raise InvalidBatchKey(f"batch key {key!r} may not contain '..'")
    if "/" in key or "\\" in key or "\x00" in key:
        raise InvalidBatchKey(f"batch key {key!r} may not contain path separators")
    if key.startswith("."):
        raise InvalidBatchKey(f"batch key {key!r} names a hidden folder")
    if not _VALID_KEY.fullmatch(key):
        raise InvalidBatchKey(
            f"batch key {key!r} must be 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return key


def batch_key_param(_ctx, _param, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
    """Click callback for ``--batch`` options: the key, or each key of a repeated option, validated."""
    import click  # only the command line needs it

    try:
        return tuple(map(validate_batch_key, value)) if isinstance(value, tuple) else validate_batch_key(value)
    except InvalidBatchKey as exc:
        raise click.BadParameter(str(exc)) from None
