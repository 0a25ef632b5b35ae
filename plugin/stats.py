"""Statistics of unigap: one nested (hierarchical) percentile bootstrap and its interval.

Both the self-play report (``unigap report``: prompts, then the candidates of each
prompt) and the ShapesWorld evidence (``unigap evidence``: seeds, prompts, then the
samples of each seed and prompt) resample with the code here.

The data of a bootstrap is a table of per-sample values of shape ``(*groups, width)``:

* the leading axes are grouping factors (``(prompts,)`` or ``(seeds, prompts)``);
  each is resampled with replacement, independently of the others (crossed: one
  draw of prompts serves every drawn seed);
* the last axis holds the samples of one cell; cells are ragged, ``counts[cell]``
  of them are real and the rest is padding.  After the groups, every drawn cell's
  own samples are resampled with replacement, so a group of a single cell still
  gets an honest (non-zero) interval.

:func:`nested_bootstrap` draws the indices and hands them, as a :class:`Draw`, to a
statistic the caller writes; the statistic gathers its tables with
:meth:`Draw.take` and returns one value per replicate.  Several tables gathered
with the same :class:`Draw` are paired down to the sample; several ``counts``
arrays share the group draws but draw their samples apiece (paired by group
only).  :func:`percentile_interval` turns the replicates into an interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

REPLICATES = 2000
LEVEL = 0.95
#: gathered elements per chunk of replicates (bounds the memory of one chunk)
BUDGET = 2_000_000


@dataclass(frozen=True)
class Draw:
    """One chunk of bootstrap replicates over a ``(*groups, width)`` table.

    ``groups[a]`` holds the drawn indices of group axis ``a``, shaped to broadcast to
    ``(replicates, *groups)``; ``sample`` the drawn sample index of every drawn cell
    and ``valid`` whether that position is a real sample of it (both
    ``(replicates, *groups, width)``).
    """

    groups: tuple[np.ndarray, ...]
    sample: np.ndarray
    valid: np.ndarray

    @property
    def replicates(self) -> int:
        return int(self.sample.shape[0])

    def cells(self, values: np.ndarray) -> np.ndarray:
        """A per-cell array ``(*groups)`` at the drawn cells: ``(replicates, *groups)``."""
        return np.asarray(values)[self.groups]

    def take(self, values: np.ndarray) -> np.ndarray:
        """A per-sample table ``(*groups, width)`` at the drawn cells and samples:
        ``(replicates, *groups, width)`` (padding positions hold arbitrary real samples;
        mask them with :attr:`valid`)."""
        return np.asarray(values)[tuple(g[..., None] for g in self.groups) + (self.sample,)]

    def total(self, values: np.ndarray) -> np.ndarray:
        """Sum of a per-sample table over the drawn samples of each replicate: ``(replicates,)``."""
        drawn = np.where(self.valid, self.take(values), 0.0)
        return drawn.sum(tuple(range(1, drawn.ndim)))

    def rate(self, num: np.ndarray, den: np.ndarray | None = None) -> np.ndarray:
        """Per replicate: the sum of ``num`` over the drawn samples divided by that of ``den``
        (every sample counts once when ``den`` is None); NaN where nothing is counted."""
        top = self.total(num)
        bottom = self.total(den) if den is not None else self.valid.sum(tuple(range(1, self.valid.ndim)))
        with np.errstate(invalid="ignore", divide="ignore"):
            return top / bottom


def _group_draws(rng: np.random.Generator, sizes: Sequence[int], r: int) -> tuple[np.ndarray, ...]:
    out = []
    for axis, size in enumerate(sizes):
        shape = [r] + [1] * len(sizes)
        shape[axis + 1] = size
        out.append(rng.integers(0, size, size=(r, size)).reshape(shape))
    return tuple(out)


def _sample_draw(rng: np.random.Generator, groups: tuple[np.ndarray, ...], counts: np.ndarray, width: int) -> Draw:
    count = counts[groups]  # (r, *groups)
    sample = np.minimum((rng.random(count.shape + (width,)) * count[..., None]).astype(np.int64), width - 1)
    valid = np.arange(width) < count[..., None]
    return Draw(groups, sample, valid)


def _gather(chunks: list[Any]) -> Any:
    first = chunks[0]
    if isinstance(first, Mapping):
        return {k: np.concatenate([c[k] for c in chunks]) for k in first}
    if isinstance(first, (tuple, list)):
        return [np.concatenate([c[i] for c in chunks]) for i in range(len(first))]
    return np.concatenate(chunks)


def nested_bootstrap(
    statistic: Callable[..., Any],
    *counts: np.ndarray,
    replicates: int = REPLICATES,
    seed: int | np.random.Generator = 0,
    budget: int = BUDGET,
) -> Any:
    """Bootstrap replicates of ``statistic``: group axes resampled, then samples within each drawn cell.

    ``counts`` (one or more integer arrays of one shape, the group axes): the number
    of real samples of each cell; the tables the statistic gathers are
    ``(*counts.shape, width)`` with ``width >= max(counts)``.  ``statistic`` is
    called once per chunk of replicates with one :class:`Draw` per ``counts`` array
    (all drawn from the same group indices) and returns an array of one value per
    replicate, or a tuple / list / mapping of such arrays; the chunks are
    concatenated into the same structure.  ``seed``: an int or a generator; the
    result depends only on it, the inputs and ``replicates``.
    """
    if not counts:
        raise ValueError("nested_bootstrap needs the sample counts of the cells")
    arrays = [np.asarray(c, dtype=np.int64) for c in counts]
    sizes = arrays[0].shape
    if any(a.shape != sizes for a in arrays):
        raise ValueError(f"every counts array must have one shape, got {[a.shape for a in arrays]}")
    if not sizes:
        raise ValueError("counts must have at least one group axis")
    if replicates < 1:
        raise ValueError("replicates must be at least 1")
    widths = [max(1, int(a.max())) if a.size else 1 for a in arrays]  # no groups: every replicate is empty
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    chunk = max(1, budget // max(1, math.prod(sizes) * max(widths)))
    out = []
    for start in range(0, replicates, chunk):
        r = min(chunk, replicates - start)
        groups = _group_draws(rng, sizes, r)
        draws = [_sample_draw(rng, groups, a, w) for a, w in zip(arrays, widths)]
        out.append(statistic(*draws))
    return _gather(out)


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> list[float]:
    """The central ``level`` percentile interval of bootstrap replicates (NaN replicates dropped;
    ``[nan, nan]`` when none is left)."""
    values = np.asarray(values, dtype=float).reshape(-1)
    values = values[~np.isnan(values)]
    if not values.size:
        return [math.nan, math.nan]
    tail = round(50 * (1 - level), 10)  # 2.5 exactly for 95%
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


def excludes(ci: Sequence[float], value: float = 0.0) -> bool:
    """Whether an interval lies entirely on one side of ``value``."""
    return bool(ci[0] > value or ci[1] < value)
