"""ShapesWorld training data in LLaMA-Factory's sharegpt format (rows the unigap plugin accepts).

One dataset per training phase, one folder: ``data.json`` + ``images/`` (+
the host's dataset index listing it).  Rows come in blocks of one optimiser step
each (``mix`` rows of every kind, shuffled inside the block), to be read in
order (``disable_shuffling: true``, ``per_device_train_batch_size`` = block
size): every step then sees the intended mix, and the understanding negatives
follow a curriculum from easy (an image of another prompt) to hard (one
attribute or the relation changed).

- ``yesno``: ``<image>\\nDoes this image show {prompt}?`` -> ``Yes`` / ``No`` (exact);
- ``caption``: ``<image>\\nDescribe the image.`` -> the canonical description;
- ``gen``: ``{prompt}`` -> ``<image>``: a PNG with its ``.codes.npy`` (the cell colours).
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..codes import CODES_SUFFIX
from ..host.llamafactory.datasets import FORMAT, gen_sft_row, und_sft_row
from ..fsutil import atomic_directory
from .data import UndItem, caption_item, caption_scene, training_item
from .world import Query, cell_grid, render_scene, sample_scene

KINDS = ("yesno", "caption", "gen")


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _codes(grid: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, grid.reshape(-1).astype(np.int32), allow_pickle=False)
    return buffer.getvalue()


def write_phase_dataset(
    dataset_dir: str | Path,
    name: str,
    queries: Sequence[Query],
    steps: int,
    mix: dict[str, int],
    seed: int,
    hardness_start: float = 0.0,
    hardness_ramp: float = 0.3,
    balance_levels: Sequence[str] = ("gen",),
) -> dict[str, int]:
    """Write ``dataset_dir/name/`` (atomically) and register it in the host's dataset index of ``dataset_dir``.

    ``steps`` blocks of ``mix`` rows.  Hardness of the negatives goes linearly
    from ``hardness_start`` to 1 over the first ``hardness_ramp`` of the blocks.
    Every question and every generation prompt is one of ``queries``.  For the
    row kinds in ``balance_levels`` the prompt's level is drawn first (uniformly),
    then a prompt of that level: otherwise the few easy prompts would be a few
    percent of the rows (measured: a model trained that way drew extra objects
    for every single-object prompt, 0% correct).
    Returns the number of rows of each kind.
    """
    unknown = set(mix) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown row kinds {sorted(unknown)} (known: {', '.join(KINDS)})")
    dataset_dir = Path(dataset_dir)
    rng = random.Random(f"shapesworld-data-{name}-{seed}")
    rows: list[dict] = []
    by_level: dict[str, list[Query]] = {}
    for query in queries:
        by_level.setdefault(query.level, []).append(query)

    def pick(kind: str) -> Query:
        if kind in balance_levels:
            return rng.choice(by_level[rng.choice(sorted(by_level))])
        return rng.choice(list(queries))

    counts = dict.fromkeys(KINDS, 0)
    with atomic_directory(dataset_dir / name, overwrite=True) as tmp:
        (tmp / "images").mkdir()
        for step in range(steps):
            progress = step / max(1, steps - 1)
            hardness = min(1.0, hardness_start + (1 - hardness_start) * progress / max(hardness_ramp, 1e-9))
            block = [kind for kind in KINDS for _ in range(mix.get(kind, 0))]
            rng.shuffle(block)
            for kind in block:
                index = sum(counts.values())
                rel = f"{name}/images/{index:07d}.png"
                path = tmp / "images" / f"{index:07d}.png"
                if kind == "gen":
                    query = pick(kind)
                    scene = sample_scene(query, rng)
                    grid = cell_grid(scene)
                    path.with_name(path.stem + CODES_SUFFIX).write_bytes(_codes(grid))
                    path.write_bytes(_png(render_scene(scene)))
                    rows.append(gen_sft_row(query.text, rel))
                else:
                    item: UndItem
                    if kind == "yesno":
                        item = training_item(pick(kind), rng, queries, hardness)
                    else:
                        item = caption_item(caption_scene(rng, queries))
                    path.write_bytes(_png(render_scene(item.scene)))
                    rows.append(und_sft_row(rel, item.question, item.answer))
                counts[kind] += 1
        (tmp / "data.json").write_text(json.dumps(rows))
    info = FORMAT.read_index(dataset_dir)
    info[name] = FORMAT.entry(f"{name}/data.json")
    FORMAT.write_index(dataset_dir, info)
    return counts
