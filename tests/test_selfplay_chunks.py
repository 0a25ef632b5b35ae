"""Self-play decodes and judges a prompt's candidates in chunks of ``batch_size``: memory follows
``batch_size``, and the run's files are the same bytes whatever it is (in-process, the tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

N = 5
PROMPTS = ["a red square", "a blue circle", "two green squares"]


def count_calls(adapter, monkeypatch) -> dict[str, list[int]]:
    """Record the number of images of every decode_codes / judge / generate call of the real adapter."""
    calls: dict[str, list[int]] = {}
    for name in ("decode_codes", "judge", "generate"):
        real = getattr(type(adapter), name).__get__(adapter)
        seen = calls.setdefault(name, [])

        def wrapper(first, *args, _real=real, _seen=seen, **kwargs):
            _seen.append(len(first))
            return _real(first, *args, **kwargs)

        monkeypatch.setattr(adapter, name, wrapper, raising=False)
    return calls


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from unigap.loading import load_unified

    return load_unified(str(tiny_model), device="cpu")


def _run(tiny_model, loaded, prompts, out: Path, batch_size: int, monkeypatch) -> dict[str, list[int]]:
    import unigap.loading
    from unigap.selfplay import load_config, run_selfplay

    calls = count_calls(loaded, monkeypatch)
    monkeypatch.setattr(unigap.loading, "load_unified", lambda *a, **k: loaded)
    config = load_config(None, [f"model_name_or_path={tiny_model}", f"prompts={prompts}", f"output_dir={out}",
                                f"num_candidates={N}", "seed=5", "judge_threshold=0.47", f"batch_size={batch_size}",
                                "progress=false", "device=cpu"])
    run_selfplay(config)
    return calls


def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != "run.json"}


def test_files_are_the_same_bytes_and_memory_follows_batch_size(tiny_model, loaded, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    runs, calls = {}, {}
    for batch_size in (1, 2, N):
        calls[batch_size] = _run(tiny_model, loaded, prompts, tmp_path / f"bs{batch_size}", batch_size, monkeypatch)
        runs[batch_size] = _files(tmp_path / f"bs{batch_size}")
    reference = runs[N]
    assert "records.jsonl" in reference and sum(name.endswith(".png") for name in reference) == N * len(PROMPTS)
    records = [json.loads(line) for line in reference["records.jsonl"].decode().splitlines()]
    assert len({r["p_yes"] for r in records}) > 1  # real, differing judgments are compared
    for batch_size in (1, 2):
        assert runs[batch_size] == reference, [k for k in reference if runs[batch_size].get(k) != reference[k]][:5]
    for batch_size, seen in calls.items():
        for name in ("decode_codes", "judge", "generate"):
            assert seen[name] and max(seen[name]) <= batch_size, (batch_size, name, seen[name])
        assert sum(seen["judge"]) == sum(seen["decode_codes"]) == N * len(PROMPTS)
    # without chunking a prompt's N images would go in one call: the bound above can fail
    assert max(calls[N]["judge"]) == N and max(calls[2]["judge"]) == 2


def test_judge_candidates_chunks_and_returns_the_same(loaded, monkeypatch):
    from unigap.selfplay import judge_candidates

    calls = count_calls(loaded, monkeypatch)
    codes = loaded.generate(["a red square"] * 4, seeds=[1, 2, 3, 4])
    whole_images, whole = judge_candidates(loaded, codes, "Does this image show a red square?")
    assert calls["judge"] == [4]
    calls["judge"].clear()
    images, chunked = judge_candidates(loaded, codes, "Does this image show a red square?", 3)
    assert calls["judge"] == [3, 1]
    assert chunked == whole and len(set(whole)) == 4
    assert [i.tobytes() for i in images] == [i.tobytes() for i in whole_images]
    kept = []
    images, again = judge_candidates(loaded, codes, "Does this image show a red square?", 2,
                                     on_chunk=lambda chunk, scores: kept.append((len(chunk), scores)))
    assert images == [] and again == whole and [n for n, _ in kept] == [2, 2]
