"""Curriculum sampler and C-SFT replay inside the real, unmodified ``llamafactory-cli train``.

The data is a real self-play run of the tiny model, built by ``unigap build``.
``UNIGAP_RECORD_ORDER=1`` makes every rank write the sampler's order
(``unigap_order.rank{r}.json``), which is what these tests read to check the order.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import BIN, ROOT, base_config, lf_train, run

pytestmark = pytest.mark.e2e

RECORD = {"UNIGAP_RECORD_ORDER": "1"}
LEVEL = {"easy": 0, "medium": 1, "hard": 2}
N = 2


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _midpoint_split(values: list[float], keep_share: float) -> float:
    """A threshold between two distinct sorted values, about keep_share of them at or above it."""
    v = sorted(set(values))
    k = min(max(int(len(v) * (1 - keep_share)), 1), len(v) - 1)
    return (v[k - 1] + v[k]) / 2


@pytest.fixture(scope="module")
def cur_data(tmp_path_factory, tiny_model):
    """A self-play run (15 prompts x 2) and SFT / DPO datasets with a discard pool of about a third."""
    from unigap.shapesworld.world import all_queries

    root = tmp_path_factory.mktemp("curriculum")
    # five prompts per level of ShapesWorld's grammar (the tiny random model draws nothing in particular)
    prompts = [q.to_prompt_row() for q in all_queries()]
    subset = [p for level in LEVEL for p in [q for q in prompts if q["difficulty"] == level][:5]]
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in subset))
    # cfg_scale pinned: test_replay_adds_what_the_current_model_accepts redraws with it
    proc = run([str(BIN / "unigap"), "selfplay", "yaml_examples/selfplay.yaml", f"model_name_or_path={tiny_model}",
                f"prompts={root / 'prompts.jsonl'}", f"output_dir={root / 'run'}", f"num_candidates={N}",
                "cfg_scale=5.0", "progress=false"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _jsonl(root / "run" / "records.jsonl")
    best = {}
    for r in records:
        best[r["prompt_id"]] = max(best.get(r["prompt_id"], 0.0), r["p_yes"])
    threshold = _midpoint_split(list(best.values()), keep_share=0.65)
    data = root / "data"
    for kind, name in (("sft", "gap"), ("dpo", "pairs")):
        proc = run([str(BIN / "unigap"), "build", kind, str(root / "run"), "--out", str(data), "--name", name,
                    "--threshold", str(threshold)] + (["--any-outcome"] if kind == "dpo" else []))
        assert proc.returncode == 0, proc.stderr[-3000:]
    pool = _jsonl(data / "gap" / "discard_pool.jsonl")
    assert 3 <= len(pool) <= 8 and all(best[p["prompt_id"]] < threshold for p in pool)
    # an invalid row (two user turns) the host drops while tokenizing; the curriculum must not be misled by it
    rows = _jsonl(data / "gap" / "data.jsonl")
    broken = dict(rows[0], messages=[rows[0]["messages"][0], rows[0]["messages"][0]])
    with open(data / "gap" / "data.jsonl", "a") as handle:
        handle.write(json.dumps(broken) + "\n")
    return {"root": root, "data": data, "records": records, "pool": pool, "rows": rows}


def _train_rows(cur_data) -> tuple[int, int]:
    """Rows the host trains on: the split holds out ceil(10%) of all rows, then drops the broken one if it is there."""
    total = len(cur_data["rows"]) + 1
    kept = total - math.ceil(0.1 * total)
    return (kept - 1, kept)


def _config(tiny_model, cur_data, out, **overrides):
    config = base_config(
        tiny_model, cur_data["data"], "gap", out, num_train_epochs=3, learning_rate=5e-3, save_strategy="epoch",
        val_size=0.1, curriculum_difficulty="label", curriculum_pacing="linear", replay_epochs=1, replay_pool="gap",
    )
    config.update(overrides)
    return config


def _order(out: Path, rank: int = 0) -> dict:
    return json.loads((out / f"unigap_order.rank{rank}.json").read_text())


def _check_pacing(order: dict, pacing: str, epochs: int, start=0.2, full_at=0.5) -> None:
    """Every draw lies within the open share of the rows sorted by difficulty (computed here, independently)."""
    from unigap.curriculum import share

    scores = np.array(order["scores"])
    easiest = np.sort(scores)
    history = dict((e, idx) for e, idx in order["epochs"])
    n = len(history[0])
    for epoch in range(epochs):
        for i, row in enumerate(history[epoch]):
            frac = float(share(pacing, (epoch * n + i) / (epochs * n), start, full_at))
            assert scores[row] <= easiest[max(1, math.ceil(frac * len(scores) - 1e-9)) - 1], (epoch, i)


@pytest.fixture(scope="module")
def csft_runs(tmp_path_factory, tiny_model, cur_data):
    """Run 1: impossible threshold (nothing added). Run 2: a threshold between the replay's P(yes) values."""
    root = tmp_path_factory.mktemp("csft")
    out1 = root / "impossible"
    lf_train(_config(tiny_model, cur_data, out1, replay_judge_threshold=1.0), root, env=RECORD)
    seen = [c["p_yes"] for c in _jsonl(out1 / "unigap_replay/epoch_1/candidates.jsonl")]
    threshold = _midpoint_split(seen, keep_share=0.5)
    out2 = root / "some"
    (root / "b").mkdir()
    lf_train(_config(tiny_model, cur_data, out2, replay_judge_threshold=threshold), root / "b", env=RECORD)
    return {"impossible": out1, "some": out2, "threshold": threshold, "seen": seen}


def test_label_curriculum_follows_difficulty_matched_by_row_identity(csft_runs, cur_data):
    """Rows are placed by their own image's metadata (val_size shuffles, the host drops a broken row)."""
    out = csft_runs["impossible"]
    order = _order(out)
    by_image = {r["unigap"]["image"]: LEVEL[r["unigap"]["difficulty"]] for r in cur_data["rows"]}
    data = cur_data["data"]
    keys = order["rows"]
    assert len(keys) in _train_rows(cur_data)  # 10% held out, and the broken row is gone
    expected = [by_image[str(Path(k).relative_to(data))] for k in keys]
    assert order["scores"] == expected
    assert keys != sorted(keys, key=lambda k: by_image[str(Path(k).relative_to(data))])  # shuffled, not sorted
    _check_pacing(order, "linear", 3)
    first = [order["scores"][i] for i in order["epochs"][0][1][:3]]
    assert first == [0, 0, 0]  # only easy rows at the start
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    shares = [h["curriculum_share"] for h in history if "curriculum_share" in h]
    assert shares[0] < 0.5 and shares[-1] == 1.0 and shares == sorted(shares)


def test_replay_with_impossible_threshold_adds_nothing_and_training_completes(csft_runs, cur_data):
    out = csft_runs["impossible"]
    summary = json.loads((out / "unigap_replay/epoch_1/summary.json").read_text())
    pool = cur_data["pool"]
    assert summary["prompts_tried"] == len(pool) and summary["candidates"] == N * len(pool)
    assert summary["rows_added"] == summary["prompts_recovered"] == 0 and summary["pool_left"] == len(pool)
    assert len(_jsonl(out / "unigap_replay/epoch_1/pool.jsonl")) == len(pool)
    assert (out / "adapter_model.safetensors").exists()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"]
    assert max(max(idx) for _, idx in _order(out)["epochs"]) < len(_order(out)["rows"])


def _checkpoint_at_epoch(out: Path, epoch: float) -> Path:
    for ckpt in sorted(out.glob("checkpoint-*")):
        if json.loads((ckpt / "trainer_state.json").read_text())["epoch"] == epoch:
            return ckpt
    raise AssertionError(f"no checkpoint at epoch {epoch} in {out}")


def test_replay_adds_what_the_current_model_accepts(csft_runs, cur_data, tiny_model):
    """Rows added = an independent re-generation + re-judging with the epoch-1 weights; later epochs draw them."""
    from peft import PeftModel
    from transformers import AutoTokenizer, JanusForConditionalGeneration

    from unigap.models.janus import JanusAdapter
    from unigap.selfplay import candidate_seed

    out, threshold = csft_runs["some"], csft_runs["threshold"]
    folder = out / "unigap_replay/epoch_1"
    candidates = _jsonl(folder / "candidates.jsonl")
    # the replay is deterministic: the same model at epoch 1 drew and judged the same in both runs
    assert [c["p_yes"] for c in candidates] == csft_runs["seen"]

    base = JanusForConditionalGeneration.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(base, _checkpoint_at_epoch(out, 1.0)).eval()
    adapter = JanusAdapter(model.get_base_model(), AutoTokenizer.from_pretrained(tiny_model))  # LoRA layers in place
    accepted, recovered, k = 0, 0, 0
    with torch.no_grad():
        for entry in cur_data["pool"]:
            seeds = [candidate_seed(42 + 1, entry["prompt_id"], c) for c in range(N)]
            codes = adapter.generate([entry["prompt"]] * N, seeds=seeds, cfg_scale=5.0, temperature=1.0)
            p = adapter.judge(adapter.decode_codes(codes), [f"Does this image show {entry['prompt']}?"] * N)
            for c in range(N):
                saved = np.load(folder / "images" / f"{k // N:06d}-{c:03d}.codes.npy")
                assert saved.tolist() == codes[c].tolist()
                assert candidates[k]["p_yes"] == pytest.approx(float(p[c]), abs=1e-5)
                k += 1
            hits = int((p >= threshold).sum())
            accepted += hits
            recovered += int(hits > 0)
    summary = json.loads((folder / "summary.json").read_text())
    assert 0 < accepted < N * len(cur_data["pool"])  # the threshold lets some through, not all
    assert summary["rows_added"] == accepted and summary["prompts_recovered"] == recovered
    assert summary["pool_left"] == len(cur_data["pool"]) - recovered
    added = _jsonl(folder / "data.jsonl")
    assert len(added) == accepted and all(Path(r["images"][0]).is_file() for r in added)

    order = _order(out)
    base_len = len(order["rows"]) - accepted
    assert order["rows"][base_len:] == [r["images"][0] for r in added]
    drawn = {e: set(idx) for e, idx in order["epochs"]}
    assert max(drawn[0]) < base_len  # nothing added before the replay
    assert any(i >= base_len for e in (1, 2) for i in drawn[e])  # the added rows are trained on afterwards
    assert all(len(idx) == len(order["epochs"][0][1]) for _, idx in order["epochs"])  # epoch length unchanged
    state = json.loads((out / "trainer_state.json").read_text())
    assert any(h.get("replay_rows_added") == accepted for h in state["log_history"])
    ckpt = json.loads((_checkpoint_at_epoch(out, 2.0) / "unigap_replay.json").read_text())
    assert ckpt["done"] == [1] and len(ckpt["added"]) == accepted


def test_resume_after_replay_keeps_the_added_rows(csft_runs, cur_data, tiny_model, tmp_path):
    """Resuming from the epoch-2 checkpoint (after the replay) ends with the uninterrupted run's weights."""
    from safetensors.torch import load_file

    full = csft_runs["some"]
    out = tmp_path / "resumed"
    out.mkdir()
    ckpt = _checkpoint_at_epoch(full, 2.0)
    shutil.copytree(ckpt, out / ckpt.name)
    proc = lf_train(
        _config(tiny_model, cur_data, out, replay_judge_threshold=csft_runs["threshold"], overwrite_output_dir=False,
                resume_from_checkpoint=str(out / ckpt.name)),
        tmp_path, env=RECORD,
    )
    text = proc.stdout + proc.stderr
    added = len(_jsonl(full / "unigap_replay/epoch_1/data.jsonl"))
    assert f"resumed with {added} added rows" in text and "retries" not in text  # no second replay
    a, b = load_file(full / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    assert _order(out)["epochs"][-1] == _order(full)["epochs"][-1]


def test_two_ranks_same_order_and_same_added_rows_full_finetuning(tmp_path, tiny_model, cur_data):
    out = tmp_path / "ddp"
    lf_train(
        _config(tiny_model, cur_data, out, finetuning_type="full", num_train_epochs=2, save_strategy="no",
                curriculum_difficulty="acceptance", curriculum_pacing="step", replay_judge_threshold=0.0,
                learning_rate=1e-4),
        tmp_path, env={**RECORD, "FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"},
    )
    r0, r1 = _order(out, 0), _order(out, 1)
    assert r0 == r1
    pool = cur_data["pool"]
    summary = json.loads((out / "unigap_replay/epoch_1/summary.json").read_text())
    assert summary["prompts_tried"] == len(pool) and summary["rows_added"] == N * len(pool)
    assert len(r0["rows"]) - N * len(pool) in _train_rows(cur_data)


def test_misaligned_metadata_fails_the_cli_naming_the_row(tmp_path, tiny_model, cur_data):
    data = tmp_path / "data"
    shutil.copytree(cur_data["data"], data)
    rows = _jsonl(data / "gap" / "data.jsonl")
    rows[1]["unigap"], rows[2]["unigap"] = rows[2]["unigap"], rows[1]["unigap"]
    (data / "gap" / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = lf_train(_config(tiny_model, {**cur_data, "data": data}, tmp_path / "a", replay_epochs=None),
                    tmp_path, expect_ok=False)
    assert proc.returncode != 0
    assert "data.jsonl:2: curriculum metadata is for image" in proc.stderr and "misaligned" in proc.stderr
