"""The small example datasets shipped in ``yaml_examples/data`` (and rebuilt by tests).

* ``unigap_gen_sft``: prompt -> an image the model drew itself (PNG + exact codes);
* ``unigap_gen_dpo``: prompt -> two of its own images, chosen = the one its own
  understanding judged more likely to show the prompt (the method in miniature);
* ``unigap_und_sft``: drawn shapes + "Does this image show ...?" -> Yes / No.

For a ShapesWorld model (its directory has ``shapesworld.json``, like the embedded
default ``models/shapes-janus``) the prompts are the world's (two per category from
the model's ``prompts/train.jsonl``) and the understanding rows show images rendered
by the world: per prompt a correct image and a near miss, each labelled by the exact
oracle. Any other model gets generic coloured squares and circles.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..fsutil import atomic_directory
from ..host.llamafactory.datasets import FORMAT
from ..samples import GenSample, PairSample, UndSample

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("square", "circle")
JUDGE_QUESTION = "Does this image show {prompt}?"


def draw_shape(colour: str, shape: str, size: int = 64):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (255, 255, 255))
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    draw = ImageDraw.Draw(image)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
    return image


def is_shapesworld_model(model_dir: str | Path) -> bool:
    return (Path(model_dir) / "shapesworld.json").is_file()


def shapesworld_example_queries(model_dir: str | Path, per_category: int = 2) -> list:
    """A fixed handful of the world's prompts: the first ``per_category`` of each category, in file order
    (the model's training prompts when it ships ``prompts/train.jsonl``, else every prompt of the world)."""
    from .data import read_prompt_file
    from .world import all_queries

    path = Path(model_dir) / "prompts" / "train.jsonl"
    queries = read_prompt_file(path) if path.is_file() else all_queries()
    taken: dict[str, int] = {}
    chosen = []
    for query in queries:
        if taken.get(query.category, 0) < per_category:
            taken[query.category] = taken.get(query.category, 0) + 1
            chosen.append(query)
    return chosen


def _generic_und_rows(root: Path, rng: random.Random) -> list[dict]:
    und = []
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        rel = f"images/shape_{i:03d}.png"
        draw_shape(colour, shape).save(root / rel)
        asked = (colour, shape) if rng.random() < 0.5 else (rng.choice([c for c in COLOURS if c != colour]), shape)
        answer = "Yes" if asked == (colour, shape) else "No"
        und.append(FORMAT.render(UndSample(rel, JUDGE_QUESTION.format(prompt=f"a {asked[0]} {asked[1]}"), answer)))
    return und


def _shapesworld_und_rows(root: Path, queries: list, seed: int) -> list[dict]:
    """Per prompt: a correct image and a near miss, asked the judge's question; answers from the exact oracle."""
    from PIL import Image

    from .data import near_miss, yes_no_item
    from .world import render_scene, sample_scene

    rng = random.Random(f"unigap-example-und-{seed}")
    und = []
    for query in queries:
        for scene in (sample_scene(query, rng), near_miss(query, rng)):
            item = yes_no_item(scene, query)
            rel = f"images/scene_{len(und):03d}.png"
            Image.fromarray(render_scene(item.scene)).save(root / rel)
            und.append(FORMAT.render(UndSample(rel, item.question, item.answer)))
    return und


def write_example_datasets(model_dir: str | Path, out_dir: str | Path, seed: int = 0, overwrite: bool = False):
    """Write the three example datasets and the host's index of them (atomically)."""
    import torch

    from ..codes import save_gen_image
    from ..loading import load_unified

    adapter = load_unified(str(model_dir), device="cpu", dtype="float32")
    shapesworld = is_shapesworld_model(model_dir)
    if shapesworld:
        queries = shapesworld_example_queries(model_dir)
        prompts = [q.text for q in queries]
    else:
        queries = []
        prompts = [f"a {c} {s}" for c in COLOURS for s in SHAPES]
    rng = random.Random(seed)
    counts = {}
    with atomic_directory(out_dir, overwrite=overwrite) as root, torch.no_grad():
        sft_codes = adapter.generate(prompts, seeds=[seed * 1000 + i for i in range(len(prompts))])
        sft = []
        for i, (prompt, image) in enumerate(zip(prompts, adapter.decode_codes(sft_codes))):
            rel = f"images/gen_{i:03d}.png"
            save_gen_image(root / rel, image, sft_codes[i].tolist())
            sft.append(FORMAT.render(GenSample(prompt, rel)))

        pair_codes = adapter.generate(
            [p for p in prompts for _ in range(2)], seeds=[seed * 1000 + 500 + i for i in range(2 * len(prompts))]
        )
        pair_images = adapter.decode_codes(pair_codes)
        p_yes = adapter.judge(pair_images, [JUDGE_QUESTION.format(prompt=p) for p in prompts for _ in range(2)])
        dpo = []
        for i, prompt in enumerate(prompts):
            a, b = 2 * i, 2 * i + 1
            chosen, rejected = (a, b) if p_yes[a] >= p_yes[b] else (b, a)
            rels = []
            for tag, j in (("chosen", chosen), ("rejected", rejected)):
                rel = f"images/pair_{i:03d}_{tag}.png"
                save_gen_image(root / rel, pair_images[j], pair_codes[j].tolist())
                rels.append(rel)
            dpo.append(FORMAT.render(PairSample(prompt, *rels)))

        und = _shapesworld_und_rows(root, queries, seed) if shapesworld else _generic_und_rows(root, rng)

        info = {}
        for name, rows, ranking in (("gen_sft", sft, False), ("gen_dpo", dpo, True), ("und_sft", und, False)):
            (root / f"{name}.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
            info[f"unigap_{name}"] = FORMAT.entry(f"{name}.json", ranking=ranking)
            counts[f"unigap_{name}"] = len(rows)
        FORMAT.write_index(root, info)
    return counts
