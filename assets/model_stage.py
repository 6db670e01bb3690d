"""Running a model over many items: in chunks, with retries, and per-item failure records.

A chunk that raises is retried; if it still fails, each of its items is tried alone so
one bad item cannot take its neighbours down. An item that fails alone is returned as
its exception, and the asset records it as an error row instead of crashing the run.
A model that cannot be loaded at all is not an item's failure: it fails the step at once.
An input that cannot be read (an image changed since it was hashed) is not the model's failure
either: its chunk is not retried but split at once, and its row gets the file's own reason.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence, TypeVar

from assets.image_files import ImageDecodeError
from resources.backends import ModelLoadError

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


def run_in_chunks(
    items: Sequence[T],
    fn: Callable[[Sequence[T]], Sequence[R]],
    chunk_size: int,
    retries: int = 1,
    logger: logging.Logger | None = None,
    on_chunk: Callable[[Sequence[T], list[R | Exception]], None] | None = None,
) -> list[R | Exception]:
    """``fn`` maps a chunk of items to one result per item, in order. ``on_chunk`` sees each chunk's
    items and outcomes as soon as they are known (to save progress)."""
    logger = logger or log
    results: list[R | Exception] = []
    for start in range(0, len(items), max(1, chunk_size)):
        chunk = items[start : start + chunk_size]
        outcome = _attempt(chunk, fn, retries, logger)
        if not isinstance(outcome, Exception):
            outcomes = list(outcome)
        elif len(chunk) == 1:
            outcomes = [outcome]
        else:
            logger.warning("chunk of %d failed (%s); retrying its items one by one", len(chunk), outcome)
            outcomes = []
            for item in chunk:
                single = _attempt([item], fn, retries, logger)
                outcomes.append(single if isinstance(single, Exception) else single[0])
        if on_chunk is not None:
            on_chunk(chunk, outcomes)
        results.extend(outcomes)
    return results


def _attempt(chunk: Sequence[T], fn: Callable[[Sequence[T]], Sequence[R]], retries: int,
             logger: logging.Logger) -> Sequence[R] | Exception:
    error: Exception | None = None
    for attempt in range(1 + max(0, retries)):
        try:
            out = fn(chunk)
        except ModelLoadError:
            raise
        except ImageDecodeError as exc:  # the same file would be read again: no retry
            return exc
        except Exception as exc:  # noqa: BLE001 - any model failure becomes a recorded error
            error = exc
            logger.warning("model call failed (attempt %d of %d): %r", attempt + 1, 1 + retries, exc)
            continue
        if len(out) != len(chunk):
            error = RuntimeError(f"model returned {len(out)} results for {len(chunk)} inputs")
            continue
        return out
    assert error is not None
    return error


def describe_failure(exc: Exception) -> str:
    if isinstance(exc, ImageDecodeError):  # the file's own reason, e.g. "changed during the run: …"
        return str(exc)
    # The prefix is what reuse looks for to retry these next run (assets/reuse.py).
    return f"model failed: {type(exc).__name__}: {exc}"
