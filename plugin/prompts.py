"""Prompt sets for self-play: a JSONL file, a text file, or a ``datasets`` dataset.

Every prompt gets a stable ``id`` (given, or its line / row number), which
seeds its candidates: a prompt draws the same images whatever its position.
Errors name the line (or row) and never leave anything behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UnigapError
from .jsonl import parse_object


class PromptError(UnigapError):
    """A prompt file or dataset that cannot be used, with the offending line / row named."""


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    difficulty: str | None = None
    category: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.text, "difficulty": self.difficulty, "category": self.category}


def _label(value: Any, where: str, key: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PromptError(f"{where}: '{key}' must be a string or a number, got {type(value).__name__}")
    text = str(value).strip()
    return text or None


def _make(where: str, default_id: str, text: Any, pid: Any, difficulty: Any, category: Any) -> Prompt:
    if text is None:
        raise PromptError(f"{where}: no 'prompt'")
    if not isinstance(text, str):
        raise PromptError(f"{where}: 'prompt' must be a string, got {type(text).__name__}")
    if not text.strip():
        raise PromptError(f"{where}: the prompt is empty or whitespace")
    if pid is None:
        pid = default_id
    elif isinstance(pid, bool) or not isinstance(pid, (str, int)):
        raise PromptError(f"{where}: 'id' must be a string or an integer, got {type(pid).__name__}")
    pid = str(pid)
    if not pid.strip():
        raise PromptError(f"{where}: the id is empty")
    return Prompt(pid, text.strip(), _label(difficulty, where, "difficulty"), _label(category, where, "category"))


def _check_unique(prompts: list[Prompt], wheres: list[str]) -> None:
    seen: dict[str, str] = {}
    for prompt, where in zip(prompts, wheres):
        if prompt.id in seen:
            raise PromptError(f"{where}: duplicate id {prompt.id!r} (first used at {seen[prompt.id]})")
        seen[prompt.id] = where


def load_prompt_file(path: str | Path) -> list[Prompt]:
    """JSONL (``prompt``, optional ``id``, ``difficulty``, ``category``) or, for ``.txt``, one prompt per line."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompt file {path} does not exist")
    raw = path.read_bytes()
    prompts: list[Prompt] = []
    wheres: list[str] = []
    text_mode = path.suffix.lower() == ".txt"
    for number, line_bytes in enumerate(raw.split(b"\n"), 1):
        where = f"{path}:{number}"
        try:
            line = line_bytes.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as err:
            raise PromptError(f"{where}: not valid UTF-8 (byte {err.start}: {line_bytes[err.start:err.start + 1]!r})") from None
        if not line.strip():
            continue
        if text_mode:
            prompts.append(_make(where, str(number), line, None, None, None))
        else:
            row = parse_object(line, where, PromptError, "a JSON object with a 'prompt'")
            prompts.append(
                _make(where, str(number), row.get("prompt"), row.get("id"), row.get("difficulty"), row.get("category"))
            )
        wheres.append(where)
    if not prompts:
        raise PromptError(f"prompt file {path} holds no prompts")
    _check_unique(prompts, wheres)
    return prompts


def load_prompt_dataset(
    name: str,
    split: str = "train",
    prompt_column: str = "prompt",
    id_column: str | None = "id",
    difficulty_column: str | None = "difficulty",
    category_column: str | None = "category",
) -> list[Prompt]:
    """A ``datasets`` dataset: a ``save_to_disk`` directory, local data files, or a hub name."""
    import datasets

    try:
        if Path(name).is_dir() and ((Path(name) / "dataset_dict.json").is_file() or (Path(name) / "state.json").is_file()):
            data = datasets.load_from_disk(name)
        else:
            data = datasets.load_dataset(name, split=split)
    except (FileNotFoundError, ValueError, ConnectionError) as err:
        raise PromptError(f"cannot load the prompt dataset {name!r}: {err}") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise PromptError(f"prompt dataset {name!r} has no split {split!r} (splits: {', '.join(data)})")
        data = data[split]
    columns = set(data.column_names)
    if prompt_column not in columns:
        raise PromptError(f"prompt dataset {name!r} has no column {prompt_column!r} (columns: {', '.join(sorted(columns))})")
    get = {k: (c if c in columns else None) for k, c in (("id", id_column), ("d", difficulty_column), ("c", category_column))}
    prompts, wheres = [], []
    for index, row in enumerate(data):
        where = f"{name}[{split}] row {index}"
        prompts.append(
            _make(
                where,
                str(index),
                row[prompt_column],
                row[get["id"]] if get["id"] else None,
                row[get["d"]] if get["d"] else None,
                row[get["c"]] if get["c"] else None,
            )
        )
        wheres.append(where)
    if not prompts:
        raise PromptError(f"prompt dataset {name!r} [{split}] is empty")
    _check_unique(prompts, wheres)
    return prompts
