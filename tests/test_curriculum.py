"""The curriculum sampler and its metadata, without the host (fast; the host path is in test_curriculum_e2e)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from unigap.curriculum import (
    CurriculumConfig,
    CurriculumError,
    CurriculumSampler,
    align,
    difficulty_of,
    share,
)
from unigap.host.llamafactory.datasets import read_metadata


def test_pacing_schedules():
    t = np.array([0.0, 0.1, 0.25, 0.5, 0.9])
    assert share("linear", t, 0.2, 0.5).tolist() == pytest.approx([0.2, 0.36, 0.6, 1.0, 1.0])
    assert share("sqrt", t, 0.2, 0.5).tolist() == pytest.approx(
        [0.2, math.sqrt(0.04 + 0.96 * 0.2), math.sqrt(0.04 + 0.96 * 0.5), 1.0, 1.0])
    # sqrt opens rows faster than linear, and both are monotone
    assert (share("sqrt", t[1:3], 0.2, 0.5) > share("linear", t[1:3], 0.2, 0.5)).all()
    # step with 3 stages, everything open at 0.6: stage 2 opens at 0.3, stage 3 at 0.6
    assert share("step", [0.0, 0.29, 0.3, 0.59, 0.6, 1.0], 0.2, 0.6, 3).tolist() == pytest.approx(
        [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1.0, 1.0])


def _levels(n_per: int = 30, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat([0, 1, 2], n_per)).astype(float)


def _sampler(scores, pacing="linear", epochs=3, seed=7, **kw) -> CurriculumSampler:
    n = len(scores)
    return CurriculumSampler(scores, scores.astype(int), pacing=pacing, start=kw.get("start", 0.2),
                             full_at=kw.get("full_at", 0.5), epoch_len=n, total_samples=epochs * n, seed=seed)


@pytest.mark.parametrize("pacing", ["linear", "sqrt"])
def test_draws_stay_inside_the_open_share(pacing):
    scores = _levels()
    s = _sampler(scores, pacing)
    n, total = len(scores), 3 * len(scores)
    easiest = np.sort(scores)  # independent: the level of the k-th easiest row
    for epoch in range(3):
        s.set_epoch(epoch)
        drawn = list(s)
        assert len(drawn) == n
        for i, row in enumerate(drawn):
            t = (epoch * n + i) / total
            open_rows = max(1, math.ceil(float(share(pacing, t, 0.2, 0.5)) * n - 1e-9))
            assert scores[row] <= easiest[open_rows - 1], (epoch, i)
    # the first 18 draws (share 0.2 of 90 rows = the easy level only) are all easy
    s.set_epoch(0)
    assert {scores[r] for r in list(s)[:18]} == {0.0}
    # the last epoch lies past full_at: a permutation of every row
    s.set_epoch(2)
    assert sorted(s) == list(range(n))


def test_step_pacing_opens_one_level_after_another():
    scores = _levels()
    s = _sampler(scores, "step", epochs=3, full_at=0.6)
    s.set_epoch(0)
    first = [scores[r] for r in s]
    # epoch 0 spans t in [0, 1/3): stage 2 opens at t = 0.3 (position 81 of 90)
    assert set(first[:81]) == {0.0} and set(first[81:]) <= {0.0, 1.0}
    s.set_epoch(1)  # t in [1/3, 2/3): easy + medium until 0.6 (position 72), then everything
    second = [scores[r] for r in s]
    assert set(second[:72]) <= {0.0, 1.0} and 2.0 in second[72:]


def test_order_pacing_is_easy_to_hard_every_epoch():
    scores = _levels()
    s = _sampler(scores, "order")
    seen = []
    for epoch in range(2):
        s.set_epoch(epoch)
        drawn = list(s)
        assert sorted(drawn) == list(range(len(scores)))
        assert all(scores[a] <= scores[b] for a, b in zip(drawn, drawn[1:]))
        seen.append(drawn)
    assert seen[0] != seen[1]  # shuffled within each level, seeded per epoch


def test_same_seed_same_order_on_every_rank_and_seed_changes_it():
    scores = _levels()
    a, b, c = _sampler(scores), _sampler(scores), _sampler(scores, seed=8)
    for s in (a, b, c):
        s.set_epoch(1)
    assert list(a) == list(b)
    assert list(a) != list(c)


def test_added_rows_keep_the_epoch_length_and_are_drawn_later():
    scores = _levels(10)
    s = _sampler(scores, "linear", epochs=4)
    n = len(scores)
    s.set_epoch(0)
    assert max(s) < n
    new_scores = np.array([0.0] * 5 + [2.0] * 5)
    s.set_rows(np.concatenate([scores, new_scores]), np.concatenate([scores, new_scores]).astype(int))
    assert len(s) == n  # the host's step count and schedule do not change
    s.set_epoch(3)
    late = list(s)
    assert len(late) == n and max(late) >= n and max(late) < n + 10


# ----------------------------------------------------------------------------- metadata
def _write_dataset(tmp_path, rows):
    folder = tmp_path / "ds"
    (folder / "img").mkdir(parents=True)
    for row in rows:
        for image in row["images"]:
            (folder / image).write_bytes(b"png")
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder, path


def _row(i, prompt, level, p=0.5):
    image = f"img/{i}.png"
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "<image>"}],
        "images": [image],
        "unigap": {"prompt_id": f"p{i}", "prompt": prompt, "image": image, "difficulty": level,
                   "acceptance": p, "mean_p_yes": p, "p_yes": p},
    }


def test_metadata_is_matched_by_each_rows_own_image_not_by_position(tmp_path):
    rows = [_row(0, "a red square", "easy", 0.9), _row(1, "two blue bars", "medium", 0.5),
            _row(2, "a red bar left of a blue square", "hard", 0.1)]
    folder, path = _write_dataset(tmp_path, rows)
    table, bare = read_metadata([("ds", path)], str(folder))
    assert bare == []
    # the host's training rows come shuffled and with absolute paths
    train_images = [[str(folder / "img/2.png")], [str(folder / "img/0.png")], [str(folder / "img/1.png")]]
    got = align(train_images, None, table)
    assert [m.prompt_id for m in got.metas] == ["p2", "p0", "p1"]
    for source, expected in (("label", [2, 0, 1]), ("acceptance", [0.9, 0.1, 0.5]), ("p_yes", [0.9, 0.1, 0.5])):
        scores, _, _ = difficulty_of(got.metas, CurriculumConfig(difficulty=source))
        assert scores.tolist() == pytest.approx(expected)


def test_misaligned_metadata_names_the_row(tmp_path):
    rows = [_row(0, "a red square", "easy"), _row(1, "two blue bars", "medium")]
    rows[0]["unigap"], rows[1]["unigap"] = rows[1]["unigap"], rows[0]["unigap"]
    folder, path = _write_dataset(tmp_path, rows)
    with pytest.raises(CurriculumError, match=r"data\.jsonl:1: .*misaligned"):
        read_metadata([("ds", path)], str(folder))


def test_unknown_rows_and_code_mismatches_are_errors(tmp_path):
    rows = [_row(0, "a red square", "easy")]
    folder, path = _write_dataset(tmp_path, rows)
    table, _ = read_metadata([("ds", path)], str(folder))
    got = align([[str(folder / "img/0.png")], [str(tmp_path / "elsewhere.png")]], None, table)
    assert got.unlabeled == [1]
    with pytest.raises(CurriculumError, match=r"1 of 2 training rows have no curriculum metadata \(first: row 1"):
        difficulty_of(got.metas, CurriculumConfig(difficulty="label"))
    scores, _, _ = difficulty_of(got.metas, CurriculumConfig(difficulty="label", unlabeled="hardest"))
    assert scores[1] == math.inf
    with pytest.raises(CurriculumError, match=r"training row 0 .* not the row the metadata describes"):
        align([[str(folder / "img/0.png")]], [[1, 2, 3]], table, gen_codes=lambda ids, path: "codes differ")
    with pytest.raises(CurriculumError, match="curriculum_pacing must be"):
        CurriculumConfig(difficulty="label", pacing="cosine").validate()
