"""Measure a unified model on ShapesWorld against the exact oracle.

Uses unigap's own adapter (``load_unified``): ``judge`` for understanding (the
self-judge's one-pass P(yes)), ``generate`` + ``decode_codes`` for generation.

- understanding: for each prompt, the judge's question about it, shown a correct
  image (Yes) or a near miss (No), half and half; accuracy next to the share of
  Yes answers (an always-Yes judge scores 50% here, and its Yes share is 100%);
- generation: images drawn with classifier-free guidance, decoded to pixels and
  checked by the oracle;
- the judge on the model's OWN images: its rejection rate (the non-unification
  score) and how often the oracle agrees with its verdicts.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from .data import eval_item
from .world import LEVELS, Query, oracle, render_scene


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def understanding_records(
    adapter: Any, queries: Sequence[Query], items_per_prompt: int = 8, seed: int = 0, batch: int = 64
) -> list[dict[str, Any]]:
    """One record per item: level, the exact answer, and the judge's P(yes)."""
    rng = random.Random(f"shapesworld-eval-und-{seed}")
    items = [eval_item(q, rng, positive=i % 2 == 0) for q in queries for i in range(items_per_prompt)]
    p_yes: list[float] = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        images = [Image.fromarray(render_scene(it.scene)) for it in chunk]
        p_yes += adapter.judge(images, [it.question for it in chunk]).tolist()
    return [
        {"prompt": it.query.text, "level": it.query.level, "truth": it.answer == "Yes", "p_yes": p}
        for it, p in zip(items, p_yes)
    ]


def summarize_understanding(records: Sequence[dict[str, Any]], threshold: float = 0.5) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for level in (*LEVELS, "all"):
        chosen = [r for r in records if level == "all" or r["level"] == level]
        said_yes = [r["p_yes"] >= threshold for r in chosen]
        correct = sum(y == r["truth"] for y, r in zip(said_yes, chosen))
        out[level] = {
            "accuracy": _rate(correct, len(chosen)),
            "yes_share": _rate(sum(said_yes), len(chosen)),
            "true_yes_share": _rate(sum(r["truth"] for r in chosen), len(chosen)),
            "items": len(chosen),
            "prompts": len({r["prompt"] for r in chosen}),
        }
    return out


def generation_records(
    adapter: Any,
    queries: Sequence[Query],
    samples_per_prompt: int = 8,
    seed: int = 0,
    generation: Mapping[str, Any] | None = None,
    batch: int = 64,
) -> list[dict[str, Any]]:
    """One record per sampled image: the oracle's verdict and the model's own (its judge).

    ``generation``: the family's sampling keys (e.g. ``{"cfg_scale": 5.0}`` for Janus, ``{"guidance_scale":
    1.75}`` for Show-o); the keys not given take the family's defaults."""
    from ..selfplay import DEFAULT_QUESTION

    params = adapter.sampling_params(dict(generation or {}))
    jobs = [(q, i) for q in queries for i in range(samples_per_prompt)]
    records = []
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        seeds = [hash_seed(seed, q.id, i) for q, i in chunk]
        codes = adapter.generate([q.text for q, _ in chunk], seeds=seeds, params=params)
        images = adapter.decode_codes(codes)
        p_yes = adapter.judge(images, [DEFAULT_QUESTION.format(prompt=q.text) for q, _ in chunk]).tolist()
        for (q, _), img, p in zip(chunk, images, p_yes):
            records.append({"prompt": q.text, "level": q.level, "correct": oracle(img, q), "p_yes": p})
    return records


def summarize_generation(records: Sequence[dict[str, Any]], threshold: float = 0.5) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for level in (*LEVELS, "all"):
        sel = [r for r in records if level == "all" or r["level"] == level]
        accepted = [r["p_yes"] >= threshold for r in sel]
        rejected = [r for r, a in zip(sel, accepted) if not a]
        kept = [r for r, a in zip(sel, accepted) if a]
        out[level] = {
            "oracle_accuracy": _rate(sum(r["correct"] for r in sel), len(sel)),
            "judge_yes_share": _rate(sum(accepted), len(sel)),
            "non_unification": _rate(len(rejected), len(sel)),
            "judge_agrees_with_oracle": _rate(sum(r["correct"] == a for r, a in zip(sel, accepted)), len(sel)),
            "rejected_that_oracle_rejects": _rate(sum(not r["correct"] for r in rejected), len(rejected)),
            "accepted_that_oracle_accepts": _rate(sum(r["correct"] for r in kept), len(kept)),
            "samples": len(sel),
            "prompts": len({r["prompt"] for r in sel}),
        }
    return out


def hash_seed(seed: int, prompt_id: str, index: int) -> int:
    """A sample's seed from the run seed, the prompt and the sample index (stable across runs and batches)."""
    import hashlib

    digest = hashlib.sha256(f"{seed}|{prompt_id}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFFFFFFFFFFFFFF


def evaluate_model(
    model_dir: str,
    splits: dict[str, Sequence[Query]],
    und_items: int = 8,
    gen_samples: int = 8,
    seed: int = 0,
    generation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Per split and for all splits together ("held_out"): understanding and generation summaries."""
    import torch

    from ..loading import load_unified

    torch.manual_seed(seed)
    adapter = load_unified(model_dir, device="cpu")
    result: dict[str, Any] = {}
    und_all: list[dict[str, Any]] = []
    gen_all: list[dict[str, Any]] = []
    for name, queries in splits.items():
        und = understanding_records(adapter, queries, und_items, seed)
        gen = generation_records(adapter, queries, gen_samples, seed, generation=generation)
        und_all += und
        gen_all += gen
        result[name] = {"understanding": summarize_understanding(und), "generation": summarize_generation(gen)}
    if len(splits) > 1:
        result["held_out"] = {
            "understanding": summarize_understanding(und_all),
            "generation": summarize_generation(gen_all),
        }
    return result
