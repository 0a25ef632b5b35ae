"""Atomic file and directory writes: a reader sees all of a result or none of it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UnigapError


class TargetExistsError(UnigapError, FileExistsError):
    """The place to write already holds something unigap will not replace."""

#: Test hook: ``UNIGAP_KILL_AT_WRITE=n`` SIGKILLs the process inside its n-th atomic
#: write, after the data went to the temporary file and before the rename: the
#: worst moment for a crash.  The crash-safety tests use it; it is read once.
_KILL_AT = int(os.environ.get("UNIGAP_KILL_AT_WRITE", "0") or 0)
_writes = 0


def crash_point() -> None:
    """Die here (kill -9) if this is the write the test hook names; otherwise nothing."""
    global _writes
    if _KILL_AT:
        _writes += 1
        if _writes == _KILL_AT:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        crash_point()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place when the block ends.

    An existing non-empty ``path`` is an error unless ``overwrite``; then it is
    replaced only after the new one is complete.  If the block fails, nothing
    at ``path`` changes.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TargetExistsError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise TargetExistsError(f"{path} already exists and is not empty (pass overwrite/--force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the result the usual permissions
    try:
        yield tmp
        if path.exists():
            if _exchange(tmp, path):  # one atomic swap: there is never a moment without `path`
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
                os.replace(path, old / "x")
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
