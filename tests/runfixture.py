"""Self-play run directories for the builder tests and benchmark (format: ``unigap.runs``).

* :func:`make_run`: a realistic run drawn and judged by a real (tiny) model:
  ``JanusAdapter.generate`` -> ``decode_codes`` -> ``judge`` -> ``save_gen_image``;
  P(yes) may be overridden by hand so tests control accept / reject.  It can be
  swapped for a real ``unigap selfplay`` run: it writes the same files.
* :func:`write_synthetic_run`: a large run without a model (every image is a
  hard link to one small PNG + codes pair), for the benchmark and the kill test.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

QUESTION = "Does this image show {prompt}?"


def _record(index: int, prompt: dict[str, Any], k: int, seed: int, p: float, threshold: float, fps: tuple[str, str]):
    from unigap.runs import make_record

    return make_record(prompt_index=index, prompt_id=prompt.get("id", f"p{index}"), prompt=prompt["prompt"],
                       difficulty=prompt.get("difficulty"), category=prompt.get("category"), candidate=k, seed=seed,
                       p_yes=p, threshold=threshold, model_fingerprint=fps[0], config_fingerprint=fps[1])


def _meta(model: str, spec: dict[str, Any], num_candidates: int, threshold: float, fps: tuple[str, str], n: int):
    return {
        "unigap_version": "0.1.0",
        "config": {
            "model_name_or_path": model,
            "adapter_name_or_path": None,
            "num_candidates": num_candidates,
            "judge_question": QUESTION,
            "judge_threshold": threshold,
            "seed": 0,
        },
        "model_fingerprint": fps[0],
        "config_fingerprint": fps[1],
        "num_prompts": n,
        "spec": spec,
    }


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"records": len(records), "accepted": sum(r["accepted"] for r in records)}


def make_run(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    prompts: Sequence[dict[str, Any]],
    num_candidates: int = 3,
    p_yes: Callable[[int, int], float | None] | None = None,
    threshold: float = 0.5,
    complete: bool = True,
    finished: int | None = None,
    model_fingerprint: str | None = None,
    seed: int = 0,
    adapter: Any = None,
) -> Path:
    """Draw ``num_candidates`` images per prompt with the real model, judge them, write a run directory.

    ``p_yes(prompt_index, candidate)`` returns a hand-set P(yes) (or None to keep the
    model's own).  ``complete=False`` writes only ``parts/`` for the first
    ``finished`` prompts (a run still in progress).
    """
    from unigap.codes import save_gen_image
    from unigap.runs import merge_parts, write_meta, write_part, write_summary

    if adapter is None:
        from unigap.loading import load_unified

        adapter = load_unified(str(model_dir), device="cpu", dtype="float32")
    out = Path(out)
    (out / "images").mkdir(parents=True)
    spec = adapter.spec
    spec_d = {
        "model_type": spec.model_type,
        "num_image_tokens": spec.num_image_tokens,
        "codebook_size": spec.codebook_size,
        "image_size": spec.image_size,
    }
    if model_fingerprint is None:
        model_fingerprint = hashlib.sha256((Path(model_dir) / "model.safetensors").read_bytes()).hexdigest()[:16]
    config_fp = hashlib.sha256(f"{model_fingerprint}-{num_candidates}-{threshold}-{seed}".encode()).hexdigest()[:16]
    fps = (model_fingerprint, config_fp)
    meta = _meta(str(model_dir), spec_d, num_candidates, threshold, fps, len(prompts))
    write_meta(out, meta)

    jobs = [(i, k) for i in range(len(prompts)) for k in range(num_candidates)]
    seeds = [seed * 1_000_003 + i * 1009 + k for i, k in jobs]
    codes = adapter.generate([prompts[i]["prompt"] for i, _ in jobs], seeds=seeds)
    images = adapter.decode_codes(codes)
    judged = adapter.judge(images, [QUESTION.format(prompt=prompts[i]["prompt"]) for i, _ in jobs]).tolist()
    records = []
    for (i, k), s, image, row, p in zip(jobs, seeds, images, codes.tolist(), judged):
        if p_yes is not None and p_yes(i, k) is not None:
            p = float(p_yes(i, k))
        save_gen_image(out / f"images/{i:06d}-{k:03d}.png", image, row)
        records.append(_record(i, prompts[i], k, s, p, threshold, fps))
    (out / "parts").mkdir()
    done = len(prompts) if (complete or finished is None) else finished
    for i in range(done):
        write_part(out, i, [r for r in records if r["prompt_index"] == i])
    if complete:
        merge_parts(out, len(prompts))
        shutil.rmtree(out / "parts")
        write_summary(out, _summary(records))
    return out


def write_synthetic_run(
    out: str | os.PathLike,
    num_prompts: int,
    num_candidates: int = 8,
    seed: int = 0,
    num_image_tokens: int = 16,
    codebook_size: int = 64,
    image_size: int = 32,
    threshold: float = 0.5,
    difficulties: Sequence[str | None] = ("easy", "medium", "hard", None),
) -> Path:
    """A run of ``num_prompts * num_candidates`` records with random P(yes), written streaming.

    Every record has its own image and codes path; the files are hard links to a
    few identical template pairs (real, valid files; the disk cost is inodes only).
    """
    import numpy as np
    from PIL import Image
    from unigap.codes import save_gen_image
    from unigap.runs import record_line

    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True)
    rng = random.Random(seed)
    pixels = np.random.default_rng(seed).integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
    templates = out / "templates"
    links_per_template = 20_000  # ext4 allows 65,000 links per inode; builds add their own links

    def template(n: int) -> tuple[Path, Path]:
        path = templates / f"t{n // links_per_template}.png"
        if not path.exists():
            save_gen_image(path, Image.fromarray(pixels), np.arange(num_image_tokens) % codebook_size)
        return path, templates / f"t{n // links_per_template}.codes.npy"

    fps = ("synthetic-model", "synthetic-config")
    spec = {"model_type": "janus", "num_image_tokens": num_image_tokens, "codebook_size": codebook_size,
            "image_size": image_size}
    (out / "run.json").write_text(json.dumps(_meta("synthetic", spec, num_candidates, threshold, fps, num_prompts)))
    accepted = 0
    with open(out / "records.jsonl", "w", encoding="utf-8") as handle:
        for i in range(num_prompts):
            prompt = {"prompt": f"synthetic prompt number {i} with a few more words", "id": f"s{i}",
                      "difficulty": difficulties[i % len(difficulties)], "category": "synthetic"}
            lines = []
            for k in range(num_candidates):
                p = round(rng.random(), 6)
                record = _record(i, prompt, k, i * 1009 + k, p, threshold, fps)
                accepted += record["accepted"]
                png, codes = template(i * num_candidates + k)
                os.link(png, images / f"{i:06d}-{k:03d}.png")
                os.link(codes, images / f"{i:06d}-{k:03d}.codes.npy")
                lines.append(record_line(record))
            handle.write("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"records": num_prompts * num_candidates, "accepted": accepted}))
    return out
