"""Objects that live as long as the process: the libraries and the definitions, out of the
collector's way.

Python's cyclic garbage collector walks every object it tracks on each full collection. Once
Dagster, the definitions and torch are loaded that is ~800,000 objects, none of them garbage:
in one ``pixelsift run --models tiny`` (loaded machine) 11 full collections took 8 s, and the
collection at interpreter exit 2-4 s more. ``gc.freeze()`` moves every object that exists now
into a generation no collection visits; objects made later are collected as before. So freeze
only after loading what the process keeps: a model frozen with the rest could never be freed by
the collector, and models are loaded (and released) after this point, in the steps.
"""

from __future__ import annotations

import atexit
import gc

_exit_registered = False


def pause_collection() -> None:
    """No collection while the process imports and builds what it keeps: imports make no garbage
    worth finding, and each full collection would walk everything loaded so far. Then
    ``freeze_long_lived``, and ``release_long_lived`` when the command ends (or loading fails)."""
    gc.disable()


def freeze_long_lived() -> None:
    """Freeze everything loaded so far, and collect again from here on."""
    gc.freeze()
    gc.enable()


def release_long_lived() -> None:
    """Collect as usual again, frozen objects included: for a command run inside a longer-lived
    process (the tests' CliRunner), whose later garbage must not stay frozen."""
    gc.unfreeze()
    gc.enable()


def skip_collection_at_exit() -> None:
    """At exit, skip the interpreter's last collections over everything loaded: files are written
    and closed by then, and the operating system takes the memory back. Registered as the command
    starts, it runs after the exit handlers of everything imported later (last in, first out)."""
    global _exit_registered
    if not _exit_registered:
        atexit.register(gc.freeze)
        _exit_registered = True
