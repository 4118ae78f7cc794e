"""The per-user build cache, $XDG_CACHE_HOME/invc/KIND (default ~/.cache/invc/KIND): rendered Triton
modules and the native frame kernels are loaded from it, so it lives outside /tmp, where another user
could create the folder first."""
from __future__ import annotations

import os
import stat
from pathlib import Path


class CacheError(Exception):
    """The build cache is not private to this user, so nothing in it may be loaded."""
    exit_code = 2


def private_cache(kind: str) -> Path:
    """The folder, made 0700 and refused unless it is a real directory owned by this user that no
    one else can write."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = base / "invc" / kind
    try:
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = cache.lstat()
    except OSError as e:  # XDG_CACHE_HOME a file, a folder without write permission, a full disk
        raise CacheError(f"cannot create build cache {cache}: {e.strerror or e}; "
                         f"set XDG_CACHE_HOME to a writable folder") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise CacheError(f"build cache {cache} is not a private directory of this user "
                         f"(owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)}); "
                         f"remove it or set XDG_CACHE_HOME to a private folder")
    return cache
