"""Curriculum replay (C-SFT, Algorithm 2): the model being trained retries its discard pool.

At the start of each replay epoch (``replay_epochs: 10`` = after 10 epochs have
been trained) every prompt still in the pool gets N new candidates from the
CURRENT model (LoRA applied, eval mode, no gradients), judged by the same
model.  Every accepted candidate becomes a training row for the remaining
epochs (SFT; for DPO the most-yes accepted vs the most-no rejected candidate
becomes a pair), tokenized by the host's own converter and processor, exactly
like the rows of the original dataset.  A prompt with an accepted candidate
leaves the pool.

Candidate ``k`` of prompt ``id`` at replay epoch ``e`` is drawn with self-play's
:func:`~unigap.selfplay.candidate_seed` ``(seed + e, id, k)``; under DDP the
ranks split the pool, then gather the codes and P(yes) so every rank adds the
same rows in the same order.

Written to ``OUTPUT_DIR/unigap_replay/epoch_E/``: ``images/`` (every candidate:
PNG + ``.codes.npy``), ``candidates.jsonl`` (P(yes), accepted), the added rows
as a dataset in the host's format (written by the host), ``pool.jsonl`` (what is left) and ``summary.json`` (tried,
recovered, rows added, per difficulty).  Each checkpoint holds
``unigap_replay.json`` (replays done, pool, the added rows as tokenized), so a
resumed run trains on the same rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import UnigapError
from .fsutil import write_text_atomic
from .rowmeta import (
    MANIFEST_FILE,
    POOL_FILE,
    REPLAY_BASE_KEYS,
    pool_mean_p_yes,
    read_replay_defaults,
    row_meta,
)
from .rowmeta import load_pool as _load_pool
from .samples import GenSample, PairSample

STATE_FILE = "unigap_replay.json"
REPLAY_DIR = "unigap_replay"


class ReplayError(UnigapError):
    """Replay settings or pool that cannot be used (the message names the item)."""


@dataclass
class ReplaySettings:
    epochs: tuple[int, ...]
    pool: Path
    num_candidates: int
    judge_threshold: float
    judge_question: str
    #: the model family's generation parameters (a SamplingParams of its family)
    sampling: Any
    seed: int
    batch_size: int
    #: where each value came from: "yaml" or the manifest path
    sources: dict[str, str] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epochs": list(self.epochs), "pool": str(self.pool),
                               "num_candidates": self.num_candidates, "judge_threshold": self.judge_threshold,
                               "judge_question": self.judge_question}
        out.update(self.sampling.as_dict(selfplay_only=True))
        out.update(seed=self.seed, batch_size=self.batch_size, sources=dict(self.sources))
        return out


def parse_epochs(value: Any) -> tuple[int, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, bool):
        raise ReplayError(f"replay_epochs must be epoch numbers, got {value!r}")
    if isinstance(value, int):
        items: list[Any] = [value]
    elif isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ReplayError(f"replay_epochs must be a list of epoch numbers, got {value!r}")
    out = []
    for item in items:
        try:
            number = int(item)
        except (TypeError, ValueError):
            raise ReplayError(f"replay_epochs: {item!r} is not an epoch number") from None
        if number < 1 or str(number) != str(item).strip():
            raise ReplayError(f"replay_epochs: {item!r} must be a whole number >= 1 (replay after that many epochs)")
        out.append(number)
    if len(set(out)) != len(out):
        raise ReplayError(f"replay_epochs lists an epoch twice: {value!r}")
    return tuple(sorted(out))


def find_pool(value: str, dataset_dir: str) -> Path:
    """``replay_pool``: a discard_pool.jsonl, a dataset folder holding one, or a dataset name in dataset_dir."""
    for candidate in (Path(value), Path(dataset_dir) / value):
        if candidate.is_file():
            return candidate
        if candidate.is_dir() and (candidate / POOL_FILE).is_file():
            return candidate / POOL_FILE
    raise ReplayError(
        f"replay_pool: {value!r} is not a {POOL_FILE}, a folder with one, or a dataset in {dataset_dir} "
        "(`unigap build sft` writes NAME/discard_pool.jsonl)"
    )


def resolve_settings(yaml_values: dict[str, Any], epochs: Any, pool: str | None, dataset_dir: str,
                     batch_size: int, sampling: Any) -> ReplaySettings:
    """Settings from YAML, else from the pool's build manifest (= the self-play run's).

    ``sampling`` is the model family's generation-parameter class; its self-play
    keys are replay settings too (``replay_<key>`` in the YAML).
    """
    parsed = parse_epochs(epochs)
    if not pool:
        raise ReplayError("replay_epochs is set but replay_pool is not: name the discard pool to replay "
                          "(a dataset written by `unigap build sft`, or its discard_pool.jsonl)")
    path = find_pool(pool, dataset_dir)
    manifest = path.parent / MANIFEST_FILE
    defaults = read_replay_defaults(manifest, ReplayError)
    sampling_keys = sampling.keys(selfplay_only=True)
    foreign = [k for k, v in yaml_values.items() if v is not None and k not in (*REPLAY_BASE_KEYS, *sampling_keys)]
    if foreign:
        raise ReplayError(f"{', '.join('replay_' + k for k in foreign)}: not a replay setting of this model's family "
                          f"(its generation keys: {', '.join('replay_' + k for k in sampling_keys)})")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in [*REPLAY_BASE_KEYS, *sampling_keys]:
        if yaml_values.get(key) is not None:
            values[key], sources[key] = yaml_values[key], "yaml"
        elif defaults.get(key) is not None:
            values[key], sources[key] = defaults[key], str(manifest)
        else:
            values[key] = None
    # a generation parameter whose family default is None (top_k, top_p) may stay unset
    optional = {k for k, v in sampling.defaults(selfplay_only=True).items() if v is None}
    missing = [k for k in [*REPLAY_BASE_KEYS, *sampling_keys] if values[k] is None and k not in optional]
    if missing:
        raise ReplayError(
            f"replay: no value for {', '.join('replay_' + k for k in missing)}: set them in the YAML (the pool "
            f"{path} has no {MANIFEST_FILE} with the self-play settings)"
        )
    try:
        settings = ReplaySettings(
            epochs=parsed,
            pool=path,
            num_candidates=int(values["num_candidates"]),
            judge_threshold=float(values["judge_threshold"]),
            judge_question=str(values["judge_question"]),
            sampling=None,
            seed=int(values["seed"]),
            batch_size=int(batch_size),
            sources=sources,
        )
    except (TypeError, ValueError) as err:
        raise ReplayError(f"replay settings: {err}") from None
    given = {k: values[k] for k in sampling_keys if values[k] is not None}
    try:
        settings.sampling = sampling.from_values(given, prefix="replay_")
    except UnigapError as err:
        raise ReplayError(str(err)) from None
    if settings.num_candidates < 1:
        raise ReplayError(f"replay_num_candidates must be >= 1, got {settings.num_candidates}")
    if not 0.0 <= settings.judge_threshold <= 1.0:
        raise ReplayError(f"replay_judge_threshold must be in [0, 1], got {settings.judge_threshold}")
    if "{prompt}" not in settings.judge_question:
        raise ReplayError(f"replay_judge_question must contain {{prompt}}, got {settings.judge_question!r}")
    if settings.batch_size < 1:
        raise ReplayError(f"replay_batch_size must be >= 1, got {settings.batch_size}")
    return settings


def load_pool(path: Path) -> list[dict[str, Any]]:
    """The discard pool (one prompt per line); errors name file:line."""
    return _load_pool(path, ReplayError)


# ----------------------------------------------------------------------------- state (checkpointed)
@dataclass
class ReplayState:
    done: list[int] = field(default_factory=list)
    #: prompt ids still in the pool, in pool order
    pool: list[str] = field(default_factory=list)
    #: every added row: {"epoch", "prompt_id", "row" (the host's format), "tokens" (host-tokenized)}
    added: list[dict[str, Any]] = field(default_factory=list)

    def save(self, folder: str | os.PathLike) -> None:
        write_text_atomic(Path(folder) / STATE_FILE, json.dumps(asdict(self), ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ReplayState | None:
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(done=list(data["done"]), pool=list(data["pool"]), added=list(data["added"]))


# ----------------------------------------------------------------------------- one replay
@dataclass
class Drawn:
    """One pool prompt's candidates (gathered across ranks)."""

    position: int
    codes: list[list[int]]
    p_yes: list[float]


def draw_pool(adapter: Any, entries: Sequence[dict[str, Any]], positions: Sequence[int], settings: ReplaySettings,
              epoch: int) -> list[Drawn]:
    """N candidates per prompt with the current model, judged by it (no gradients)."""
    import torch

    from .selfplay import draw, judge_candidates

    todo = [(entries[i]["prompt_id"], entries[i]["prompt"]) for i in positions]
    out = []
    with torch.no_grad():
        for pos, codes in draw(
            adapter, todo, num_candidates=settings.num_candidates, seed=settings.seed + epoch,
            params=settings.sampling, batch_size=settings.batch_size,
        ):
            entry = entries[positions[pos]]
            # chunks of replay_batch_size images, images dropped at once: memory follows the batch size
            _images, p_yes = judge_candidates(adapter, codes, settings.judge_question.format(prompt=entry["prompt"]),
                                              settings.batch_size, on_chunk=lambda images, scores: None)
            out.append(Drawn(positions[pos], codes.tolist(), p_yes))
    return out


def select_rows(drawn: Drawn, threshold: float, ranking: bool) -> tuple[bool, list[tuple[int, ...]]]:
    """(recovered, candidates per row): SFT = every accepted, most-yes first; DPO = (best accepted, worst rejected)."""
    order = sorted(range(len(drawn.p_yes)), key=lambda k: (-drawn.p_yes[k], k))
    accepted = [k for k in order if drawn.p_yes[k] >= threshold]
    if not ranking:
        return bool(accepted), [(k,) for k in accepted]
    rejected = [k for k in reversed(order) if drawn.p_yes[k] < threshold]
    return bool(accepted), ([(accepted[0], rejected[0])] if accepted and rejected else [])


def image_stem(position: int, candidate: int) -> str:
    return f"{position:06d}-{candidate:03d}"


def write_images(folder: Path, drawn: Sequence[Drawn], decode: Callable[[Any], list[Any]]) -> None:
    """Every candidate as PNG + exact codes (atomic writes)."""
    import torch

    from .codes import save_gen_image

    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for item in drawn:
        codes = torch.tensor(item.codes, dtype=torch.long)
        for k, (image, row) in enumerate(zip(decode(codes), item.codes)):
            save_gen_image(images_dir / f"{image_stem(item.position, k)}.png", image, row)


def build_rows(folder: Path, entries: Sequence[dict[str, Any]], drawn: Sequence[Drawn], settings: ReplaySettings,
               ranking: bool) -> tuple[list[GenSample | PairSample], list[str], dict[str, dict[str, int]]]:
    """(samples with metadata, recovered prompt ids, counts per difficulty)."""
    samples: list[GenSample | PairSample] = []
    recovered: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    for item in sorted(drawn, key=lambda d: d.position):
        entry = entries[item.position]
        ok, picks = select_rows(item, settings.judge_threshold, ranking)
        level = "unspecified" if entry.get("difficulty") is None else str(entry["difficulty"])
        c = counts.setdefault(level, {"tried": 0, "recovered": 0, "rows": 0, "accepted": 0, "candidates": 0})
        c["tried"] += 1
        c["recovered"] += int(ok)
        c["rows"] += len(picks)
        c["candidates"] += len(item.p_yes)
        c["accepted"] += sum(p >= settings.judge_threshold for p in item.p_yes)
        if ok:
            recovered.append(entry["prompt_id"])
        for pick in picks:
            paths = [str((folder / "images" / f"{image_stem(item.position, k)}.png").resolve()) for k in pick]
            acceptance = sum(p >= settings.judge_threshold for p in item.p_yes) / len(item.p_yes)
            meta = row_meta(
                prompt_id=entry["prompt_id"],
                prompt=entry["prompt"],
                image=paths[0],
                difficulty=entry.get("difficulty"),
                category=entry.get("category"),
                # the prompt's self-score in the ORIGINAL run is what orders it in the curriculum
                acceptance=float(entry.get("acceptance", 0.0)),
                mean_p_yes=pool_mean_p_yes(entry),
                p_yes=item.p_yes[pick[0]],
                replay_acceptance=acceptance,
            )
            if ranking:
                samples.append(PairSample(entry["prompt"], paths[0], paths[1], meta=meta))
            else:
                samples.append(GenSample(entry["prompt"], paths[0], meta=meta))
    return samples, recovered, counts


def write_epoch_files(folder: Path, epoch: int, entries: Sequence[dict[str, Any]], drawn: Sequence[Drawn],
                      remaining: Sequence[str], counts: dict[str, dict[str, int]],
                      settings: ReplaySettings) -> dict[str, Any]:
    """What a person reads after a replay (rank 0 only; the added rows are the host's to write)."""
    lines = []
    for item in sorted(drawn, key=lambda d: d.position):
        entry = entries[item.position]
        for k, p in enumerate(item.p_yes):
            lines.append(json.dumps({
                "prompt_id": entry["prompt_id"], "prompt": entry["prompt"], "difficulty": entry.get("difficulty"),
                "candidate": k, "p_yes": p, "accepted": p >= settings.judge_threshold,
                "image": f"images/{image_stem(item.position, k)}.png",
            }, ensure_ascii=False))
    write_text_atomic(folder / "candidates.jsonl", "".join(line + "\n" for line in lines))
    by_id = {e["prompt_id"]: e for e in entries}
    write_text_atomic(folder / "pool.jsonl",
                      "".join(json.dumps(by_id[pid], ensure_ascii=False) + "\n" for pid in remaining))
    total = {key: sum(c[key] for c in counts.values()) for key in ("tried", "recovered", "rows", "accepted",
                                                                    "candidates")}
    summary = {
        "epoch": epoch,
        "prompts_tried": total["tried"],
        "prompts_recovered": total["recovered"],
        "rows_added": total["rows"],
        "candidates": total["candidates"],
        "accepted": total["accepted"],
        "pool_left": len(remaining),
        "by_difficulty": counts,
        "settings": settings.public(),
    }
    write_text_atomic(folder / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary
