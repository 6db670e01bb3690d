"""What pixelsift may read of a batch folder, and how: never anything outside the images root,
never anything but a regular file, never more than ``max_file_bytes`` of one.

A batch folder is an immediate subfolder of the images root, so the root is its parent. Links
are followed only while they stay inside the root (``realpath``): users organise photos with
them. A link that leaves the root, a FIFO, a socket or a device is listed (it becomes an error
row, not a silent gap) but never opened: opening a FIFO to read blocks until a writer comes.
Checking a path and opening it are two steps, so what was opened is checked again (``fstat``,
and on Linux the kernel's own path of the descriptor).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

OUTSIDE_ROOT = "points outside the images root"
HASH_CHUNK = 1024 * 1024

# O_NOFOLLOW: the checked path has no links left, so one appearing now is refused (ELOOP).
# O_NONBLOCK: should a FIFO be swapped in after the check, opening it returns at once.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(
    os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)

_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
          stat.S_IFBLK: "block device", stat.S_IFDIR: "folder", stat.S_IFLNK: "link"}


class BatchOutsideRoot(Exception):
    """The batch folder is a link that leaves the images root: the batch is refused as a whole."""


class FileRefused(Exception):
    """A file that is not read; the message is its error row's reason."""


def images_root_of(batch_dir: Path) -> Path:
    return batch_dir.parent


def is_inside(real: str, root_real: str) -> bool:
    """Whether the resolved path ``real`` is ``root_real`` or below it (both from ``os.path.realpath``)."""
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def check_batch_folder(batch_dir: Path) -> None:
    real = os.path.realpath(batch_dir)
    if not is_inside(real, os.path.realpath(images_root_of(batch_dir))):
        raise BatchOutsideRoot(f"batch folder {batch_dir} {OUTSIDE_ROOT} (it leads to {real}); "
                               "move the photos into the images root or link to a folder inside it")


def list_batch_files(batch_dir: Path) -> list[Path]:
    """Every entry of the batch that gets a row, sorted, hidden files and folders skipped.

    Regular files, and the entries that become error rows: links leaving the root (to files or
    folders), broken links, FIFOs, sockets, devices. Links to folders inside the root are
    entered, after the batch's own folders and each folder once, so cyclic links end and a folder
    reached twice is listed under its first path (its real one when it is in the batch).
    """
    check_batch_folder(batch_dir)
    if not batch_dir.is_dir():
        raise FileNotFoundError(f"batch folder {batch_dir} does not exist")
    root = os.path.realpath(images_root_of(batch_dir))
    listed: list[Path] = []
    entered: set[tuple[int, int]] = set()
    linked: deque[Path] = deque([batch_dir])

    while linked:
        folders = [linked.popleft()]
        while folders:
            folder = folders.pop()
            try:
                info = folder.stat()
                if (info.st_dev, info.st_ino) in entered:
                    continue
                entered.add((info.st_dev, info.st_ino))
                with os.scandir(folder) as scan:
                    entries = sorted(scan, key=lambda e: e.name)
            except OSError:  # vanished or unreadable: as rglob did, nothing to list there
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path = folder / entry.name
                if entry.is_dir(follow_symlinks=False):
                    folders.append(path)
                elif entry.is_symlink() and is_inside(os.path.realpath(path), root) and path.is_dir():
                    linked.append(path)
                else:
                    listed.append(path)
    return sorted(listed, key=lambda p: p.relative_to(batch_dir).as_posix())


# The images asset's metadata entry holding the signature of the files it read (stale batches are
# found by comparing it with the folder now: dagster_project/stale_batches.py).
FOLDER_SIGNATURE = "folder_signature"


def files_signature(stats: dict[str, os.stat_result]) -> str:
    """Changes when a file (by relative name) is added, removed, renamed or rewritten (size or mtime)."""
    digest = hashlib.sha256()
    for name, entry in stats.items():
        # surrogateescape: a file name that is not UTF-8 is still bytes to hash, not a crash of every tick.
        digest.update(f"{name}\0{entry.st_size}\0{entry.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def folder_signature(folder: Path, files: list[Path] | None = None) -> str:
    """The signature of the batch folder's files (``files``, when already listed). The folder
    sensor compares it tick to tick; the ``images`` asset records the one it read.
    Nothing is opened (a FIFO would block), and no link is followed out of the root (entry_stat)."""
    files = list_batch_files(folder) if files is None else files
    return files_signature({p.relative_to(folder).as_posix(): entry_stat(p, folder) for p in files})


def entry_stat(path: Path, batch_dir: Path) -> os.stat_result:
    """A listed entry's stat, without opening it: a link's target's while that stays inside the
    images root (a photo rewritten behind a link is a change), else the entry's own."""
    if path.is_symlink() and is_inside(os.path.realpath(path), os.path.realpath(images_root_of(batch_dir))):
        try:
            return path.stat()
        except OSError:  # a broken link or a loop: listed all the same
            pass
    return path.lstat()


def _kind(mode: int) -> str | None:
    """None for a regular file, else what it is instead."""
    return None if stat.S_ISREG(mode) else _KINDS.get(stat.S_IFMT(mode), "special file")


def _opened_path(fd: int) -> str | None:
    """The kernel's path of an open descriptor (Linux); None where /proc does not tell."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


@contextmanager
def open_batch_file(path: Path, batch_dir: Path) -> Iterator[BinaryIO]:
    """``path`` open for reading, provided it resolves inside the images root to a regular file;
    else FileRefused. Nothing else is opened: not a link's target outside the root, not a FIFO."""
    root = os.path.realpath(images_root_of(batch_dir))
    real = os.path.realpath(path)
    if not is_inside(real, root):
        raise FileRefused(OUTSIDE_ROOT)
    try:
        kind = _kind(os.stat(real, follow_symlinks=False).st_mode)
        if kind:
            raise FileRefused(f"not a regular file ({kind})")
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as exc:
        raise FileRefused(f"cannot read file: {exc.strerror or exc}") from None
    try:
        # The file may have been swapped since the checks above: check what was actually opened.
        kind = _kind(os.fstat(fd).st_mode)
        if kind:
            raise FileRefused(f"not a regular file ({kind})")
        opened = _opened_path(fd)
        if opened is not None and not is_inside(opened, root):
            raise FileRefused(OUTSIDE_ROOT)
        os.set_blocking(fd, True)
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with file:
        yield file


def too_large(size: int, max_bytes: int) -> str:
    return f"too large: {size} bytes, over max_file_bytes ({max_bytes})"


def read_whole(file: BinaryIO, max_bytes: int) -> bytes:
    """All of an open file, refused unread when over ``max_bytes``."""
    size = os.fstat(file.fileno()).st_size
    if size > max_bytes:
        raise FileRefused(too_large(size, max_bytes))
    data = file.read(size)  # exactly the size: read(n) allocates n bytes up front
    if file.read(1):
        raise FileRefused("cannot read file: it grew while being read")
    return data


def hash_whole(file: BinaryIO, max_bytes: int) -> str:
    """The sha256 of an open file, read in chunks: memory stays at one chunk whatever its size."""
    digest, total = hashlib.sha256(), 0
    while chunk := file.read(HASH_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise FileRefused(too_large(total, max_bytes))
        digest.update(chunk)
    return digest.hexdigest()


def read_batch_file(path: Path, batch_dir: Path, max_bytes: int) -> bytes:
    with open_batch_file(path, batch_dir) as file:
        return read_whole(file, max_bytes)
