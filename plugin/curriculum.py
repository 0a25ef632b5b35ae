"""Curriculum sampling: training rows drawn from easy to hard, keyed by each row's own identity.

Where the difficulty comes from
-------------------------------
The host tokenizes datasets and keeps only its own columns, drops invalid rows
and shuffles for ``val_size``, so a row's position in the training set says
nothing about the row in the file.  What survives is the row's ``images`` list
(absolute paths).  Rows written by ``unigap build`` carry a ``unigap`` object
(prompt id and text, the row's own image path, difficulty label, and the
prompt's self-score in the self-play run: :mod:`unigap.rowmeta`); the host
reads those files directly (``unigap.host.llamafactory.datasets.read_metadata``), checks each object against its own row (same image, prompt
inside the user turn), and keys it by the resolved path of the row's first
image.  :func:`align` then looks up every *tokenized* row by that key, and for
generation rows also checks that the image codes inside the token stream are the
codes of that image file.  A row that cannot be matched is an error that names
it, never a silent guess.

Pacing
------
Rows are sorted by difficulty (ties broken by a seeded hash of the row index).
At training progress ``t`` (share of all samples drawn so far) the first
``share(t)`` of that order may be drawn:

* ``linear``: ``start + (1 - start) * t / full_at``
* ``sqrt``: ``sqrt(start**2 + (1 - start**2) * t / full_at)`` (faster early growth)
* ``step``: difficulty stage ``k`` of ``K`` opens at ``t = k / (K - 1) * full_at``
* ``order``: no pacing; every epoch runs through its rows from easy to hard
* ``none``: no difficulty; a seeded shuffle (used when only replay is on)

While the share is below 1 every position draws uniformly from what is
available; an epoch that lies wholly past ``full_at`` is a seeded permutation.
An epoch is always ``epoch_len`` samples (the size of the original training
set), so the host's step count and learning-rate schedule stay as planned
when replay adds rows.  The order depends only on the seed, the epoch and the
rows, so every DDP rank computes the same order (the host's data loader then
gives each rank its own batches of it); it is computed once per epoch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .errors import UnigapError
from .rowmeta import RowMeta
from .report import ordered_levels

SOURCES = ("none", "label", "acceptance", "p_yes")
PACINGS = ("linear", "sqrt", "step", "order", "none")
UNLABELED = ("error", "easiest", "hardest")


class CurriculumError(UnigapError):
    """Curriculum settings or metadata that cannot be used (the message names the item)."""


@dataclass(frozen=True)
class CurriculumConfig:
    difficulty: str = "none"
    pacing: str = "linear"
    start: float = 0.2
    full_at: float = 0.5
    levels: tuple[str, ...] = ()
    stages: int = 3
    unlabeled: str = "error"
    seed: int = 42

    def validate(self) -> None:
        def bad(key: str, value: Any, allowed: str) -> CurriculumError:
            return CurriculumError(f"curriculum_{key} must be {allowed}, got {value!r}")

        if self.difficulty not in SOURCES:
            raise bad("difficulty", self.difficulty, " / ".join(SOURCES))
        if self.pacing not in PACINGS:
            raise bad("pacing", self.pacing, " / ".join(PACINGS))
        if self.unlabeled not in UNLABELED:
            raise bad("unlabeled", self.unlabeled, " / ".join(UNLABELED))
        if not 0 < self.start <= 1:
            raise bad("start", self.start, "in (0, 1]")
        if not 0 < self.full_at <= 1:
            raise bad("full_at", self.full_at, "in (0, 1]")
        if self.stages < 2:
            raise bad("stages", self.stages, ">= 2")
        if self.difficulty == "none" and self.pacing not in ("none", "linear"):
            raise CurriculumError(
                f"curriculum_pacing: {self.pacing} needs a difficulty; set curriculum_difficulty to "
                "label, acceptance or p_yes"
            )

    @property
    def active(self) -> bool:
        return self.difficulty != "none"

    @property
    def effective_pacing(self) -> str:
        return "none" if self.difficulty == "none" else self.pacing


def parse_levels(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        raise CurriculumError(f"curriculum_levels must be a comma-separated list, got {value!r}")
    if any(not v for v in items) or len(set(items)) != len(items):
        raise CurriculumError(f"curriculum_levels must list distinct, non-empty labels, got {value!r}")
    return tuple(items)


# ----------------------------------------------------------------------------- pacing
def share(pacing: str, t: np.ndarray | float, start: float, full_at: float, num_stages: int = 1) -> np.ndarray:
    """Share of the sorted rows that may be drawn at progress ``t`` (0 = start, 1 = end of training)."""
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, None)
    x = np.minimum(t / full_at, 1.0)
    if pacing == "linear":
        return np.minimum(1.0, start + (1.0 - start) * x)
    if pacing == "sqrt":
        return np.minimum(1.0, np.sqrt(start**2 + (1.0 - start**2) * x))
    if pacing == "step":
        # the stage index open at t; the caller turns stages into row counts
        return np.minimum(np.floor(x * (num_stages - 1) + 1e-9) + 1, num_stages) / num_stages
    return np.ones_like(x)


def _tiebreak(count: int, seed: int) -> np.ndarray:
    """A seeded pseudo-random key per row index, independent of how many rows there are."""
    with np.errstate(over="ignore"):
        x = np.arange(count, dtype=np.uint64) + np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


class CurriculumSampler(torch.utils.data.Sampler[int]):
    """Indices of one epoch, from ``scores`` (lower = easier) and ``stages`` (0 = easiest stage)."""

    def __init__(
        self,
        scores: Sequence[float],
        stages: Sequence[int],
        *,
        pacing: str,
        start: float,
        full_at: float,
        epoch_len: int,
        total_samples: int,
        seed: int,
    ) -> None:
        self.pacing = pacing
        self.start = start
        self.full_at = full_at
        self.epoch_len = int(epoch_len)
        self.total_samples = max(int(total_samples), 1)
        self.seed = int(seed)
        self.epoch = 0
        self.scores = np.asarray(scores, dtype=np.float64)
        self.stages = np.asarray(stages, dtype=np.int64)
        self._cache: tuple[int, int, np.ndarray] | None = None
        self.history: list[tuple[int, np.ndarray]] = []  # (epoch, indices), only when record is on
        self.record = False
        self._sort()

    # -- rows
    @property
    def num_rows(self) -> int:
        return int(self.scores.size)

    @property
    def num_stages(self) -> int:
        return int(self.stages.max()) + 1 if self.stages.size else 1

    def _sort(self) -> None:
        self.order = np.lexsort((_tiebreak(self.num_rows, self.seed), self.scores))
        # rows open at each stage: stage k opens every row of stage <= k
        counts = np.bincount(self.stages, minlength=self.num_stages)
        self._stage_open = np.cumsum(counts)
        self._cache = None

    def set_rows(self, scores: Sequence[float], stages: Sequence[int]) -> None:
        """The rows after replay appended some (same order of the old ones); later epochs may draw them."""
        self.scores = np.asarray(scores, dtype=np.float64)
        self.stages = np.asarray(stages, dtype=np.int64)
        self._sort()

    # -- pacing
    def available(self, t: np.ndarray | float) -> np.ndarray:
        """How many of the sorted rows may be drawn at progress ``t``."""
        n = self.num_rows
        if self.pacing == "step":
            level = share("step", t, self.start, self.full_at, self.num_stages) * self.num_stages
            return self._stage_open[np.asarray(level, dtype=np.int64) - 1]
        s = share(self.pacing, t, self.start, self.full_at)
        return np.clip(np.ceil(s * n - 1e-9), 1, n).astype(np.int64)

    def share_at(self, t: float) -> float:
        return float(self.available(t)) / max(self.num_rows, 1)

    def stage_at(self, t: float) -> int:
        """Hardest stage open at progress ``t``."""
        m = int(self.available(t))
        return int(self.stages[self.order[:m]].max()) if m else 0

    # -- sampler protocol
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.epoch_len

    def epoch_indices(self, epoch: int) -> np.ndarray:
        key = (epoch, self.num_rows)
        if self._cache is not None and self._cache[:2] == key:
            return self._cache[2]
        rng = np.random.default_rng([self.seed, epoch, 0x5EED])
        n, m_rows = self.epoch_len, self.num_rows
        pos = epoch * n + np.arange(n, dtype=np.float64)
        avail = self.available(pos / self.total_samples)
        if self.pacing == "order":
            subset = rng.permutation(m_rows)[:n] if m_rows > n else np.arange(m_rows)
            within = rng.random(m_rows)
            idx = subset[np.lexsort((within[subset], self.scores[subset]))]
            idx = np.resize(idx, n)
        elif self.pacing == "none" or int(avail.min()) >= m_rows:
            idx = np.resize(rng.permutation(m_rows), n)
        else:
            idx = self.order[np.floor(rng.random(n) * avail).astype(np.int64)]
        self._cache = (epoch, m_rows, idx)
        if self.record:
            self.history.append((epoch, idx.copy()))
        return idx

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices(self.epoch).tolist())


# ----------------------------------------------------------------------------- metadata
def path_key(path: str) -> str:
    # both sides are built the host's way (media_dir joined with the row's path): no need to follow links
    return os.path.normpath(os.path.abspath(path))


@dataclass
class Alignment:
    """Per tokenized row: its metadata (None = unlabeled) and where it came from."""

    metas: list[RowMeta | None]
    unlabeled: list[int] = field(default_factory=list)


def align(
    images_column: Sequence[Any],
    ids_column: Sequence[Sequence[int]] | None,
    table: dict[str, RowMeta],
    *,
    gen_codes: Any = None,
    start: int = 0,
) -> Alignment:
    """Match tokenized rows to metadata by their own first image; check generation codes when given.

    ``gen_codes(ids, image_path)`` returns a message when the image codes in a
    row's tokens are not the codes of that image file, else None.
    """
    metas: list[RowMeta | None] = []
    unlabeled: list[int] = []
    for i, images in enumerate(images_column):
        path = images[0] if images else None
        meta = table.get(path_key(path)) if isinstance(path, str) else None
        if meta is None:
            unlabeled.append(start + i)
        elif gen_codes is not None and ids_column is not None and _verify(start + i):
            problem = gen_codes(ids_column[i], path)
            if problem:
                raise CurriculumError(
                    f"training row {start + i} (image {path}, metadata {meta.where}): {problem}; the tokenized row is not "
                    "the row the metadata describes"
                )
        metas.append(meta)
    return Alignment(metas, unlabeled)


#: rows whose image codes are compared with their file: all of the first VERIFY_ALL, then one in VERIFY_EVERY
VERIFY_ALL = 20_000
VERIFY_EVERY = 10


def _verify(row: int) -> bool:
    return row < VERIFY_ALL or row % VERIFY_EVERY == 0


def difficulty_of(metas: Sequence[RowMeta | None], config: CurriculumConfig, names: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(scores, stages, stage names) of each row; lower score = easier."""
    n = len(metas)
    missing = [i for i, m in enumerate(metas) if m is None]
    if missing and config.unlabeled == "error":
        raise CurriculumError(
            f"{len(missing)} of {n} training rows have no curriculum metadata (first: row {missing[0]}"
            + (f"; datasets without metadata: {', '.join(names)}" if names else "")
            + "). Train on datasets written by `unigap build`, or set curriculum_unlabeled: easiest / hardest"
        )
    scores = np.zeros(n, dtype=np.float64)
    if config.difficulty == "label":
        labels = [m.difficulty for m in metas if m is not None]
        if any(label is None for label in labels):
            first = next(m for m in metas if m is not None and m.difficulty is None)
            raise CurriculumError(
                f"{first.where}: prompt {first.prompt_id!r} has no difficulty label; curriculum_difficulty: label "
                "needs one for every prompt (or use acceptance / p_yes)"
            )
        levels = list(config.levels) or ordered_levels([str(x) for x in labels])
        unknown = sorted(set(labels) - set(levels))
        if unknown:
            raise CurriculumError(f"difficulty label(s) {unknown} are not in curriculum_levels {list(levels)}")
        rank = {name: k for k, name in enumerate(levels)}
        for i, m in enumerate(metas):
            if m is not None:
                scores[i] = rank[m.difficulty]
        stage_names = list(levels)
        stages = scores.astype(np.int64).copy()
    else:
        for i, m in enumerate(metas):
            if m is not None:
                scores[i] = 1.0 - (m.acceptance if config.difficulty == "acceptance" else m.mean_p_yes)
        labelled = np.array([m is not None for m in metas])
        stages = np.zeros(n, dtype=np.int64)
        if labelled.any():
            k = config.stages
            ranks = np.argsort(np.argsort(scores[labelled], kind="stable"), kind="stable")
            stages[labelled] = np.minimum(ranks * k // max(int(labelled.sum()), 1), k - 1)
        stage_names = [f"stage {k + 1}" for k in range(config.stages)]
    if missing:
        if config.unlabeled == "easiest":
            scores[missing] = -math.inf
            stages[missing] = 0
        else:
            scores[missing] = math.inf
            stages[missing] = len(stage_names) - 1
    return scores, stages, stage_names
