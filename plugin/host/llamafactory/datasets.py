"""unigap's samples as LLaMA-Factory datasets: sharegpt rows and ``dataset_info.json``.

A generation row is an ordinary conversation whose assistant answer is an
image (``<image>`` in the assistant turn); the image file is a PNG with a
``.codes.npy`` sidecar holding its exact codes.  In a DPO row the ``images``
list holds the prompt's images (if any), then the chosen answer's, then the
rejected answer's.  Also here: finding a training run's data files from its
``dataset_info.json`` and reading the rows' curriculum metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from ...errors import UnigapError
from ...fsutil import write_text_atomic
from ...jsonl import parse_object
from ...rowmeta import META_KEY, RowMeta, read_row_meta
from ...samples import DatasetFormat, GenSample, PairSample, Sample, UndSample

INFO_FILE = "dataset_info.json"
IMAGE = "<image>"
TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}


class DatasetFileError(UnigapError):
    """A ``dataset_info.json`` or data file that cannot be read (the message names it)."""


# ----------------------------------------------------------------------------- rows
def gen_sft_row(prompt: str, image: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": IMAGE}],
        "images": [image],
    }


def gen_dpo_row(prompt: str, chosen: str, rejected: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": prompt}],
        "chosen": {"role": "assistant", "content": IMAGE},
        "rejected": {"role": "assistant", "content": IMAGE},
        "images": [chosen, rejected],
    }


def und_sft_row(image: str, question: str, answer: str) -> dict[str, Any]:
    # "<image>\n{question}": the layout unigap's self-judge asks its question in
    return {
        "messages": [{"role": "user", "content": IMAGE + "\n" + question}, {"role": "assistant", "content": answer}],
        "images": [image],
    }


def dataset_info_entry(file_name: str, ranking: bool = False) -> dict[str, Any]:
    columns = {"messages": "messages", "images": "images"}
    if ranking:
        columns.update(chosen="chosen", rejected="rejected")
    entry: dict[str, Any] = {"file_name": file_name, "formatting": "sharegpt", "columns": columns, "tags": dict(TAGS)}
    if ranking:
        entry["ranking"] = True
    return entry


class ShareGPT(DatasetFormat):
    """LLaMA-Factory's sharegpt rows, listed in ``dataset_info.json``."""

    index_file = INFO_FILE

    def render(self, sample: Sample) -> dict[str, Any]:
        if isinstance(sample, GenSample):
            row = gen_sft_row(sample.prompt, sample.image)
        elif isinstance(sample, PairSample):
            row = gen_dpo_row(sample.prompt, sample.chosen, sample.rejected)
        elif isinstance(sample, UndSample):
            row = und_sft_row(sample.image, sample.question, sample.answer)
        else:
            raise TypeError(f"not a unigap sample: {type(sample).__name__}")
        if sample.meta is not None:
            row[META_KEY] = sample.meta
        return row

    def entry(self, file_name: str, ranking: bool = False) -> dict[str, Any]:
        return dataset_info_entry(file_name, ranking=ranking)

    def read_index(self, dataset_dir: Path) -> dict[str, Any]:
        path = Path(dataset_dir) / INFO_FILE
        if not path.exists():
            return {}
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DatasetFileError(f"{path} is not valid JSON ({err}); fix or move it, unigap will not overwrite it") from None
        if not isinstance(info, dict):
            raise DatasetFileError(f"{path} must hold a JSON object (dataset name -> entry), got {type(info).__name__}")
        return info

    def write_index(self, dataset_dir: Path, index: dict[str, Any]) -> None:
        write_text_atomic(Path(dataset_dir) / INFO_FILE, json.dumps(index, indent=2, ensure_ascii=False) + "\n")


FORMAT = ShareGPT()


def render_rows(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    return [FORMAT.render(s) for s in samples]


def write_dataset_folder(folder: Path, name: str, file_name: str, rows: Sequence[dict[str, Any]],
                         ranking: bool = False) -> None:
    """``folder/file_name`` (JSON lines) and a ``dataset_info.json`` naming it ``name`` (both atomic)."""
    write_text_atomic(folder / file_name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    info = {name: dataset_info_entry(file_name, ranking=ranking)}
    write_text_atomic(folder / INFO_FILE, json.dumps(info, indent=2) + "\n")


# ----------------------------------------------------------------------------- a run's data files and metadata
def data_files(dataset_names: Sequence[str], dataset_dir: str) -> tuple[list[tuple[str, Path]], list[str]]:
    """The local data files of each dataset (from the host's ``dataset_info.json``), and the names of
    datasets that are not local files (hub / script datasets: their rows count as unlabeled)."""
    from ...curriculum import CurriculumError

    info_path = Path(dataset_dir) / INFO_FILE
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CurriculumError(f"the curriculum reads {info_path}: {err}") from None
    out, remote = [], []
    for name in dataset_names:
        entry = info.get(name)
        if not isinstance(entry, dict) or "file_name" not in entry:
            remote.append(name)
            continue
        path = Path(dataset_dir) / entry["file_name"]
        if path.is_dir():
            out += [(name, p) for p in sorted(path.iterdir()) if p.suffix in (".json", ".jsonl")]
        else:
            out.append((name, path))
    return out, remote


def _user_text(messages: Any, where: str) -> str:
    from ...curriculum import CurriculumError

    if not isinstance(messages, list):
        raise CurriculumError(f"{where}: 'messages' must be a list")
    texts = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return " ".join(t for t in texts if isinstance(t, str))


def _rows_of(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    from ...curriculum import CurriculumError

    with open(path, encoding="utf-8") as handle:
        head = handle.read(1)
        while head and head.isspace():
            head = handle.read(1)
        handle.seek(0)
        if head == "[":
            try:
                rows = json.load(handle)
            except json.JSONDecodeError as err:
                raise CurriculumError(f"{path}: not valid JSON ({err})") from None
            for i, row in enumerate(rows):
                if not isinstance(row, dict):
                    raise CurriculumError(f"{path}: row {i} is not an object")
                yield f"{path}: row {i}", row
            return
        for number, line in enumerate(handle, 1):
            if line.strip():
                where = f"{path}:{number}"
                yield where, parse_object(line, where, CurriculumError, "row")


def read_metadata(files: Sequence[tuple[str, Path]], media_dir: str) -> tuple[dict[str, RowMeta], list[str]]:
    """Curriculum metadata of every row of ``files`` ((dataset name, data file)), keyed by image path.

    Returns the map and the names of datasets whose rows carry no metadata.
    """
    from ...curriculum import CurriculumError, path_key

    table: dict[str, RowMeta] = {}
    bare: list[str] = []
    for name, path in files:
        found = False
        for where, row in _rows_of(path):
            meta = row.get(META_KEY)
            if meta is None:
                continue
            found = True
            images = row.get("images")
            first = images[0] if isinstance(images, list) and images else None
            if isinstance(meta, dict) and not isinstance(first, str):
                raise CurriculumError(f"{where}: a row with curriculum metadata must list its images")
            text = _user_text(row.get("messages"), where) if isinstance(meta, dict) else ""
            info = read_row_meta(meta, first, text, where, error=CurriculumError)
            full = os.path.join(media_dir, first)
            key = path_key(full if os.path.isfile(full) else first)
            old = table.get(key)
            if old is not None and (old.prompt_id, old.difficulty) != (info.prompt_id, info.difficulty):
                raise CurriculumError(
                    f"{where}: image {first} is also used by {old.where} with another prompt / difficulty "
                    f"({old.prompt_id!r}/{old.difficulty!r} vs {info.prompt_id!r}/{info.difficulty!r})"
                )
            table.setdefault(key, info)
        if not found:
            bare.append(name)
    return table, bare
