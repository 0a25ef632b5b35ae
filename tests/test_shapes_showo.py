"""The embedded Show-o (`models/shapes-showo`, trained on ShapesWorld by `scripts/train_default.py --family showo`):
it loads as a Show-o, its VQ is exact, its judge beats chance on held-out prompts, its self-play is
deterministic; and the ShapesWorld Show-o builder itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "shapes-showo"


@pytest.fixture(scope="module")
def adapter():
    from unigap.loading import load_unified

    return load_unified(str(MODEL), device="cpu")


def _test_queries():
    from unigap.shapesworld.data import read_prompt_file

    return read_prompt_file(MODEL / "prompts" / "test.jsonl")


def test_the_embedded_showo_loads_as_a_showo_with_one_code_per_cell(adapter):
    from unigap.shapesworld.world import GRID, PALETTE

    assert adapter.family == "showo" and type(adapter.model).__name__ == "ShowoForConditionalGeneration"
    assert adapter.spec.num_image_tokens == GRID * GRID and adapter.spec.codebook_size == len(PALETTE)
    made = json.loads((MODEL / "shapesworld.json").read_text())
    assert made["spec"]["family"] == "showo" and "--family showo" in made["made_by"]
    assert sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file()) < 20 * 2**20  # committed: under 20 MB


def test_its_vq_is_exact_on_the_worlds_scenes(adapter):
    """Code k = palette colour k: every cell's colour is read back from the codes and drawn back from them."""
    from unigap.shapesworld.model_showo import check_vq

    figures = check_vq(adapter.model, n=64, seed=11)
    assert figures["scenes_exact_codes"] == 1.0 and figures["scenes_exact_decodes"] == 1.0, figures


def test_its_judge_beats_chance_on_held_out_prompts(adapter):
    """A fixed small sample: 4 questions per test prompt (half about a correct image, half a near miss)."""
    from scipy.stats import binomtest

    from unigap.shapesworld.evaluate import summarize_understanding, understanding_records

    records = understanding_records(adapter, _test_queries(), items_per_prompt=4, seed=3)
    summary = summarize_understanding(records)["all"]
    correct = round(summary["accuracy"] * summary["items"])
    assert summary["items"] == 80 and summary["accuracy"] >= 0.8, summary
    assert binomtest(correct, summary["items"], 0.5, alternative="greater").pvalue < 1e-6
    assert 0.3 <= summary["yes_share"] <= 0.7, summary  # not an always-Yes (or always-No) judge


def test_its_self_play_is_deterministic_and_draws_the_world(adapter):
    """The same seeds give the same codes (also in another batch); other seeds give other images; and the
    images are the world's own, mostly readable by the oracle."""
    from unigap.shapesworld.world import read_cells

    prompts = [q.text for q in _test_queries()[:6]]
    seeds = list(range(100, 106))
    params = adapter.sampling_params({"guidance_scale": 1.75})
    first = adapter.generate(prompts, seeds=seeds, params=params)
    again = torch.cat([adapter.generate([p], seeds=[s], params=params) for p, s in zip(prompts, seeds)])
    assert torch.equal(first, again)
    other = adapter.generate(prompts, seeds=[s + 50 for s in seeds], params=params)
    assert not torch.equal(first, other)
    images = adapter.decode_codes(first)
    readable = [read_cells(np.asarray(img)) is not None for img in images]
    assert sum(readable) >= 5, readable


def test_its_recorded_training_met_the_bar():
    """What scripts/train_default.py measured when it made the model (eval.json): understanding >= 90% on the
    held-out prompts at every level, generation lower but above zero."""
    result = json.loads((MODEL / "eval.json").read_text())["held_out"]
    und, gen = result["understanding"], result["generation"]
    for level in ("easy", "medium", "hard", "all"):
        assert und[level]["accuracy"] >= 0.9, (level, und[level])
    assert 0.0 < gen["all"]["oracle_accuracy"] < und["all"]["accuracy"]


def test_the_world_showo_builder_makes_a_four_code_one_cell_vq():
    """The builder (before its VQ is trained): MAGVIT-v2 at factor 8 with 2 LFQ bits, the world's tokenizer
    (Yes / No one token each), and a prompt that fits the T2I text length."""
    from unigap.shapesworld.model_showo import build_model, world_spec

    model, tokenizer = build_model(world_spec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))
    assert model.vq_model.config.downsample == 8 and model.vq_model.config.codebook_size == 4
    assert model.config.num_vq_tokens == 16
    assert len(tokenizer.tokenize(" Yes")) == 1 and len(tokenizer.tokenize(" No")) == 1
    longest = max(len(tokenizer.tokenize(q.text)) for q in _test_queries())
    assert longest + 3 <= model.config.max_text_len
    assert math.isclose(float(model.showo.lm_head.weight.detach().std()), 2 / 32**0.5, rel_tol=0.2)


def test_unigap_selfplay_on_it_is_deterministic(tmp_path):
    """Two self-play runs with the same seed (and different batch sizes) write the same records and the same image
    bytes; the judge's verdicts are the model's own P(yes) against the threshold."""
    from unigap.selfplay import SelfPlayConfig, run_selfplay

    def play(name: str, batch: int) -> list[dict]:
        out = tmp_path / name
        run_selfplay(SelfPlayConfig(model_name_or_path=str(MODEL), prompts=str(MODEL / "prompts" / "test.jsonl"),
                                    max_prompts=6, num_candidates=3, sampling={"guidance_scale": 0.0}, seed=9,
                                    batch_size=batch, output_dir=str(out), progress=False))
        rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
        for r in rows:
            r["bytes"] = (out / r["image"]).read_bytes()
        return rows

    first, second = play("a", 18), play("b", 4)
    assert len(first) == 18 and [r["bytes"] for r in first] == [r["bytes"] for r in second]
    assert [r["p_yes"] for r in first] == [r["p_yes"] for r in second]
    assert all(r["accepted"] == (r["p_yes"] >= 0.5) for r in first)
    assert len({r["bytes"] for r in first}) > 6  # candidates of a prompt differ
