"""Near misses, understanding questions and captions of ShapesWorld, and its prompt files.

Every label comes from the exact :func:`~unigap.shapesworld.world.satisfies`, never
from how an item was made: a "negative" question that happens to be true (``a red
square and a blue bar`` about a picture of ``a blue bar and a red square``) is
labelled Yes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..fsutil import write_text_atomic
from ..selfplay import DEFAULT_QUESTION
from .world import (
    COLOURS,
    GRID,
    RELATIONS,
    SHAPES,
    Obj,
    Query,
    Splits,
    all_kinds,
    caption,
    parse_prompt,
    random_scene,
    sample_scene,
    satisfies,
    scene_is_valid,
)

#: The self-judge's question (unigap selfplay's default), so understanding is trained on what the judge asks.
QUESTION = DEFAULT_QUESTION
#: The captioning auxiliary task (every answer token supervised: what made understanding learnable).
CAPTION_QUESTION = "Describe the image."
YES, NO = "Yes", "No"


# ----------------------------------------------------------------------------- scene edits
def _other(values: Sequence[str], value: str, rng: random.Random) -> str:
    return rng.choice([v for v in values if v != value])


def flip(objects: Sequence[Obj], horizontal: bool) -> list[Obj]:
    """Mirror a scene left-right (``horizontal``) or top-bottom."""
    out = []
    for o in objects:
        h, w = SHAPES[o.shape]
        if horizontal:
            out.append(Obj(o.colour, o.shape, o.row, GRID - o.col - w))
        else:
            out.append(Obj(o.colour, o.shape, GRID - o.row - h, o.col))
    return out


EDITS = ("recolour", "reshape", "move", "add", "drop", "flip")


def edit_scene(objects: Sequence[Obj], edit: str, rng: random.Random) -> list[Obj] | None:
    """One small change to a scene (None when it cannot be applied or gives an invalid scene)."""
    objects = list(objects)
    if edit in ("recolour", "reshape", "move", "drop") and not objects:
        return None
    i = rng.randrange(len(objects)) if objects else 0
    if edit == "recolour":
        o = objects[i]
        objects[i] = Obj(_other(COLOURS, o.colour, rng), o.shape, o.row, o.col)
    elif edit == "reshape":
        o = objects[i]
        objects[i] = Obj(o.colour, _other(list(SHAPES), o.shape, rng), o.row, o.col)
        if not scene_is_valid(objects):  # a bar may not fit where the square was: shift it left
            objects[i] = Obj(objects[i].colour, objects[i].shape, o.row, max(0, o.col - 1))
    elif edit == "move":
        o = objects[i]
        h, w = SHAPES[o.shape]
        objects[i] = Obj(o.colour, o.shape, rng.randrange(GRID - h + 1), rng.randrange(GRID - w + 1))
        if objects[i] == o:
            return None
    elif edit == "add":
        colour, shape = rng.choice(all_kinds())
        h, w = SHAPES[shape]
        objects.append(Obj(colour, shape, rng.randrange(GRID - h + 1), rng.randrange(GRID - w + 1)))
    elif edit == "drop":
        objects.pop(i)
    elif edit == "flip":
        objects = flip(objects, horizontal=rng.random() < 0.5)
    else:
        raise ValueError(f"unknown edit {edit!r}")
    return objects if scene_is_valid(objects) else None


def near_miss(query: Query, rng: random.Random, edits: Sequence[str] = EDITS, tries: int = 200) -> list[Obj]:
    """A valid scene one edit away from a correct image of ``query`` that does NOT satisfy it."""
    for _ in range(tries):
        scene = sample_scene(query, rng)
        edit = rng.choice(list(edits))
        if edit == "flip" and query.relation is None:
            edit = rng.choice([e for e in edits if e != "flip"] or ["move"])
        changed = edit_scene(scene, edit, rng)
        if changed is not None and not satisfies(changed, query):
            return changed
    raise RuntimeError(f"no near miss found for {query.text!r}")


# ----------------------------------------------------------------------------- prompt edits
def neighbour_queries(query: Query) -> list[Query]:
    """Prompts one edit away from ``query``: a colour, a shape, the relation, the order, an object more or less."""
    out: set[Query] = set()
    kinds = list(query.kinds)
    for i, (colour, shape) in enumerate(kinds):
        for c in COLOURS:
            if c != colour:
                out.add(_query(kinds[:i] + [(c, shape)] + kinds[i + 1 :], query.relation))
        for s in SHAPES:
            if s != shape:
                out.add(_query(kinds[:i] + [(colour, s)] + kinds[i + 1 :], query.relation))
    if query.relation is not None:
        out.add(_query(kinds[::-1], query.relation))
        for rel in RELATIONS:
            if rel != query.relation:
                out.add(_query(kinds, rel))
                out.add(_query(kinds[::-1], rel))
        out.add(_query(kinds, None))
    if len(kinds) == 1:
        out.add(_query(kinds * 2, None))
        for k in all_kinds():
            if k != kinds[0]:
                out.add(_query([kinds[0], k], None))
    else:
        out.add(_query(kinds[:1], None))
        out.add(_query(kinds[1:], None))
    out.discard(None)  # type: ignore[arg-type]
    out.discard(query)
    return sorted(out, key=lambda q: q.text)


def _query(kinds: list[tuple[str, str]], relation: str | None) -> Query | None:
    if relation is not None and (len(kinds) != 2 or kinds[0] == kinds[1]):
        return None
    return Query(tuple(kinds), relation)


# ----------------------------------------------------------------------------- items
@dataclass(frozen=True)
class UndItem:
    """One understanding sample: a scene, a question about it and the exact answer."""

    scene: tuple[Obj, ...]
    question: str
    answer: str
    #: the prompt the question asks about (None for a caption)
    query: Query | None = None
    kind: str = "yesno"


def yes_no_item(scene: Sequence[Obj], query: Query, kind: str = "yesno") -> UndItem:
    answer = YES if satisfies(scene, query) else NO
    return UndItem(tuple(scene), QUESTION.format(prompt=query.text), answer, query, kind)


def caption_item(scene: Sequence[Obj]) -> UndItem:
    return UndItem(tuple(scene), CAPTION_QUESTION, caption(scene), None, "caption")


def training_item(query: Query, rng: random.Random, allowed: Collection[Query], hardness: float = 1.0) -> UndItem:
    """A Yes/No sample about a prompt of ``allowed`` (its questions never name another prompt).

    Half are true (an image of ``query``, asked about ``query``); the other half
    are negatives: with probability ``1 - hardness`` an easy one (an image of a
    random other prompt), else a hard one: a near-miss image asked about
    ``query``, or an image of ``query`` asked about a one-edit neighbour.
    """
    pool = list(allowed)
    if rng.random() < 0.5:
        return yes_no_item(sample_scene(query, rng), query, "yes")
    if rng.random() >= hardness:
        other = rng.choice([q for q in pool if q != query])
        return yes_no_item(sample_scene(other, rng), query, "easy-negative")
    if rng.random() < 0.5:
        return yes_no_item(near_miss(query, rng), query, "near-miss")
    allowed_set = set(pool)
    neighbours = [q for q in neighbour_queries(query) if q in allowed_set]
    if not neighbours:
        return yes_no_item(near_miss(query, rng), query, "near-miss")
    return yes_no_item(sample_scene(query, rng), rng.choice(neighbours), "edited-question")


def eval_item(query: Query, rng: random.Random, positive: bool) -> UndItem:
    """The judge's own situation: asked about ``query``, shown a correct image or a near miss."""
    scene = sample_scene(query, rng) if positive else near_miss(query, rng)
    return yes_no_item(scene, query, "yes" if positive else "near-miss")


def caption_scene(rng: random.Random, queries: Sequence[Query]) -> list[Obj]:
    """A scene to describe: half the time an image of a prompt of ``queries``, else a random scene."""
    if queries and rng.random() < 0.5:
        return sample_scene(rng.choice(list(queries)), rng)
    return random_scene(rng)


# ----------------------------------------------------------------------------- prompt files
def write_prompt_files(splits: Splits, out_dir: str | Path) -> dict[str, Path]:
    """``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` in the format ``unigap selfplay`` reads."""
    out_dir = Path(out_dir)
    paths = {}
    for name in ("train", "val", "test"):
        lines = [json.dumps(q.to_prompt_row()) for q in splits.of(name)]
        path = out_dir / f"{name}.jsonl"
        write_text_atomic(path, "\n".join(lines) + "\n")
        paths[name] = path
    return paths


def read_prompt_file(path: str | Path) -> list[Query]:
    """The queries of a prompt file (``unigap selfplay``'s format, e.g. a model's ``prompts/test.jsonl``)."""
    from ..prompts import load_prompt_file

    return [parse_prompt(p.text) for p in load_prompt_file(path)]
