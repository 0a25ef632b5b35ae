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
from collections.abc import Sequence
from typing import Any

from PIL import Image

from .data import eval_item
from .world import LEVELS, Query, oracle, render_scene


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def evaluate_understanding(
    adapter: Any, queries: Sequence[Query], items_per_prompt: int = 8, seed: int = 0, batch: int = 64
) -> dict[str, Any]:
    rng = random.Random(f"shapesworld-eval-und-{seed}")
    items = [eval_item(q, rng, positive=i % 2 == 0) for q in queries for i in range(items_per_prompt)]
    p_yes: list[float] = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        images = [Image.fromarray(render_scene(it.scene)) for it in chunk]
        p_yes += adapter.judge(images, [it.question for it in chunk]).tolist()
    out: dict[str, Any] = {}
    for level in (*LEVELS, "all"):
        chosen = [(it, p) for it, p in zip(items, p_yes) if level == "all" or it.query.level == level]
        said_yes = [p >= 0.5 for _, p in chosen]
        correct = sum((p >= 0.5) == (it.answer == "Yes") for it, p in chosen)
        out[level] = {
            "accuracy": _rate(correct, len(chosen)),
            "yes_share": _rate(sum(said_yes), len(chosen)),
            "true_yes_share": _rate(sum(it.answer == "Yes" for it, _ in chosen), len(chosen)),
            "items": len(chosen),
            "prompts": len({it.query for it, _ in chosen}),
        }
    return out


def evaluate_generation(
    adapter: Any,
    queries: Sequence[Query],
    samples_per_prompt: int = 8,
    seed: int = 0,
    cfg_scale: float = 5.0,
    temperature: float = 1.0,
    batch: int = 64,
) -> dict[str, Any]:
    """Oracle accuracy of sampled images, and the model's own verdict on them."""
    from ..selfplay import DEFAULT_QUESTION

    jobs = [(q, i) for q in queries for i in range(samples_per_prompt)]
    correct: list[bool] = []
    accepted: list[bool] = []
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        seeds = [hash_seed(seed, q.id, i) for q, i in chunk]
        codes = adapter.generate([q.text for q, _ in chunk], seeds=seeds, cfg_scale=cfg_scale, temperature=temperature)
        images = adapter.decode_codes(codes)
        correct += [oracle(img, q) for img, (q, _) in zip(images, chunk)]
        p_yes = adapter.judge(images, [DEFAULT_QUESTION.format(prompt=q.text) for q, _ in chunk])
        accepted += [p >= 0.5 for p in p_yes.tolist()]
    out: dict[str, Any] = {}
    for level in (*LEVELS, "all"):
        sel = [k for k, (q, _) in enumerate(jobs) if level == "all" or q.level == level]
        ok = [correct[k] for k in sel]
        acc = [accepted[k] for k in sel]
        rejected = [k for k in sel if not accepted[k]]
        kept = [k for k in sel if accepted[k]]
        out[level] = {
            "oracle_accuracy": _rate(sum(ok), len(sel)),
            "judge_yes_share": _rate(sum(acc), len(sel)),
            "non_unification": _rate(len(rejected), len(sel)),
            "judge_agrees_with_oracle": _rate(sum(correct[k] == accepted[k] for k in sel), len(sel)),
            "rejected_that_oracle_rejects": _rate(sum(not correct[k] for k in rejected), len(rejected)),
            "accepted_that_oracle_accepts": _rate(sum(correct[k] for k in kept), len(kept)),
            "samples": len(sel),
            "prompts": len({jobs[k][0] for k in sel}),
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
    cfg_scale: float = 5.0,
) -> dict[str, Any]:
    import torch

    from ..loading import load_unified

    torch.manual_seed(seed)
    adapter = load_unified(model_dir, device="cpu")
    result: dict[str, Any] = {}
    for name, queries in splits.items():
        result[name] = {
            "understanding": evaluate_understanding(adapter, queries, und_items, seed),
            "generation": evaluate_generation(adapter, queries, gen_samples, seed, cfg_scale=cfg_scale),
        }
    return result
