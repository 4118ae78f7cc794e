"""Atomic output: write beside the target, then rename, so a failure never leaves a partial file or
directory. Missing parent folders are refused, not created: a mistyped path should fail."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from compiler.errors import InvcError


@contextmanager
def atomic_path(path, what: str = "file"):
    """Yields a temporary path beside `path` for writers that take a file name; on success it replaces
    `path`, on any failure it vanishes."""
    path = Path(path)
    if path.exists() and not path.is_file():
        # os.replace would swap a device or directory for our file (-o /dev/null included).
        raise InvcError(f"cannot write {what} {path}: it exists and is not a regular file")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise InvcError(f"cannot write {what} {path}: {e.strerror} ({path.parent})") from e
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain open() would not
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise InvcError(f"cannot write {what} {path}: {e.strerror}") from e
        raise


@contextmanager
def atomic_file(path, what: str = "file"):
    """Yields an open binary file; on success it replaces `path`, on any failure it vanishes."""
    with atomic_path(path, what) as tmp, open(tmp, "wb") as f:
        yield f


def check_dir_target(path, what: str, marker: str) -> Path:
    """Refuse an output directory before any long work: a file, or a folder that is not an earlier output."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvcError(f"cannot write {what} {path}: it exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).exists():
        raise InvcError(f"cannot write {what} {path}: it is a non-empty directory without {marker}, "
                        f"so not an earlier {what}; not replacing it (choose another -o)")
    if path.parent.exists() and not path.parent.is_dir():
        raise InvcError(f"cannot write {what} {path}: part of its path is a file, not a directory")
    if not path.parent.exists():
        raise InvcError(f"cannot write {what} {path}: no such directory {path.parent}")
    return path


@contextmanager
def atomic_dir(path, what: str, marker: str):
    """Yields a fresh sibling directory to fill; on success it replaces `path`, on any failure it
    vanishes. A non-empty `path` is replaced only when it holds `marker`, i.e. it is an earlier output."""
    path = check_dir_target(path, what, marker)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    except NotADirectoryError:
        raise InvcError(f"cannot write {what} {path}: part of its path is a file, not a directory") from None
    except OSError as e:
        raise InvcError(f"cannot write {what} {path}: {e.strerror or e} ({path.parent})") from None
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; a plain mkdir would not
        yield tmp
        old = path.with_name(f".{path.name}.old.{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InvcError(f"cannot write {what} {path}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def current_umask() -> int:
    """The process umask; reading it means setting it, so it is put straight back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
