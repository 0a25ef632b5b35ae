"""The loop directory's journal: which stages finished, with what, in how long.

``LOOP_DIR/journal.json`` is rewritten atomically (temp + rename) when a stage starts and when it
finishes; a stage counts as done only once its ``done`` entry is there, and that entry is written
after the stage's outputs are complete.  A killed stage therefore has a ``started`` entry and no
``done``: the rerun redoes it (removing what it left, or letting a self-play run resume itself).

The test hook ``UNIGAP_LOOP_KILL=STAGE:POINT`` (``r1.train0:during``, ``r0.eval:end``, ...)
SIGKILLs the loop at a named point: ``during`` while the stage's command runs (the command is
killed first), ``end`` after the stage's work is complete and before the journal records it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from ..fsutil import write_text_atomic

JOURNAL_FILE = "journal.json"
KILL_ENV = "UNIGAP_LOOP_KILL"


class Journal:
    """Finished and started stages of one loop directory."""

    def __init__(self, loop_dir: Path):
        self.path = Path(loop_dir) / JOURNAL_FILE
        self.data: dict[str, Any] = {"stages": {}}
        if self.path.is_file():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))

    def _save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data, indent=1) + "\n")

    def entry(self, stage: str) -> dict[str, Any] | None:
        return self.data["stages"].get(stage)

    def done(self, stage: str) -> bool:
        entry = self.entry(stage)
        return bool(entry and entry.get("done"))

    def result(self, stage: str) -> dict[str, Any]:
        entry = self.entry(stage)
        return dict(entry.get("result") or {}) if entry else {}

    def start(self, stage: str) -> int:
        """Record an attempt; returns its number (1 = first)."""
        entry = self.data["stages"].setdefault(stage, {"done": False, "attempts": 0})
        entry["attempts"] += 1
        entry["started_at"] = time.time()
        self._save()
        return entry["attempts"]

    def finish(self, stage: str, seconds: float, result: dict[str, Any]) -> None:
        entry = self.data["stages"][stage]
        entry.update(done=True, seconds=round(seconds, 3), result=result)
        self._save()

    def stages(self) -> dict[str, dict[str, Any]]:
        return dict(self.data["stages"])


def kill_point(stage: str, point: str) -> bool:
    """Whether the test hook names this stage and point."""
    return os.environ.get(KILL_ENV, "") == f"{stage}:{point}"


def die() -> None:
    """kill -9 of this process (the test hook)."""
    os.kill(os.getpid(), signal.SIGKILL)
