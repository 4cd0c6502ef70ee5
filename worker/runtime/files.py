"""Files the tool writes for people and other programs: written to a new file beside the target
and renamed over it, so a symlink at the target is replaced, never followed, and a reader never
sees half a file; the mode is set on the open file, never by path after the fact.

What is not a file is written into, never replaced: a character device (`/dev/null`), a FIFO or
a socket, and what the system's links to a process's open files lead to (`/dev/stdout`,
`/dev/fd/3`, `/proc/self/fd/1`: appended to); a block device or a directory is refused. (Renamed
over, `--output /dev/null` run as root would leave a regular file where the device was.)"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from worker.domain.errors import ConfigError

_STREAM_LINKS = ("/dev/stdout", "/dev/stderr")  # and /dev/fd/N, /proc/PID/fd/N


@contextmanager
def replaced(path: Path, mode: int = 0o600) -> Iterator[TextIO]:
    """A text file that becomes ``path`` (with ``mode``) when the block ends without error; or,
    where ``path`` is a device or a stream, what is written into it."""
    into = _stream_fd(path)
    if into is not None:
        with open(into, "w", encoding="utf-8", newline="") as out:  # noqa: PTH123 - a descriptor
            yield out
        return
    with (
        _replaced_fd(path, mode) as fd,
        open(fd, "w", encoding="utf-8", newline="", closefd=False) as out,
    ):
        yield out


def _stream_fd(path: Path) -> int | None:
    """An open descriptor for writing into ``path`` when it is not a file to replace (see the
    module's text); None when it is one, or nothing is there yet."""
    nofollow = os.O_NOFOLLOW  # what lstat found is what is opened: a link put there meanwhile fails
    try:
        found = os.lstat(path).st_mode
        if stat.S_ISREG(found):
            return None  # a file: replaced
        if stat.S_ISLNK(found):
            if not _stream_link(path):
                return None  # a link: replaced, never followed
            found = path.stat().st_mode  # where /dev/stdout leads, a file too: written into
            nofollow = 0
    except FileNotFoundError:
        return None  # nothing there yet (or a link to nothing): a new file
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from None
    if stat.S_ISDIR(found) or stat.S_ISBLK(found):
        kind = "a directory" if stat.S_ISDIR(found) else "a block device"
        raise ConfigError(f"{path}: cannot write: it is {kind}, not a file")
    try:  # appended to: a shell's `>>` behind /dev/stdout keeps what it holds
        return os.open(path, os.O_WRONLY | os.O_APPEND | nofollow)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _stream_link(path: Path) -> bool:
    """Whether ``path`` is one of the links the system makes to a process's open files
    (/dev/stdout, /dev/stderr, /dev/fd/N, /proc/PID/fd/N): followed, unlike a link anyone
    could plant (in /tmp, or /dev/shm)."""
    where = Path(os.path.normpath(path.absolute()))
    parts = where.parts
    if str(where) in _STREAM_LINKS:
        return True
    if not parts[-1].isdigit():
        return False
    # exactly /dev/fd/N or /proc/PID/fd/N (PID, self or thread-self), never some/dir/fd/N
    return parts[:-1] == ("/", "dev", "fd") or (
        len(parts) == 5 and parts[1] == "proc" and parts[3] == "fd"
    )


@contextmanager
def _replaced_fd(path: Path, mode: int) -> Iterator[int]:
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, mode)
        yield fd
        os.fsync(fd)
        os.close(fd)
        fd = -1
        Path(temp).replace(path)  # replaces a symlink at ``path`` itself, never its target
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(temp).unlink(missing_ok=True)
        raise


def appended(path: Path, what: str) -> int:
    """A descriptor that appends to ``path``, created owner-only. A link there is not followed
    (a link planted at a log's path would make the tool append where its planter chose), except
    the system's links to open files (/dev/stderr, /dev/fd/N); a file of this user's that
    others may read is made owner-only. ConfigError naming ``what`` and the path otherwise."""
    follow = path.is_symlink() and _stream_link(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        fd = os.open(path, flags if follow else flags | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"{what} {path}: a symbolic link, not followed: name the file it leads to"
            ) from None
        raise ConfigError(f"{what} {path}: cannot write it: {exc.strerror or exc}") from None
    found = os.fstat(fd)
    if stat.S_ISREG(found.st_mode) and found.st_uid == os.getuid() and found.st_mode & 0o077:
        os.fchmod(fd, 0o600)  # it will hold what the run logs: no longer for others to read
    return fd
