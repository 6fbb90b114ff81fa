"""Writing files so that a crash or a full disk never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import: setting it is process-wide, so never while other threads write files


def check_target(path: str | Path) -> Path:
    """`path` if a file may be written there: nothing yet, a regular file or a symbolic link (replaced, never
    followed). A folder, a device (/dev/null), a FIFO or a socket raises OSError with a one-line message: a
    rename onto it would replace the device or fail with the temp file's name in the message."""
    path = Path(path)
    try:
        kind = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as err:
        raise OSError(f"cannot write {path}: {err.strerror or err}") from None
    if stat.S_ISDIR(kind):
        raise OSError(f"cannot write {path}: it is a folder, not a file")
    if not (stat.S_ISREG(kind) or stat.S_ISLNK(kind)):
        raise OSError(f"cannot write {path}: it is not a regular file (a device, pipe or socket)")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside `path` to write to; on success it is synced and renamed onto `path` (with the
    umask's permissions, or `mode`), on failure removed. The parent folder is created. A `path` that is a
    folder, device, pipe or socket is refused (`check_target`) before anything is written.

        with atomic_path("index.json") as tmp:
            tmp.write_text(text)
    """
    path = check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)  # .index-x1y2.json
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the rename must never expose a file whose bytes are still in flight
            os.fsync(f.fileno())
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_UMASK)  # mkstemp makes owner-only files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cache_root() -> Path:
    """The folder for files the engine can rebuild (the evaluator's weights, compiled kernels):
    `$IRIS_CACHE_DIR`, else platformdirs' user cache folder for "iris"."""
    root = os.environ.get("IRIS_CACHE_DIR")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("iris")
    return Path(root)
