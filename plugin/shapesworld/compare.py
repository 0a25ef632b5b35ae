"""``unigap evidence-compare``: the paper's claims side by side for several ``unigap evidence`` runs.

Each run is one model (typically one per family: ``models/shapes-janus`` and
``models/shapes-showo``); every claim gets one table whose columns are the runs
and whose rows are the claim's figures with their 95% intervals, then each
run's verdict.  Nothing is recomputed: the figures and verdicts are those of
each run's ``evidence.json``.

The one figure made here is the difference between two runs' base-model
rates (the paper's first contrast: Janus-Pro rejects far more of its own
images than Show-o).  Two runs share no samples, so the interval of their
difference is the normal approximation from the two intervals (each run's
half-width / 1.96 as its standard error); it is marked as such.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import UnigapError
from ..fsutil import write_text_atomic
from .world import LEVELS

RESULT_FILE = "evidence.json"


class CompareError(UnigapError):
    """An evidence directory that cannot be compared (missing, unfinished, or of another version)."""


def load_run(path: str | Path) -> dict[str, Any]:
    """One finished ``unigap evidence`` output directory (or its ``evidence.json``)."""
    path = Path(path)
    file = path / RESULT_FILE if path.is_dir() else path
    if not file.is_file():
        raise CompareError(f"{path}: no {RESULT_FILE} (run `unigap evidence --out {path}` to the end first)")
    try:
        result = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CompareError(f"{file}: not readable JSON ({err})") from None
    for key in ("claims", "table", "config"):
        if key not in result:
            raise CompareError(f"{file}: no '{key}' (not an evidence result of this unigap version)")
    return result


def label_of(result: dict[str, Any], used: Sequence[str] = ()) -> str:
    """A column name: the model directory's name (``shapes-janus``), made unique."""
    name = Path(str(result["config"].get("model", "model"))).name or "model"
    label, k = name, 2
    while label in used:
        label, k = f"{name} ({k})", k + 1
    return label


def _cell(entry: dict[str, Any] | None, signed: bool = False, scale: float = 100.0, digits: int = 1) -> str:
    if not entry or entry.get("value") is None or (isinstance(entry["value"], float) and math.isnan(entry["value"])):
        return "n/a"
    value, ci = entry["value"] * scale, entry.get("ci") or [math.nan, math.nan]
    sign = "+" if signed else ""
    if any(isinstance(c, float) and math.isnan(c) for c in ci):
        return f"{value:{sign}.{digits}f}"
    return f"{value:{sign}.{digits}f} [{ci[0] * scale:{sign}.{digits}f}, {ci[1] * scale:{sign}.{digits}f}]"


def _get(result: dict[str, Any], *keys: str) -> Any:
    node: Any = result
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _se(entry: dict[str, Any]) -> float:
    lo, hi = entry["ci"]
    return (hi - lo) / (2 * 1.959964)


def unpaired_difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a - b of two independent rates, interval by the normal approximation from their two intervals."""
    value = a["value"] - b["value"]
    half = 1.959964 * math.hypot(_se(a), _se(b))
    return {"value": value, "ci": [value - half, value + half], "method": "normal approximation, unpaired"}


#: per claim: (title, the paper's statement, rows of (figure, path into evidence.json, signed))
Row = tuple[str, Callable[[dict[str, Any]], Any], bool]


def _rows() -> list[tuple[str, str, str, list[Row]]]:
    def claim(n: str, *keys: str) -> Callable[[dict[str, Any]], Any]:
        return lambda r: _get(r, "claims", n, *keys)

    def table(model: str, *keys: str) -> Callable[[dict[str, Any]], Any]:
        return lambda r: _get(r, "table", model, *keys)

    return [
        ("0", "How far the base model is from unified",
         "Janus-Pro-7B rejects 26% of its own T2I-CompBench images, Show-o under 1%; understanding is strong",
         [("non-unification, all test prompts (%)", table("base", "non_unification", "all"), False),
          ("generation accuracy by the oracle (%)", table("base", "oracle_accuracy", "all"), False),
          ("understanding accuracy (%)", table("base", "understanding_accuracy"), False),
          ("understanding Yes share (%; truth 50)", table("base", "understanding_yes_share"), False)]),
        ("1", "non-unification grows with task difficulty", "",
         [*((f"non-unification, {lv} (%)", table("base", "non_unification", lv), False) for lv in LEVELS),
          ("hard - easy (points)", claim("1", "test_differences", "hard-easy"), True),
          ("train-prompt self-play, hard - easy (points)", claim("1", "train_selfplay_hard_minus_easy"), True)]),
        ("2", "the gap comes from weak generation, not misunderstanding", "",
         [("rejected images the oracle also rejects (%)", claim("2", "rejected_oracle_also_rejects"), False),
          ("accepted images the oracle accepts (%)", claim("2", "accepted_oracle_accepts"), False)]),
        ("3", "SFT on self-accepted images lowers non-unification and raises generation accuracy", "",
         [("non-unification, SFT - base (points)", claim("3", "non_unification_sft_minus_base"), True),
          ("oracle accuracy, SFT - base (points)", claim("3", "oracle_accuracy_sft_minus_base"), True),
          ("oracle accuracy on the trained prompts, SFT - base",
           claim("3", "seen_prompts", "oracle_accuracy_minus_base"), True)]),
        ("4", "generation-only SFT also improves understanding (co-improvement)", "",
         [("understanding accuracy, SFT - base (points)", claim("4", "understanding_accuracy_sft_minus_base"), True)]),
        ("5", "C-SFT adds on top of SFT; DPO gains less than SFT", "",
         [("oracle accuracy, C-SFT - SFT (points)", claim("5", "oracle_accuracy_csft_minus_sft"), True),
          ("oracle accuracy, DPO - SFT (points)", claim("5", "oracle_accuracy_dpo_minus_sft"), True)]),
        ("6", "generation and understanding gradients align for matched samples", "",
         [("cosine, matched", claim("6", "cosine_matched"), True),
          ("cosine, unmatched", claim("6", "cosine_unmatched"), True),
          ("cosine, matched - unmatched", claim("6", "matched_minus_unmatched"), True)]),
    ]


def compare(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The comparison as data: per claim, per run, its figures (value + CI) and verdict."""
    if len(results) < 2:
        raise CompareError("give at least two evidence directories to compare")
    labels: list[str] = []
    for r in results:
        labels.append(label_of(r, labels))
    claims: dict[str, Any] = {}
    for number, title, paper, rows in _rows():
        figures = {label: {name: get(r) for name, get, _ in rows} for label, r in zip(labels, results)}
        verdicts = {label: _get(r, "claims", number, "verdict") for label, r in zip(labels, results)}
        claims[number] = {"claim": title, "paper": paper, "figures": figures, "verdicts": verdicts}
    base = [_get(r, "table", "base", "non_unification", "all") for r in results]
    if all(base[:2]):
        claims["0"]["difference"] = {"runs": labels[:2], **unpaired_difference(base[0], base[1])}
    runs = [{"label": label, "model": r["config"].get("model"), "seeds": r["config"].get("seeds"),
             "sampling": r["config"].get("sampling"), "prompts": r.get("prompts"), "seconds": r.get("seconds")}
            for label, r in zip(labels, results)]
    return {"runs": runs, "claims": claims}


def markdown(comparison: dict[str, Any]) -> str:
    runs = comparison["runs"]
    labels = [r["label"] for r in runs]
    lines = ["# unigap evidence, side by side", "",
             "Each column is one `unigap evidence` run (its model, seeds and sampling below); figures in % (or "
             "points for differences) with [95% CI] as that run computed them: a bootstrap over seeds, then test "
             "prompts, then the images / questions of each. A verdict is *confirmed* when the interval excludes "
             "no effect on the claimed side, *refuted* when it excludes it on the other side, *not confirmed* "
             "otherwise.", "",
             "| run | model | seeds | sampling | test prompts | time in its stages |", "|---|---|---|---|---|---|"]
    for r in runs:
        sampling = ", ".join(f"{k} {v}" for k, v in (r.get("sampling") or {}).items() if v is not None)
        seconds = sum((r.get("seconds") or {}).values())
        lines.append(f"| {r['label']} | `{r['model']}` | {', '.join(map(str, r.get('seeds') or []))} | {sampling} | "
                     f"{r.get('prompts')} | {seconds / 60:.0f} min |")
    signed = {name: s for _, _, _, rows in _rows() for name, _, s in rows}
    for number, entry in comparison["claims"].items():
        head = f"## {number}. {entry['claim']}" if number != "0" else f"## {entry['claim']}"
        lines += ["", head, ""]
        if entry.get("paper"):
            lines += [f"Paper: {entry['paper']}.", ""]
        lines += ["| figure | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        names = list(next(iter(entry["figures"].values())))
        for name in names:
            scale, digits = (1.0, 3) if name.startswith("cosine") else (100.0, 1)  # cosines as they are
            lines.append(f"| {name} | " + " | ".join(_cell(entry["figures"][label][name], signed[name], scale, digits)
                                                     for label in labels) + " |")
        if any(entry["verdicts"].values()):
            lines.append("| **verdict** | " + " | ".join(f"**{entry['verdicts'][label] or 'n/a'}**" for label in labels)
                         + " |")
        if "difference" in entry:
            d = entry["difference"]
            lines += ["", f"Base non-unification, {d['runs'][0]} - {d['runs'][1]}: {_cell(d, True)} points "
                      f"({d['method']}: the runs share no samples)."]
    lines.append("")
    return "\n".join(lines)


def write_comparison(dirs: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Compare the evidence runs in ``dirs``; write ``out/compare.md`` and ``out/compare.json`` atomically."""
    comparison = compare([load_run(d) for d in dirs])
    comparison["sources"] = [str(d) for d in dirs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "compare.json", json.dumps(comparison, indent=1) + "\n")
    write_text_atomic(out / "compare.md", markdown(comparison))
    return comparison
