"""ShapesWorld: a seeded miniature world whose truth is known exactly.

Images are ``GRID x GRID`` cells of ``CELL x CELL`` pixels on black (32 x 32 px,
16 cells: one cell = one VQ code = one vision patch).  An object is a square
(one cell) or a horizontal bar (two cells) in one of three colours; objects of
one scene never touch, not even diagonally.

Prompts (a closed world: the image shows exactly the named objects, nothing else):

- easy: one object, ``a red square``;
- medium: counting ``two blue bars`` and colour binding ``a red square and a green bar``;
- hard: a spatial relation between two objects with their attributes,
  ``a red square left of a green bar`` / ``... above ...`` (A's every cell is in a
  column left of B's every cell / a row above B's every row).

The oracle reads pixels only: the nearest palette colour of each cell's mean,
4-connected blobs per colour, each blob a square or a bar (anything else is a
malformed image and satisfies no prompt), then the multiset of objects and the
relation.  :func:`render` draws a random correct image for any prompt.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

GRID = 4
CELL = 8
SIZE = GRID * CELL
BACKGROUND = "black"
#: Palette: index = cell state = VQ code (0 is the background).
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
}
COLOURS: tuple[str, ...] = ("red", "green", "blue")
COLOUR_INDEX = {name: i for i, name in enumerate(PALETTE)}
PALETTE_ARRAY = np.array(list(PALETTE.values()), dtype=np.float32)
#: shape name -> (height, width) in cells
SHAPES: dict[str, tuple[int, int]] = {"square": (1, 1), "bar": (1, 2)}
RELATIONS: tuple[str, ...] = ("left of", "above")
LEVELS: tuple[str, ...] = ("easy", "medium", "hard")
#: a cell whose mean colour lies farther than this (RGB distance) from every palette colour is unreadable
COLOUR_TOLERANCE = 100.0

Kind = tuple[str, str]  # (colour, shape)


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    row: int
    col: int

    @property
    def kind(self) -> Kind:
        return (self.colour, self.shape)

    def cells(self) -> list[tuple[int, int]]:
        h, w = SHAPES[self.shape]
        return [(self.row + dr, self.col + dc) for dr in range(h) for dc in range(w)]


@dataclass(frozen=True)
class Query:
    """What a prompt asks for: an ordered tuple of object kinds and an optional relation (obj 0 REL obj 1)."""

    kinds: tuple[Kind, ...]
    relation: str | None = None

    @property
    def level(self) -> str:
        if self.relation is not None:
            return "hard"
        return "easy" if len(self.kinds) == 1 else "medium"

    @property
    def category(self) -> str:
        if self.relation is not None:
            return self.relation.replace(" ", "-")
        if len(self.kinds) == 1:
            return "single"
        return "count" if self.kinds[0] == self.kinds[1] else "binding"

    @property
    def text(self) -> str:
        if self.relation is not None:
            (c1, s1), (c2, s2) = self.kinds
            return f"a {c1} {s1} {self.relation} a {c2} {s2}"
        if len(self.kinds) == 1:
            c, s = self.kinds[0]
            return f"a {c} {s}"
        if self.kinds[0] == self.kinds[1]:
            c, s = self.kinds[0]
            return f"two {c} {s}s"
        (c1, s1), (c2, s2) = self.kinds
        return f"a {c1} {s1} and a {c2} {s2}"

    @property
    def id(self) -> str:
        return f"{self.level}-" + self.text.replace(" ", "-")

    def to_prompt_row(self) -> dict[str, str]:
        """One line of a prompt file as ``unigap selfplay`` reads it."""
        return {"id": self.id, "prompt": self.text, "difficulty": self.level, "category": self.category}


def all_kinds() -> list[Kind]:
    return [(c, s) for c in COLOURS for s in SHAPES]


def all_queries() -> list[Query]:
    """Every prompt of the world, in a fixed order (easy, then medium, then hard)."""
    kinds = all_kinds()
    easy = [Query((k,)) for k in kinds]
    medium = [Query((k, k)) for k in kinds] + [Query((a, b)) for a in kinds for b in kinds if a != b]
    hard = [Query((a, b), rel) for rel in RELATIONS for a in kinds for b in kinds if a != b]
    return easy + medium + hard


_PLURAL = {f"{s}s": s for s in SHAPES}


def parse_prompt(text: str) -> Query:
    """The inverse of :attr:`Query.text` (ValueError for text outside the world's grammar)."""
    words = text.strip().split()
    try:
        if words[0] == "two" and len(words) == 3 and words[1] in COLOURS and words[2] in _PLURAL:
            kind = (words[1], _PLURAL[words[2]])
            return Query((kind, kind))
        if words[0] == "a" and len(words) >= 3 and words[1] in COLOURS and words[2] in SHAPES:
            first = (words[1], words[2])
            if len(words) == 3:
                return Query((first,))
            rest = words[3:]
            rel = None
            if rest[0] == "and":
                rest = rest[1:]
            elif rest[0] in RELATIONS:
                rel, rest = rest[0], rest[1:]
            elif " ".join(rest[:2]) in RELATIONS:
                rel, rest = " ".join(rest[:2]), rest[2:]
            else:
                raise ValueError
            if len(rest) == 3 and rest[0] == "a" and rest[1] in COLOURS and rest[2] in SHAPES:
                second = (rest[1], rest[2])
                if first == second:
                    raise ValueError
                return Query((first, second), rel)
    except (IndexError, ValueError):
        pass
    raise ValueError(f"not a ShapesWorld prompt: {text!r}")


# ----------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class Splits:
    train: tuple[Query, ...]
    val: tuple[Query, ...]
    test: tuple[Query, ...]

    def of(self, name: str) -> tuple[Query, ...]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"no split {name!r} (train, val, test)")
        return getattr(self, name)

    @property
    def held_out(self) -> tuple[Query, ...]:
        return self.val + self.test


def make_splits(seed: int = 0, val_share: float = 0.15, test_share: float = 0.2) -> Splits:
    """Per level, a seeded shuffle cut into test / val / train (each level keeps >= 1 prompt in each split).

    Held-out prompts are new combinations of known words: a shuffle that leaves a
    word of a val / test prompt out of every train prompt (say all ``two ... bars``
    held out, so ``bars`` is never read in training) is redrawn.
    """
    rng = random.Random(f"shapesworld-splits-{seed}")
    queries = all_queries()
    for _ in range(10_000):
        train: list[Query] = []
        val: list[Query] = []
        test: list[Query] = []
        for level in LEVELS:
            items = [q for q in queries if q.level == level]
            rng.shuffle(items)
            n_test = max(1, round(test_share * len(items)))
            n_val = max(1, round(val_share * len(items)))
            test += items[:n_test]
            val += items[n_test : n_test + n_val]
            train += items[n_test + n_val :]
        known = {word for q in train for word in q.text.split()}
        if all(word in known for q in val + test for word in q.text.split()):
            return Splits(tuple(train), tuple(val), tuple(test))
    raise RuntimeError("no split keeps every held-out word in the train prompts; lower the held-out shares")


# ----------------------------------------------------------------------------- scenes
def _fits(obj: Obj) -> bool:
    return all(0 <= r < GRID and 0 <= c < GRID for r, c in obj.cells())


def scene_is_valid(objects: Sequence[Obj]) -> bool:
    """Every object inside the grid and no two objects touching (not even at a corner)."""
    if not all(_fits(o) for o in objects):
        return False
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            for ra, ca in a.cells():
                for rb, cb in b.cells():
                    if abs(ra - rb) <= 1 and abs(ca - cb) <= 1:
                        return False
    return True


def relation_holds(a: Obj, b: Obj, relation: str) -> bool:
    if relation == "left of":
        return max(c for _, c in a.cells()) < min(c for _, c in b.cells())
    if relation == "above":
        return max(r for r, _ in a.cells()) < min(r for r, _ in b.cells())
    raise ValueError(f"unknown relation {relation!r}")


def satisfies(objects: Sequence[Obj], query: Query) -> bool:
    """The scene shows exactly the query's objects (as a multiset) and, for a relation, in that relation."""
    if sorted(o.kind for o in objects) != sorted(query.kinds):
        return False
    if query.relation is None:
        return True
    first, second = query.kinds
    return any(
        relation_holds(a, b, query.relation)
        for a in objects
        if a.kind == first
        for b in objects
        if b.kind == second and b is not a
    )


def random_placement(kinds: Sequence[Kind], rng: random.Random, tries: int = 1000) -> list[Obj]:
    """Non-touching random positions for ``kinds`` (rejection sampling)."""
    for _ in range(tries):
        objects = []
        for colour, shape in kinds:
            h, w = SHAPES[shape]
            objects.append(Obj(colour, shape, rng.randrange(GRID - h + 1), rng.randrange(GRID - w + 1)))
        if scene_is_valid(objects):
            return objects
    raise RuntimeError(f"no valid placement of {list(kinds)} found")


def sample_scene(query: Query, rng: random.Random, tries: int = 1000) -> list[Obj]:
    """A random scene that satisfies ``query`` (object order in the list is shuffled)."""
    for _ in range(tries):
        objects = random_placement(query.kinds, rng)
        if satisfies(objects, query):
            rng.shuffle(objects)
            return objects
    raise RuntimeError(f"no scene found for {query.text!r}")


def random_scene(rng: random.Random, max_objects: int = 3) -> list[Obj]:
    """Any valid scene of 0..max_objects random objects (for captions and easy negatives)."""
    while True:  # some draws cannot be placed (three bars never fit apart): draw again
        n = min(rng.choice((1, 1, 2, 2, 2, 3)), max_objects)
        kinds = [rng.choice(all_kinds()) for _ in range(n)]
        try:
            return random_placement(kinds, rng, tries=200)
        except RuntimeError:
            continue


# ----------------------------------------------------------------------------- pixels
def cell_grid(objects: Sequence[Obj]) -> np.ndarray:
    """(GRID, GRID) palette indices of a scene (0 = background)."""
    grid = np.zeros((GRID, GRID), dtype=np.int64)
    for obj in objects:
        for r, c in obj.cells():
            grid[r, c] = COLOUR_INDEX[obj.colour]
    return grid


def grid_to_image(grid: np.ndarray) -> np.ndarray:
    """(GRID, GRID) palette indices -> (SIZE, SIZE, 3) uint8 pixels."""
    cells = PALETTE_ARRAY.astype(np.uint8)[np.asarray(grid, dtype=np.int64)]
    return np.repeat(np.repeat(cells, CELL, axis=0), CELL, axis=1)


def render_scene(objects: Sequence[Obj]) -> np.ndarray:
    return grid_to_image(cell_grid(objects))


def render(query: Query, rng: random.Random) -> tuple[np.ndarray, list[Obj]]:
    """A random correct image of ``query``: (pixels, the scene drawn)."""
    scene = sample_scene(query, rng)
    return render_scene(scene), scene


def read_cells(image: np.ndarray | object) -> np.ndarray | None:
    """Pixels -> (GRID, GRID) palette indices (nearest palette colour of each cell's mean); None if unreadable."""
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.shape[:2] != (SIZE, SIZE):
        raise ValueError(f"a ShapesWorld image is {SIZE}x{SIZE}, got {pixels.shape}")
    pixels = pixels[..., :3]
    means = pixels.reshape(GRID, CELL, GRID, CELL, 3).mean(axis=(1, 3))
    dist = np.linalg.norm(means[:, :, None, :] - PALETTE_ARRAY[None, None], axis=-1)
    index = dist.argmin(-1)
    if (dist.min(-1) > COLOUR_TOLERANCE).any():
        return None
    return index


def parse_grid(grid: np.ndarray) -> list[Obj] | None:
    """Cells -> objects (4-connected blobs per colour); None if a blob is neither a square nor a bar."""
    names = list(PALETTE)
    seen = np.zeros_like(grid, dtype=bool)
    objects: list[Obj] = []
    for r in range(GRID):
        for c in range(GRID):
            if grid[r, c] == 0 or seen[r, c]:
                continue
            colour = int(grid[r, c])
            blob, stack = [], [(r, c)]
            seen[r, c] = True
            while stack:
                y, x = stack.pop()
                blob.append((y, x))
                for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                    if 0 <= ny < GRID and 0 <= nx < GRID and not seen[ny, nx] and grid[ny, nx] == colour:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
            rows = [y for y, _ in blob]
            cols = [x for _, x in blob]
            top, left = min(rows), min(cols)
            height, width = max(rows) - top + 1, max(cols) - left + 1
            shape = next((s for s, hw in SHAPES.items() if hw == (height, width) and len(blob) == height * width), None)
            if shape is None:
                return None
            objects.append(Obj(names[colour], shape, top, left))
    return objects


def parse_image(image: np.ndarray | object) -> list[Obj] | None:
    """Pixels -> the scene they show, or None for a malformed image."""
    grid = read_cells(image)
    return None if grid is None else parse_grid(grid)


def oracle(image: np.ndarray | object, prompt: str | Query) -> bool:
    """Does ``image`` (H x W x 3 pixels or a PIL image) show exactly what ``prompt`` describes?"""
    query = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    scene = parse_image(image)
    return scene is not None and satisfies(scene, query)


def caption(objects: Iterable[Obj]) -> str:
    """The canonical description of a scene: objects in reading order with their top-left cell."""
    ordered = sorted(objects, key=lambda o: (o.row, o.col))
    if not ordered:
        return "nothing."
    return "; ".join(f"{o.colour} {o.shape} at {o.row} {o.col}" for o in ordered) + "."
