"""Atomic output: write beside the target, then rename, so a failure never leaves a partial file or
directory. Missing parent folders are refused, not created: a mistyped path should fail.

A temporary name carries the writer's process id (`.out.onnx.<pid>.<random>.tmp`): SIGTERM and
SIGINT unwind through the clean-up here (compiler/cli.py turns SIGTERM into an exception), and what
a SIGKILL leaves behind is swept by the next write to that directory once its process is gone."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from common.errors import InvcError


@contextmanager
def atomic_path(path, what: str = "file"):
    """Yields a temporary path beside `path` for writers that take a file name; on success it replaces
    `path`, on any failure it vanishes."""
    path = check_file_target(path, what)
    sweep_stale(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
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
    _check_parent(path, what)
    return path


@contextmanager
def atomic_dir(path, what: str, marker: str):
    """Yields a fresh sibling directory to fill; on success it replaces `path`, on any failure it
    vanishes. A non-empty `path` is replaced only when it holds `marker`, i.e. it is an earlier output."""
    path = check_dir_target(path, what, marker)
    sweep_stale(path.parent)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
    except NotADirectoryError:
        raise InvcError(f"cannot write {what} {path}: part of its path is a file, not a directory") from None
    except OSError as e:
        raise InvcError(f"cannot write {what} {path}: {e.strerror or e} ({path.parent})") from None
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; a plain mkdir would not
        yield tmp
        old = path.with_name(f"{_temp_prefix(path)}old.tmp")
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


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


_TEMP = re.compile(r"^\..+\.(\d+)\.([a-z0-9_]{8}|old)\.tmp$")  # mkstemp/mkdtemp: 8 random characters


def sweep_stale(folder: Path) -> None:
    """Remove this user's temporaries in `folder` whose writing process is gone (killed by SIGKILL,
    or a crash of the machine); a live process's, or another user's, are left alone."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return  # the write itself will report the folder
    for entry in entries:
        m = _TEMP.match(entry.name)
        if not m or _alive(int(m.group(1))):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            pass  # another writer swept it first


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or not a pid we can ask about
    return True


def check_output(out, inputs, what: str, marker: str | None = None) -> Path:
    """The one check of an output before any work starts: the target can be written (a file, or with
    `marker` a folder, see check_dir_target), and writing it loses no input of the command.

    Writing `out` replaces it, and a folder output replaces everything under it, so it is refused when
    an input is `out` or lies inside it, or when `out` lies inside an input folder (a model directory).
    Names do not matter: symbolic links and `..` are resolved, and a hard link or a folder mounted
    twice is recognised by its inode, so `old/c.txt` is found under `-o ./x/../old` or a link to `old`."""
    target = _resolved(out, what)
    for source in inputs:
        path = _resolved(source, "input")
        if _within(path, target):
            where = "it is" if _within(target, path) else "it holds"
            raise InvcError(f"cannot write {what} {out}: {where} an input of this command ({source}), "
                            "which writing it would delete; choose another -o")
        if path.is_dir() and _within(target, path):
            raise InvcError(f"cannot write {what} {out}: it lies inside the input folder {source}; "
                            "choose another -o")
    return check_file_target(out, what) if marker is None else check_dir_target(out, what, marker)


def _resolved(path, what: str) -> Path:
    try:
        return Path(path).resolve()
    except RuntimeError:  # Python 3.11 says "Symlink loop"; later ones raise OSError(ELOOP)
        raise InvcError(f"{what} {path}: its symbolic links form a loop") from None
    except OSError as e:
        raise InvcError(f"{what} {path}: {e.strerror or e}") from None


def _within(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it, by resolved name or by identity (inode)."""
    if path == folder or path.is_relative_to(folder):
        return True
    try:
        if not folder.exists():
            return False
        return any(p.exists() and os.path.samefile(p, folder) for p in (path, *path.parents))
    except OSError:
        return False


def check_file_target(path, what: str) -> Path:
    """Refuse a file output before any long work: a folder or device in its place, or no folder for it."""
    path = Path(path)
    if path.exists() and not path.is_file():
        # os.replace would swap a device or directory for our file (-o /dev/null included).
        raise InvcError(f"cannot write {what} {path}: it exists and is not a regular file")
    _check_parent(path, what)
    return path


def _check_parent(path: Path, what: str) -> None:
    if path.parent.exists() and not path.parent.is_dir():
        raise InvcError(f"cannot write {what} {path}: part of its path is a file, not a directory")
    if not path.parent.exists():
        raise InvcError(f"cannot write {what} {path}: no such directory {path.parent}")


def current_umask() -> int:
    """The process umask; reading it means setting it, so it is put straight back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
