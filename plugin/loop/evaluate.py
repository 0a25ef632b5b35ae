"""Held-out evaluation of one round: the self-judge's own figures, and an oracle's or independent judge's.

A round is evaluated by a ``unigap selfplay`` run on the held-out prompts with the same seed every
round (candidate k of a prompt is drawn from the same seed in every round, so rounds are compared
image by image).  Its records hold the model's own verdicts; :func:`score_run` adds, per image, an
exact oracle's verdict and / or an independent judge's P(yes) (``eval/scores.jsonl``).  Neither is
ever used to select training data.

:func:`figures` computes, overall and per difficulty, each rate with a 95% nested bootstrap
interval (``unigap.stats``: prompts resampled, then the images within each drawn prompt):

* ``non_unification`` (own judge rejects), ``mean_p_yes`` (own judge), ``pass_at_n`` (prompts with an
  accepted image; prompts resampled);
* with an oracle: ``oracle_accuracy`` (images it finds correct), ``oracle_agreement`` (images where the
  own judge's verdict equals the oracle's);
* with an independent judge: ``judge_accuracy`` (images it accepts, P(yes) >= its threshold),
  ``judge_mean_p_yes``, ``judge_agreement`` (its verdict equals the own judge's).

:func:`paired_differences`: round b - round a of each rate, with the same bootstrap draws on both
sides (paired down to the image).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import stats
from ..errors import UnigapError
from ..fsutil import write_text_atomic
from ..report import NONE, ordered_levels
from ..runs import iter_records, resolve_inside

SCORES_FILE = "scores.jsonl"
#: metric -> (per-image value from a record and its score, whether it is per prompt)
IMAGE_METRICS: dict[str, Callable[[dict[str, Any], dict[str, Any]], float | None]] = {
    "non_unification": lambda r, s: float(not r["accepted"]),
    "mean_p_yes": lambda r, s: float(r["p_yes"]),
    "oracle_accuracy": lambda r, s: None if "oracle_correct" not in s else float(s["oracle_correct"]),
    "oracle_agreement": lambda r, s: None if "oracle_correct" not in s else float(s["oracle_correct"] == r["accepted"]),
    "judge_accuracy": lambda r, s: None if "judge_accepted" not in s else float(s["judge_accepted"]),
    "judge_mean_p_yes": lambda r, s: None if "judge_p_yes" not in s else float(s["judge_p_yes"]),
    "judge_agreement": lambda r, s: None if "judge_accepted" not in s else float(s["judge_accepted"] == r["accepted"]),
}
METRICS = ("non_unification", "mean_p_yes", "pass_at_n", "oracle_accuracy", "oracle_agreement", "judge_accuracy",
           "judge_mean_p_yes", "judge_agreement")


class EvalError(UnigapError):
    """An oracle that cannot be imported, or evaluation runs that cannot be compared."""


ORACLES = {"shapesworld": "unigap.shapesworld.world:oracle"}


def load_oracle(spec: str) -> Callable[[Any, str], bool]:
    """``module:function`` (``shapesworld`` = ShapesWorld's exact pixel oracle): ``f(image, prompt) -> bool``."""
    target = ORACLES.get(spec, spec)
    module, sep, name = target.partition(":")
    if not sep:
        raise EvalError(f"oracle {spec!r} must be 'module:function' (or one of {', '.join(ORACLES)})")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise EvalError(f"oracle {spec!r} cannot be imported: {err}") from None
    if not callable(fn):
        raise EvalError(f"oracle {spec!r} is not callable")
    return fn


def score_run(run_dir: Path, out_file: Path, *, oracle: str | None = None, judge: Any = None,
              question: str = "Does this image show {prompt}?", judge_threshold: float = 0.5,
              halfway: Callable[[], None] | None = None) -> dict[str, Any]:
    """Per image of an evaluation run: the oracle's verdict and the independent judge's P(yes), written
    (atomically) to ``out_file``; returns counts.  ``halfway`` is called after half the images (test hook)."""
    from PIL import Image

    check = load_oracle(oracle) if oracle else None
    records = list(iter_records(run_dir))
    lines = []
    for i, record in enumerate(records):
        if halfway is not None and i == len(records) // 2:
            halfway()
        score: dict[str, Any] = {"prompt_id": record["prompt_id"], "candidate": record["candidate"]}
        with Image.open(resolve_inside(run_dir, record["image"], "image")) as opened:
            image = opened.convert("RGB")
        if check is not None:
            score["oracle_correct"] = bool(check(image, record["prompt"]))
        if judge is not None:
            p = judge.p_yes([image], [question.format(prompt=record["prompt"])])[0]
            score["judge_p_yes"] = p
            score["judge_accepted"] = bool(p >= judge_threshold)
        lines.append(json.dumps(score))
    write_text_atomic(out_file, "".join(line + "\n" for line in lines))
    return {"images": len(records)}


def read_scores(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------- tables
class EvalTable:
    """One evaluation run as per-prompt tables (prompts in run order, candidates in order)."""

    def __init__(self, records: Sequence[dict[str, Any]], scores: Sequence[dict[str, Any]]):
        if scores and len(scores) != len(records):
            raise EvalError(f"{len(scores)} scores for {len(records)} records")
        by_key = {(s["prompt_id"], s["candidate"]): s for s in scores}
        self.ids: list[str] = []
        self.level: list[str] = []
        rows: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
        for record in records:
            pid = str(record["prompt_id"])
            if pid not in rows:
                rows[pid] = []
                self.ids.append(pid)
                self.level.append(record.get("difficulty") or NONE)
            rows[pid].append((record, by_key.get((record["prompt_id"], record["candidate"]), {})))
        self.counts = np.array([len(rows[p]) for p in self.ids], dtype=np.int64)
        width = int(self.counts.max()) if len(self.ids) else 1
        self.values: dict[str, np.ndarray] = {}
        for name, fn in IMAGE_METRICS.items():
            table = np.zeros((len(self.ids), width))
            missing = False
            for j, pid in enumerate(self.ids):
                for k, (record, score) in enumerate(rows[pid]):
                    value = fn(record, score)
                    if value is None:
                        missing = True
                        break
                    table[j, k] = value
            if not missing:
                self.values[name] = table
        accepted = np.array([[float(any(r["accepted"] for r, _ in rows[p]))] for p in self.ids])
        self.values["pass_at_n"] = accepted

    def cells(self, metric: str) -> np.ndarray:
        return np.ones_like(self.counts) if metric == "pass_at_n" else self.counts

    def levels(self) -> list[str]:
        return ["all", *ordered_levels(self.level)]

    def rows_of(self, level: str) -> np.ndarray:
        return np.array([level == "all" or lv == level for lv in self.level])


def _rate(values: np.ndarray, counts: np.ndarray) -> float:
    valid = np.arange(values.shape[1]) < counts[:, None]
    total = valid.sum()
    return float(np.where(valid, values, 0.0).sum() / total) if total else float("nan")


def figures(table: EvalTable, seed: int = 0) -> dict[str, dict[str, dict[str, Any]]]:
    """``{metric: {level: {"value", "ci", "prompts", "images"}}}`` for every metric the table holds."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for metric in METRICS:
        if metric not in table.values:
            continue
        out[metric] = {}
        for level in table.levels():
            mask = table.rows_of(level)
            values, counts = table.values[metric][mask], table.cells(metric)[mask]
            draws = stats.nested_bootstrap(lambda d, v=values: d.rate(v), counts, seed=seed)
            out[metric][level] = {"value": _rate(values, counts), "ci": stats.percentile_interval(draws),
                                  "prompts": int(mask.sum()), "images": int(table.counts[mask].sum())}
    return out


def paired_differences(after: EvalTable, before: EvalTable, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``after - before`` per metric (all prompts) with a paired 95% interval (same draws, image by image)."""
    if after.ids != before.ids or not np.array_equal(after.counts, before.counts):
        raise EvalError("evaluation runs of different prompts or candidate counts cannot be paired")
    out: dict[str, dict[str, Any]] = {}
    for metric in METRICS:
        if metric not in after.values or metric not in before.values:
            continue
        a, b, counts = after.values[metric], before.values[metric], after.cells(metric)
        draws = stats.nested_bootstrap(lambda d: d.rate(a) - d.rate(b), counts, seed=seed)
        ci = stats.percentile_interval(draws)
        out[metric] = {"value": _rate(a, counts) - _rate(b, counts), "ci": ci, "excludes_0": stats.excludes(ci)}
    return out


def load_table(run_dir: Path, scores_file: Path) -> EvalTable:
    return EvalTable(list(iter_records(run_dir)), read_scores(scores_file))
