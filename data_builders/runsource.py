"""Reading self-play runs for the builders: streamed, validated, grouped by prompt.

Records are read line by line and handed out one prompt at a time (a run
lists the candidates of a prompt consecutively), so memory does not grow with
the size of the run.  Every check names the record (``file:line``):

* the record carries the keys of :data:`unigap.runs.RECORD_KEYS` with sane types;
* it was made by the run's model and configuration (fingerprints), which also
  catches records pasted from another run;
* ``accepted`` agrees with ``p_yes >= judge_threshold`` of the run;
* its prompt's records are consecutive and its candidates distinct;
* its image and codes paths stay inside the run directory (checked lexically
  for every record; files that a build uses are also checked on disk, symlinks
  resolved, and verified: PNG chunks and CRCs, codes length and range).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..codes import GenImageError, check_png, load_codes
from ..runs import RunError, is_complete, parse_record, read_meta, record_files
from .output import BuildError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Candidate:
    """One record, with where it came from (``file:line``)."""

    where: str
    record: dict[str, Any]

    @property
    def p(self) -> float:
        return self.record["p_yes"]

    @property
    def index(self) -> int:
        return self.record["candidate"]


@dataclass
class PromptGroup:
    """All candidates of one prompt, in file order."""

    run: RunSource
    prompt_index: int
    candidates: list[Candidate]

    @property
    def first(self) -> dict[str, Any]:
        return self.candidates[0].record

    @property
    def difficulty(self) -> str:
        value = self.first.get("difficulty")
        return "unspecified" if value is None else str(value)


def _spec_of(meta: dict[str, Any], where: str) -> SimpleNamespace:
    spec = meta.get("spec")
    if not isinstance(spec, dict):
        raise BuildError(f"{where} has no 'spec' (the model's image size, codes per image, codebook size)")
    values = {}
    for key in ("num_image_tokens", "codebook_size", "image_size"):
        value = spec.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BuildError(f"{where}: spec.{key} must be a positive integer, got {value!r}")
        values[key] = value
    return SimpleNamespace(model_type=spec.get("model_type"), **values)


@dataclass
class RunSource:
    """One self-play run directory, opened for reading."""

    path: Path
    meta: dict[str, Any]
    spec: SimpleNamespace
    threshold: float
    question: str
    complete: bool
    root: str = ""
    records_sha256: str = ""
    num_records: int = 0
    _dirs: dict[str, bool] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, run_dir: str | os.PathLike, allow_partial: bool = False) -> RunSource:
        path = Path(run_dir)
        if not path.is_dir():
            raise BuildError(f"run directory {path} does not exist")
        meta = read_meta(path)
        where = str(path / "run.json")
        config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        threshold = config.get("judge_threshold")
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
            raise BuildError(f"{where}: config.judge_threshold must be a number in [0, 1], got {threshold!r}")
        question = config.get("judge_question")
        if not isinstance(question, str) or "{prompt}" not in question:
            raise BuildError(f"{where}: config.judge_question must be a template with '{{prompt}}', got {question!r}")
        for key in ("model_fingerprint", "config_fingerprint"):
            if not isinstance(meta.get(key), str) or not meta[key]:
                raise BuildError(f"{where}: no {key}")
        complete = is_complete(path)
        record_files(path, allow_partial)  # an unfinished run without allow_partial: RunIncompleteError says what to do
        return cls(
            path=path,
            meta=meta,
            spec=_spec_of(meta, where),
            threshold=float(threshold),
            question=question,
            complete=complete,
            root=os.path.realpath(path),
        )

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this run (call after reading it)."""
        return {
            "run_dir": str(self.path.resolve()),
            "complete": self.complete,
            "config_fingerprint": self.meta["config_fingerprint"],
            "model_fingerprint": self.meta["model_fingerprint"],
            "unigap_version": self.meta.get("unigap_version"),
            "model_name_or_path": (self.meta.get("config") or {}).get("model_name_or_path"),
            "adapter_name_or_path": (self.meta.get("config") or {}).get("adapter_name_or_path"),
            "judge_threshold": self.threshold,
            "judge_question": self.question,
            "spec": vars(self.spec),
            "records": self.num_records,
            "records_sha256": self.records_sha256,
        }

    # ------------------------------------------------------------------ records
    def _check(self, record: dict[str, Any], where: str) -> None:
        meta = self.meta
        if record["model_fingerprint"] != meta["model_fingerprint"]:
            raise BuildError(
                f"{where}: record made by model {record['model_fingerprint']!r}, but the run {self.path} is for model "
                f"{meta['model_fingerprint']!r}; records of different runs / models are mixed"
            )
        if record["config_fingerprint"] != meta["config_fingerprint"]:
            raise BuildError(
                f"{where}: record has config_fingerprint {record['config_fingerprint']!r}, but the run {self.path} has "
                f"{meta['config_fingerprint']!r}; records of different runs are mixed"
            )
        for key in ("prompt_index", "candidate"):
            value = record[key]
            if type(value) is not int or value < 0:
                raise BuildError(f"{where}: {key} must be a non-negative integer, got {value!r}")
        p = record["p_yes"]
        if type(p) not in (float, int) or not 0.0 <= p <= 1.0:
            raise BuildError(f"{where}: p_yes must be a number in [0, 1], got {p!r}")
        accepted = record["accepted"]
        if type(accepted) is not bool:
            raise BuildError(f"{where}: accepted must be true or false, got {accepted!r}")
        if accepted != (p >= self.threshold):
            raise BuildError(
                f"{where}: accepted={str(accepted).lower()} disagrees with p_yes={p} and the run's "
                f"judge_threshold={self.threshold}"
            )
        prompt = record["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise BuildError(f"{where}: prompt must be a non-empty string, got {prompt!r}")
        for key in ("image", "codes"):
            rel = record[key]
            if type(rel) is not str or not rel or rel[0] == "/":
                raise BuildError(f"{where}: {key} {rel!r} must be a relative path inside the run directory {self.path}")
            if ".." in rel:  # rare: look closer
                norm = os.path.normpath(rel)
                if norm == ".." or norm.startswith(".." + os.sep):
                    raise BuildError(f"{where}: {key} {rel!r} points outside the run directory {self.path}")

    def groups(self) -> Iterator[PromptGroup]:
        """The run's prompts, one :class:`PromptGroup` at a time (streamed)."""
        digest = hashlib.sha256()
        previous = -1
        current: list[Candidate] = []
        seen: set[int] = set()
        count = 0
        for path in record_files(self.path, allow_partial=True):
            with open(path, "rb") as handle:
                for number, raw in enumerate(handle, 1):
                    digest.update(raw)
                    if not raw.strip():
                        continue
                    where = f"{path}:{number}"
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        raise BuildError(f"{where}: not valid UTF-8") from None
                    try:
                        record = parse_record(line, where)
                    except RunError as err:
                        raise BuildError(str(err)) from None
                    self._check(record, where)
                    count += 1
                    index = record["prompt_index"]
                    if index != previous:
                        if index < previous:
                            raise BuildError(
                                f"{where}: prompt_index {index} after {previous}; the records of a run must be in "
                                "prompt order with each prompt's candidates together"
                            )
                        if current:
                            yield PromptGroup(self, previous, current)
                        current, seen, previous = [], set(), index
                    if record["candidate"] in seen:
                        raise BuildError(f"{where}: candidate {record['candidate']} of prompt {index} appears twice")
                    seen.add(record["candidate"])
                    current.append(Candidate(where, record))
        if current:
            yield PromptGroup(self, previous, current)
        self.records_sha256 = digest.hexdigest()
        self.num_records = count

    # ------------------------------------------------------------------ files
    def source_file(self, cand: Candidate, key: str) -> str:
        """The absolute path of the record's ``image`` / ``codes`` file, checked to exist inside the run."""
        rel = os.path.normpath(cand.record[key])
        path = os.path.join(self.root, rel)
        parent = os.path.dirname(path)
        inside = self._dirs.get(parent)
        if inside is None:
            real = os.path.realpath(parent)
            inside = self._dirs[parent] = real == self.root or real.startswith(self.root + os.sep)
        if not inside:
            raise BuildError(f"{cand.where}: {key} {cand.record[key]!r} resolves outside the run directory {self.path}")
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            what = "image file" if key == "image" else "codes file"
            raise BuildError(f"{cand.where}: {what} {path} does not exist") from None
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(path)
            if not real.startswith(self.root + os.sep):
                raise BuildError(
                    f"{cand.where}: {key} {cand.record[key]!r} is a symlink that resolves outside the run directory "
                    f"{self.path}"
                )
        return path


def check_png_fast(path: str) -> None:
    """Same verdict as :func:`unigap.codes.check_png` for PNG files, without PIL: chunk lengths and CRCs up to IEND."""
    try:
        with open(path, "rb") as handle:
            data = memoryview(handle.read())
    except FileNotFoundError:
        raise GenImageError(f"image file {path} does not exist") from None
    except OSError as err:
        raise GenImageError(f"image file {path} is not readable ({err})") from None
    problem = None
    if bytes(data[:8]) != PNG_SIGNATURE:
        problem = "it is not a PNG (bad signature)"
    else:
        pos, first, size = 8, True, len(data)
        while problem is None:
            if pos + 12 > size:
                problem = "it is truncated (no IEND chunk)"
                break
            length = int.from_bytes(data[pos : pos + 4], "big")
            kind = bytes(data[pos + 4 : pos + 8])
            end = pos + 12 + length
            if end > size:
                problem = f"it is truncated inside a {kind!r} chunk"
                break
            if zlib.crc32(data[pos + 4 : pos + 8 + length]) != int.from_bytes(data[end - 4 : end], "big"):
                problem = f"CRC mismatch in a {kind!r} chunk (corrupt)"
                break
            if first and kind != b"IHDR":
                problem = "its first chunk is not IHDR"
                break
            if kind == b"IEND":
                return
            first, pos = False, end
    try:  # PIL has the last word on anything unusual (the host checks with PIL too)
        check_png(path)
    except GenImageError:
        raise GenImageError(f"image file {path} is not a readable PNG: {problem}") from None


class CodesChecker:
    """Fast check of ``.codes.npy`` files as written by :func:`unigap.codes.save_gen_image`.

    A file with the exact int32 header for the model's length is read directly;
    anything else goes through :func:`unigap.codes.load_codes`, which accepts any
    integer array of the right length and range and words the error otherwise.
    """

    def __init__(self, spec: Any):
        self.spec = spec
        buffer = io.BytesIO()
        np.save(buffer, np.zeros(spec.num_image_tokens, dtype=np.int32), allow_pickle=False)
        whole = buffer.getvalue()
        self.size = len(whole)
        self.header = whole[: self.size - 4 * spec.num_image_tokens]

    def __call__(self, path: str) -> None:
        try:
            with open(path, "rb") as handle:
                data = handle.read(self.size + 1)
        except FileNotFoundError:
            raise GenImageError(f"codes file {path} does not exist") from None
        except OSError as err:
            raise GenImageError(f"codes file {path} is not readable ({err})") from None
        if len(data) == self.size and data.startswith(self.header):
            # read as unsigned: a negative code becomes huge, so one max() checks both ends of the range
            if np.frombuffer(data, dtype="<u4", offset=len(self.header)).max() < self.spec.codebook_size:
                return
        load_codes(path, self.spec)  # the precise error, or a different but valid integer layout
