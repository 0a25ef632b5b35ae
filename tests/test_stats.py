"""unigap.stats: the one nested bootstrap behind `unigap report` and `unigap evidence`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from unigap import stats


def _ragged(rng: np.random.Generator, rates: np.ndarray, max_n: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompts, max_n) 0/1 outcomes of ragged cells (1..max_n samples each) and the counts."""
    counts = rng.integers(1, max_n + 1, size=rates.shape)
    hits = (rng.random(rates.shape + (max_n,)) < rates[..., None]).astype(float)
    hits[np.arange(max_n) >= counts[..., None]] = 0.0  # padding
    return hits, counts


def test_interval_covers_the_truth_at_the_nominal_rate():
    """Prompts drawn from a population (their rates differ), each with its own ragged samples: the 95%
    interval of the pooled rate covers the population rate about 95% of the time, and is about as wide
    as the estimate's real spread says (neither too narrow nor padded)."""
    rng = np.random.default_rng(0)
    truth = 2 / 5  # mean of Beta(2, 3)
    sims, covered, widths, estimates = 200, 0, [], []
    for _ in range(sims):
        rates = rng.beta(2, 3, size=40)
        hits, counts = _ragged(rng, rates, 8)
        value = hits.sum() / counts.sum()
        draws = stats.nested_bootstrap(lambda d, h=hits: d.rate(h), counts, replicates=400, seed=int(rng.integers(1 << 30)))
        lo, hi = stats.percentile_interval(draws)
        covered += lo <= truth <= hi
        widths.append(hi - lo)
        estimates.append(value)
    assert 0.88 <= covered / sims <= 0.995
    # the interval's width matches the spread of the estimate over repeated experiments
    ratio = np.mean(widths) / (2 * 1.96 * np.std(estimates))
    assert 0.8 <= ratio <= 1.35, ratio


def test_a_single_cell_still_varies_and_a_constant_one_does_not():
    mixed = np.array([[1.0, 1.0, 1.0, 0.0]])
    lo, hi = stats.percentile_interval(stats.nested_bootstrap(lambda d: d.rate(mixed), np.array([4])))
    assert lo <= 0.5 and hi == 1.0
    same = np.ones((1, 4))
    assert stats.percentile_interval(stats.nested_bootstrap(lambda d: d.rate(same), np.array([4]))) == [1.0, 1.0]


def test_paired_draws_are_narrower_than_unpaired_on_correlated_data():
    """Two tables that mostly agree sample by sample: gathering both with one Draw (paired) gives a
    difference interval far narrower than two independent bootstraps, and both centre on the truth."""
    rng = np.random.default_rng(1)
    rates = rng.beta(2, 3, size=(3, 30))  # 3 seeds x 30 prompts
    counts = np.full(rates.shape, 8)
    before = (rng.random(rates.shape + (8,)) < rates[..., None]).astype(float)
    after = np.maximum(before, rng.random(before.shape) < 0.1)  # a few more hits, same samples otherwise
    diff = after.mean() - before.mean()
    paired = stats.nested_bootstrap(lambda d: d.rate(after) - d.rate(before), counts, seed=3)
    a = stats.nested_bootstrap(lambda d: d.rate(after), counts, seed=4)
    b = stats.nested_bootstrap(lambda d: d.rate(before), counts, seed=5)
    p_lo, p_hi = stats.percentile_interval(paired)
    u_lo, u_hi = stats.percentile_interval(a - b)
    assert p_lo <= diff <= p_hi and u_lo <= diff <= u_hi
    assert p_lo > 0 and u_lo < 0  # only the paired bootstrap sees the improvement
    assert (p_hi - p_lo) < 0.4 * (u_hi - u_lo)
    # identical tables: the paired difference is exactly zero in every replicate
    assert stats.percentile_interval(stats.nested_bootstrap(lambda d: d.rate(before) - d.rate(before), counts)) == [0.0, 0.0]


def test_groups_are_crossed_and_samples_stay_inside_their_cell():
    """One draw of prompts serves every drawn seed; sample indices never leave a cell's real samples."""
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 6, size=(3, 7))
    seen = []

    def statistic(d: stats.Draw) -> np.ndarray:
        seen.append(d)
        assert d.groups[0].shape == (d.replicates, 3, 1) and d.groups[1].shape == (d.replicates, 1, 7)
        drawn = d.cells(counts)
        assert (d.valid.sum(-1) == drawn).all()
        assert (d.sample[d.valid] < np.broadcast_to(drawn[..., None], d.sample.shape)[d.valid]).all()
        # each value encodes its own (seed, prompt, sample): the gathered cell is the drawn one
        codes = np.arange(3)[:, None, None] * 1000 + np.arange(7)[None, :, None] * 10 + np.arange(5)[None, None, :]
        taken = d.take(codes)
        seed_of, prompt_of, sample_of = taken // 1000, taken // 10 % 100, taken % 10
        assert (seed_of == np.broadcast_to(d.groups[0][..., None], taken.shape)).all()
        assert (prompt_of == np.broadcast_to(d.groups[1][..., None], taken.shape)).all()
        assert (sample_of == d.sample).all()
        return d.valid.sum((1, 2, 3)).astype(float)

    totals = stats.nested_bootstrap(statistic, counts, replicates=300, budget=500)
    assert len(seen) > 1 and totals.shape == (300,)  # several chunks, concatenated
    assert totals.std() > 0  # the number of samples varies with the drawn cells


def test_several_counts_share_the_group_draw_and_draw_their_samples_apiece():
    counts_a, counts_b = np.array([3, 1, 4]), np.array([2, 2, 2])

    def statistic(a: stats.Draw, b: stats.Draw):
        assert all(x is y for x, y in zip(a.groups, b.groups))
        assert (a.valid.sum(-1) == a.cells(counts_a)).all() and (b.valid.sum(-1) == b.cells(counts_b)).all()
        return {"a": a.valid.sum((1, 2)), "b": b.valid.sum((1, 2))}

    out = stats.nested_bootstrap(statistic, counts_a, counts_b, replicates=50)
    assert set(out) == {"a", "b"} and out["b"].tolist() == [6] * 50
    with pytest.raises(ValueError, match="one shape"):
        stats.nested_bootstrap(statistic, counts_a, np.array([1, 2]))


def test_seeded_and_reproducible():
    rng = np.random.default_rng(3)
    hits, counts = _ragged(rng, rng.random(12), 5)
    one = stats.nested_bootstrap(lambda d: d.rate(hits), counts, seed=9)
    assert np.array_equal(one, stats.nested_bootstrap(lambda d: d.rate(hits), counts, seed=9))
    assert not np.array_equal(one, stats.nested_bootstrap(lambda d: d.rate(hits), counts, seed=10))


def test_rate_over_a_subset_and_empty_groups():
    den = np.array([[1.0, 1.0, 0.0]])  # the third sample is not counted (e.g. not a rejected image)
    num = np.array([[1.0, 0.0, 0.0]])  # of the counted ones, the first is a hit
    draws = stats.nested_bootstrap(lambda d: d.rate(num, den), np.array([3]), replicates=500)
    found = np.unique(draws[~np.isnan(draws)])
    assert np.allclose(found, [0, 1 / 3, 1 / 2, 2 / 3, 1])  # hits / counted among 3 drawn samples
    assert np.isnan(draws).any()  # all three draws the uncounted sample
    empty = stats.nested_bootstrap(lambda d: d.rate(np.zeros((2, 0, 1))), np.zeros((2, 0), dtype=int), replicates=5)
    assert np.isnan(empty).all()
    assert all(math.isnan(x) for x in stats.percentile_interval(empty))


def test_percentile_interval():
    values = np.arange(101, dtype=float)
    assert stats.percentile_interval(values) == [2.5, 97.5]
    assert stats.percentile_interval(values, level=0.5) == [25.0, 75.0]
    assert stats.percentile_interval(np.append(values, np.nan)) == [2.5, 97.5]
    assert stats.excludes([0.1, 0.3]) and stats.excludes([-0.3, -0.1]) and not stats.excludes([-0.1, 0.1])
