"""The self-play run directory: its layout, and reading it back safely.

``unigap selfplay`` writes, and ``unigap report`` / ``unigap build`` read::

    RUN_DIR/
      run.json          config, fingerprints, model spec (written first)
      images/           000012-003.png + 000012-003.codes.npy  (prompt index - candidate)
      parts/            one <prompt index>.jsonl per finished prompt (only while running)
      records.jsonl     one line per candidate, in prompt order (when finished)
      summary.json      counts and scores (written last: its presence = the run is complete)

A record (one line of ``records.jsonl``)::

    {"prompt_index": 12, "prompt_id": "p12", "prompt": "a red circle", "difficulty": "easy",
     "category": "color", "candidate": 3, "seed": 8123..., "p_yes": 0.73, "accepted": true,
     "image": "images/000012-003.png", "codes": "images/000012-003.codes.npy",
     "model_fingerprint": "...", "config_fingerprint": "..."}

``difficulty`` and ``category`` are strings or null.  Paths are relative to the
run directory.  ``accepted`` is ``p_yes >= judge_threshold`` of the run.

This module is the one writer (:func:`make_record`, :func:`write_meta`,
:func:`write_part`, :func:`merge_parts`, :func:`write_summary`) and the one
reader (:func:`read_meta`, :func:`iter_records`, :func:`parse_record`) of that format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from .errors import UnigapError
from .fsutil import write_text_atomic
from .jsonl import parse_object

RUN_FILE = "run.json"
RECORDS_FILE = "records.jsonl"
SUMMARY_FILE = "summary.json"
PARTS_DIR = "parts"
IMAGES_DIR = "images"

RECORD_KEYS = (
    "prompt_index",
    "prompt_id",
    "prompt",
    "difficulty",
    "category",
    "candidate",
    "seed",
    "p_yes",
    "accepted",
    "image",
    "codes",
    "model_fingerprint",
    "config_fingerprint",
)


class RunError(UnigapError):
    """A run directory is missing, incomplete or inconsistent."""


class RunIncompleteError(RunError):
    """The run has not finished (no summary.json)."""


def image_name(prompt_index: int, candidate: int) -> str:
    return f"{IMAGES_DIR}/{prompt_index:06d}-{candidate:03d}.png"


def codes_name(prompt_index: int, candidate: int) -> str:
    return f"{IMAGES_DIR}/{prompt_index:06d}-{candidate:03d}.codes.npy"


def part_name(prompt_index: int) -> str:
    return f"{PARTS_DIR}/{prompt_index:06d}.jsonl"


def make_record(
    *,
    prompt_index: int,
    prompt_id: str,
    prompt: str,
    difficulty: str | None,
    category: str | None,
    candidate: int,
    seed: int,
    p_yes: float,
    threshold: float,
    model_fingerprint: str,
    config_fingerprint: str,
) -> dict[str, Any]:
    """One record, its keys in :data:`RECORD_KEYS` order (``accepted`` = ``p_yes >= threshold``)."""
    return {
        "prompt_index": prompt_index,
        "prompt_id": prompt_id,
        "prompt": prompt,
        "difficulty": difficulty,
        "category": category,
        "candidate": candidate,
        "seed": seed,
        "p_yes": p_yes,
        "accepted": bool(p_yes >= threshold),
        "image": image_name(prompt_index, candidate),
        "codes": codes_name(prompt_index, candidate),
        "model_fingerprint": model_fingerprint,
        "config_fingerprint": config_fingerprint,
    }


def record_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False)


def write_meta(run_dir: str | os.PathLike, meta: dict[str, Any]) -> None:
    """``run.json`` (atomic): written first, before any image."""
    write_text_atomic(Path(run_dir) / RUN_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def write_part(run_dir: str | os.PathLike, prompt_index: int, records: list[dict[str, Any]]) -> None:
    """Publish one finished prompt's records (atomic): the prompt is done iff its part exists."""
    write_text_atomic(Path(run_dir) / part_name(prompt_index), "".join(record_line(r) + "\n" for r in records))


def merge_parts(run_dir: str | os.PathLike, num_prompts: int) -> list[dict[str, Any]]:
    """Merge the parts of prompts ``0 .. num_prompts - 1`` in order into ``records.jsonl`` (atomic)."""
    run_dir = Path(run_dir)
    missing = [i for i in range(num_prompts) if not (run_dir / part_name(i)).is_file()]
    if missing:
        raise RunError(f"{len(missing)} prompts have no records after all ranks finished (first: index {missing[0]})")
    text = "".join((run_dir / part_name(i)).read_text(encoding="utf-8") for i in range(num_prompts))
    write_text_atomic(run_dir / RECORDS_FILE, text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_summary(run_dir: str | os.PathLike, summary: dict[str, Any]) -> None:
    """``summary.json`` (atomic): written last, it marks the run complete."""
    write_text_atomic(Path(run_dir) / SUMMARY_FILE, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


def resolve_inside(run_dir: str | os.PathLike, rel: Any, what: str = "path") -> Path:
    """``run_dir / rel``, refusing anything that would leave the run directory."""
    root = Path(run_dir).resolve()
    if not isinstance(rel, str) or not rel or os.path.isabs(rel):
        raise RunError(f"{what} {rel!r} must be a relative path inside the run directory {run_dir}")
    path = (root / rel).resolve()
    if path != root and root not in path.parents:
        raise RunError(f"{what} {rel!r} points outside the run directory {run_dir}")
    return path


def read_meta(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's ``run.json`` (config, fingerprints, model spec)."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise RunError(f"{run_dir} is not a unigap self-play run (no {RUN_FILE})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{path} is not valid JSON ({err})") from None


def is_complete(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / SUMMARY_FILE).is_file() and (Path(run_dir) / RECORDS_FILE).is_file()


def parse_record(line: str, where: str) -> dict[str, Any]:
    """One line of ``records.jsonl`` (or of a part) as a record; errors name ``where`` (file:line)."""
    record = parse_object(line, where, RunError, "a JSON object (one record)")
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise RunError(f"{where}: record lacks {', '.join(missing)}")
    return record


def finished_parts(run_dir: str | os.PathLike) -> list[Path]:
    """The ``parts/<prompt index>.jsonl`` of the prompts finished so far, in prompt order."""
    parts = Path(run_dir) / PARTS_DIR
    found = [p for p in parts.glob("*.jsonl") if p.stem.isdigit()] if parts.is_dir() else []
    return sorted(found, key=lambda p: int(p.stem))


def record_files(run_dir: str | os.PathLike, allow_partial: bool = False) -> list[Path]:
    """The files that hold a run's records, in prompt order.

    A run that has not finished raises :class:`RunIncompleteError` unless
    ``allow_partial``; then they are the parts of the prompts finished so far.
    """
    run_dir = Path(run_dir)
    if is_complete(run_dir):
        return [run_dir / RECORDS_FILE]
    parts = finished_parts(run_dir)
    if not allow_partial:
        raise RunIncompleteError(
            f"self-play run {run_dir} is not complete ({len(parts)} prompts finished, no {SUMMARY_FILE}); "
            "finish it by running the same `unigap selfplay` command again, or use the prompts finished so far "
            "with --allow-partial"
        )
    return parts


def iter_records(run_dir: str | os.PathLike, allow_partial: bool = False) -> Iterator[dict[str, Any]]:
    """Stream the records of a run, one dict per candidate (constant memory); see :func:`record_files`."""
    read_meta(run_dir)
    for path in record_files(run_dir, allow_partial):
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    yield parse_record(line, f"{path}:{number}")
