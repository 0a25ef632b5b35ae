"""Where a builder writes: one ``DATASET_DIR/<NAME>/`` folder plus its entries in the host's index file.

Shared by ``unigap build sft|dpo`` and ``unigap encode``.  The rules:

* a dataset appears complete or not at all: ``<NAME>/`` is written under a
  temporary name inside DATASET_DIR and renamed into place
  (:func:`unigap.fsutil.atomic_directory`); the host's index file (LLaMA-Factory:
  its dataset index) is then read, merged and replaced atomically, as the very last step;
* other index entries are never changed; an entry (or a
  ``<NAME>/`` folder) that already exists is replaced only with ``overwrite``,
  and a ``<NAME>/`` folder that unigap did not write is never replaced;
* nothing is written outside DATASET_DIR.

A build killed with SIGKILL leaves a hidden ``.<NAME>.*.tmp`` folder holding a
``.unigap-build`` marker with its pid; the next build of that name removes such
leftovers whose process is gone.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import UnigapError
from ..fsutil import atomic_directory
from ..rowmeta import MANIFEST_FILE
from ..samples import DatasetFormat

MARKER_FILE = ".unigap-build"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class BuildError(UnigapError):
    """A build that cannot proceed (bad options, bad input, a name already taken...)."""


class DatasetExistsError(BuildError):
    """The dataset name (entry or folder) is already taken and ``--overwrite`` was not given."""


def check_name(name: str, index_file: str = "") -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (index_file, MANIFEST_FILE):
        raise BuildError(
            f"--name {name!r} is not a usable dataset name (letters, digits, '_', '-', '.'; no path separators)"
        )
    return name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def sweep_stale(dataset_dir: Path, name: str) -> int:
    """Remove leftovers of killed builds of ``name`` (only folders carrying our marker, owner gone)."""
    removed = 0
    if not dataset_dir.is_dir():
        return 0
    for tmp in dataset_dir.glob(f".{name}.*.tmp"):
        marker = tmp / MARKER_FILE
        if not tmp.is_dir() or not marker.is_file():
            continue
        try:
            pid = int(marker.read_text().split()[0])
        except (ValueError, IndexError, OSError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)
            removed += 1
    return removed


class Output:
    """The target of one build: ``dataset_dir / name`` and the entries it registers.

    Every check that can refuse happens in the constructor, before any work.
    """

    def __init__(self, dataset_dir: str | os.PathLike, name: str, entries: list[str], fmt: DatasetFormat,
                 overwrite: bool = False):
        self.dataset_dir = Path(dataset_dir)
        self.fmt = fmt
        self.name = check_name(name, fmt.index_file)
        for entry in entries:
            check_name(entry, fmt.index_file)
        self.entries = list(entries)
        self.overwrite = overwrite
        self.dropped: list[str] = []
        if self.dataset_dir.exists() and not self.dataset_dir.is_dir():
            raise BuildError(f"--out {self.dataset_dir} exists and is not a directory")
        info = fmt.read_index(self.dataset_dir)
        taken = [e for e in self.entries if e in info]
        if taken and not overwrite:
            raise DatasetExistsError(
                f"{self.dataset_dir / fmt.index_file} already has a dataset named {', '.join(map(repr, taken))}; "
                "pass --overwrite to replace it (other entries are never changed) or choose another --name"
            )
        folder = self.dataset_dir / self.name
        if folder.exists():
            if not overwrite:
                raise DatasetExistsError(
                    f"{folder} already exists; pass --overwrite to replace it or choose another --name"
                )
            if not folder.is_dir() or not (folder / MANIFEST_FILE).is_file():
                raise DatasetExistsError(
                    f"{folder} exists and was not written by unigap (no {MANIFEST_FILE}); "
                    "refusing to replace it even with --overwrite: move it away or choose another --name"
                )
        # entries an earlier build of this name registered (e.g. NAME_und): dropped if this build does not
        # write them again, since their files go with the old folder
        self.previous: dict[str, str] = {}
        if overwrite and (folder / MANIFEST_FILE).is_file():
            try:
                old = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8")).get("entries") or {}
                self.previous = {k: v for k, v in old.items() if isinstance(k, str) and isinstance(v, str)}
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                self.previous = {}
        self.swept = sweep_stale(self.dataset_dir, self.name)

    def path(self, rel: str) -> str:
        """A path inside the dataset folder, relative to DATASET_DIR (what rows and entries hold)."""
        return f"{self.name}/{rel}"

    @contextlib.contextmanager
    def building(self) -> Iterator[Path]:
        """Yield the temporary folder to fill; on success it becomes ``<NAME>/`` (entries: :meth:`register`)."""
        self.dataset_dir.mkdir(parents=True, exist_ok=True)
        with atomic_directory(self.dataset_dir / self.name, overwrite=self.overwrite) as tmp:
            (tmp / MARKER_FILE).write_text(f"{os.getpid()}\n")
            yield tmp
            (tmp / MARKER_FILE).unlink()

    def register(self, new_entries: dict[str, dict[str, Any]]) -> None:
        """Merge ``new_entries`` into the host's index (read-merge-write, atomic replace)."""
        info = self.fmt.read_index(self.dataset_dir)  # re-read: keep whatever changed meanwhile
        for key, file_name in self.previous.items():
            entry = info.get(key)
            if key not in new_entries and isinstance(entry, dict) and entry.get("file_name") == file_name:
                del info[key]
                self.dropped.append(key)
        for key, entry in new_entries.items():
            info[key] = entry
        self.fmt.write_index(self.dataset_dir, info)


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def place_file(src: str, dst: str, mode: str) -> str:
    """Hard-link ``src`` to ``dst`` (``mode="link"``, falling back to a copy) or copy it; returns what was done."""
    if mode == "link":
        try:
            os.link(src, dst)
            return "link"
        except OSError:
            pass  # another filesystem, no hard links there, ...: copy instead
    shutil.copyfile(src, dst)
    return "copy"


def format_counts(by_difficulty: dict[str, dict[str, int]], keys: list[str]) -> str:
    parts = []
    for difficulty in sorted(by_difficulty):
        counts = by_difficulty[difficulty]
        parts.append(f"{difficulty}: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in keys))
    return "; ".join(parts)
