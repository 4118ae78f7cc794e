"""Atomic output: write beside the target, then rename, so a failure never leaves a partial file."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from compiler.errors import InvcError


@contextmanager
def atomic_file(path, what: str = "file"):
    """Yields an open binary file; on success it replaces `path`, on any failure it vanishes."""
    path = Path(path)
    if path.exists() and not path.is_file():
        # os.replace would swap a device or directory for our file (-o /dev/null included).
        raise InvcError(f"cannot write {what} {path}: it exists and is not a regular file")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise InvcError(f"cannot write {what} {path}: {e.strerror} ({path.parent})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain open() would not
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError):
            raise InvcError(f"cannot write {what} {path}: {e.strerror}") from e
        raise


def current_umask() -> int:
    """The process umask; reading it means setting it, so it is put straight back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
