"""Files the tool writes for people and other programs: written to a new file beside the target
and renamed over it, so a symlink at the target is replaced, never followed, and a reader never
sees half a file; the mode is set on the open file, never by path after the fact."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from worker.domain.errors import ConfigError


@contextmanager
def replaced(path: Path, mode: int = 0o600) -> Iterator[TextIO]:
    """A text file that becomes ``path`` (with ``mode``) when the block ends without error."""
    with (
        _replaced_fd(path, mode) as fd,
        open(fd, "w", encoding="utf-8", newline="", closefd=False) as out,
    ):
        yield out


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


def copy_bytes_into(source: Path, folder: Path) -> Path:
    """Copy ``source`` into ``folder`` under its own name, owner-only, without following a
    symlink that stands there."""
    target = folder / source.name
    with (
        _replaced_fd(target, 0o600) as fd,
        source.open("rb") as data,
        open(fd, "wb", closefd=False) as out,
    ):
        shutil.copyfileobj(data, out, 1 << 20)
    return target
