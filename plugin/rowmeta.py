"""What a unigap-built dataset carries besides its rows: one reader and one writer for each.

* **Row metadata**: every row a builder (or replay) writes holds, under
  :data:`META_KEY`, the facts the curriculum sampler orders it by: its prompt,
  the row's own image (the row's identity), the prompt's difficulty label and
  self-scores (acceptance, mean P(yes)).  :func:`row_meta` writes it,
  :func:`read_row_meta` reads and checks it.
* **The discard pool** (``discard_pool.jsonl``): prompts with no accepted
  candidate, one per line; :func:`pool_entry` writes an entry, :func:`load_pool`
  reads the file (errors name ``file:line``), :func:`meta_from_pool` turns an
  entry into the metadata of a row replay adds.
* **Replay defaults** (``manifest.json``'s ``replay_defaults``): the self-play
  run's judge and sampling settings that C-SFT replay reuses;
  :func:`replay_defaults` writes them, :func:`read_replay_defaults` reads them.

The rows themselves are the host's format (see ``unigap.host``); this module
never looks inside them beyond the arguments it is handed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import UnigapError
from .jsonl import parse_object

#: the key of the curriculum metadata inside each row
META_KEY = "unigap"
POOL_FILE = "discard_pool.jsonl"
MANIFEST_FILE = "manifest.json"
#: replay settings that are not generation parameters (those come from the model's family)
REPLAY_BASE_KEYS = ("num_candidates", "judge_threshold", "judge_question", "seed")
#: the replay settings a run's configuration holds besides its family's generation parameters
RUN_REPLAY_KEYS = ("num_candidates", "seed")


class RowMetaError(UnigapError):
    """Row metadata, a discard pool or replay defaults that cannot be used (the message names the item)."""


# ----------------------------------------------------------------------------- row metadata
@dataclass(frozen=True)
class RowMeta:
    prompt_id: str
    prompt: str
    difficulty: str | None
    acceptance: float
    mean_p_yes: float
    where: str


def row_meta(
    *,
    prompt_id: str,
    prompt: str,
    image: str,
    difficulty: Any,
    category: Any,
    acceptance: float,
    mean_p_yes: float,
    p_yes: float,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata of one row (keyed by the row's own ``image``), in its on-disk key order."""
    return {
        "prompt_id": prompt_id,
        "prompt": prompt,
        "image": image,
        "difficulty": difficulty,
        "category": category,
        "acceptance": acceptance,
        "mean_p_yes": mean_p_yes,
        "p_yes": p_yes,
        **extra,
    }


def read_row_meta(meta: Any, first_image: Any, user_text: str, where: str,
                  error: type[UnigapError] = RowMetaError) -> RowMeta:
    """Check a row's metadata against the row (its first image and its user text) and read it."""
    if not isinstance(meta, dict):
        raise error(f"{where}: '{META_KEY}' must be an object")
    if not isinstance(first_image, str):
        raise error(f"{where}: a row with curriculum metadata must list its images")
    if meta.get("image") != first_image:
        raise error(
            f"{where}: curriculum metadata is for image {meta.get('image')!r} but the row's image is "
            f"{first_image!r}; metadata and rows are misaligned"
        )
    prompt = meta.get("prompt")
    if not isinstance(prompt, str) or prompt not in user_text:
        raise error(
            f"{where}: curriculum metadata is for prompt {prompt!r}, which is not this row's prompt; "
            "metadata and rows are misaligned"
        )
    try:
        return RowMeta(
            prompt_id=str(meta["prompt_id"]),
            prompt=prompt,
            difficulty=None if meta.get("difficulty") is None else str(meta["difficulty"]),
            acceptance=float(meta["acceptance"]),
            mean_p_yes=float(meta["mean_p_yes"]),
            where=where,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise error(f"{where}: bad curriculum metadata ({type(err).__name__}: {err})") from None


# ----------------------------------------------------------------------------- the discard pool
def pool_entry(
    *,
    prompt_index: int,
    prompt_id: str,
    prompt: str,
    difficulty: Any,
    category: Any,
    p_yes: Iterable[float],
    run: int | None = None,
) -> dict[str, Any]:
    """One discard-pool line: a prompt none of whose candidates was accepted."""
    values = list(p_yes)
    entry = {
        "prompt_index": prompt_index,
        "prompt_id": prompt_id,
        "prompt": prompt,
        "difficulty": difficulty,
        "category": category,
        "best_p_yes": max(values),
        "mean_p_yes": sum(values) / len(values),
        "acceptance": 0.0,
        "num_candidates": len(values),
    }
    if run is not None:
        entry["run"] = run
    return entry


def load_pool(path: Path, error: type[UnigapError] = RowMetaError) -> list[dict[str, Any]]:
    """The discard pool (one prompt per line); errors name file:line."""
    entries, seen = [], {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            entry = parse_object(line, where, error, "pool entry")
            prompt = entry.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise error(f"{where}: 'prompt' must be a non-empty string")
            pid = entry.get("prompt_id", str(number))
            if isinstance(pid, bool) or not isinstance(pid, (str, int)):
                raise error(f"{where}: 'prompt_id' must be a string or an integer")
            pid = str(pid)
            if pid in seen:
                raise error(f"{where}: prompt_id {pid!r} is already used at line {seen[pid]}")
            seen[pid] = number
            entries.append({**entry, "prompt_id": pid, "prompt": prompt.strip()})
    return entries


def meta_from_pool(entry: dict[str, Any], where: str) -> RowMeta:
    """Curriculum metadata of a row added by replay (its prompt's self-score in the original run)."""
    return RowMeta(
        prompt_id=str(entry["prompt_id"]),
        prompt=entry["prompt"],
        difficulty=None if entry.get("difficulty") is None else str(entry["difficulty"]),
        acceptance=float(entry.get("acceptance", 0.0)),
        mean_p_yes=float(pool_mean_p_yes(entry)),
        where=where,
    )


def pool_mean_p_yes(entry: Mapping[str, Any]) -> float:
    return float(entry.get("mean_p_yes", entry.get("best_p_yes", 0.0)))


# ----------------------------------------------------------------------------- replay defaults
def replay_defaults(run_config: Mapping[str, Any], sampling_keys: Iterable[str], question: str,
                    threshold: float) -> dict[str, Any]:
    """The settings replay reuses: the run's candidates, seed and generation parameters, its judge."""
    keys = list(RUN_REPLAY_KEYS[:1]) + [k for k in sampling_keys if k not in RUN_REPLAY_KEYS] + list(RUN_REPLAY_KEYS[1:])
    out = {key: run_config.get(key) for key in keys}
    out["judge_question"] = question
    out["judge_threshold"] = threshold
    return out


def read_replay_defaults(manifest: Path, error: type[UnigapError] = RowMetaError) -> dict[str, Any]:
    """``replay_defaults`` of a build's manifest ({} when the file or the entry is missing)."""
    if not manifest.is_file():
        return {}
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("replay_defaults") or {}
    except json.JSONDecodeError as err:
        raise error(f"{manifest}: not valid JSON ({err})") from None
