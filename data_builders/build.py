"""``unigap build sft|dpo``: self-play runs -> datasets in the host's format.

The builders produce host-neutral samples (:mod:`unigap.samples`); the host's
:class:`~unigap.samples.DatasetFormat` (given by the command line, e.g.
LLaMA-Factory's sharegpt rows) renders them and keeps the dataset index.
Layout written (``DATASET_DIR`` is ``--out``)::

    DATASET_DIR/
      <index file>             the host's dataset index, merged: NAME (and NAME_und) added / replaced,
                               nothing else touched
      NAME/
        data.jsonl             generation SFT rows, or DPO rows (``ranking: true``)
        und.jsonl              sft --with-und: understanding rows (entry NAME_und)
        discard_pool.jsonl     prompts with no accepted candidate (one line each): what C-SFT replays
        manifest.json          source runs (fingerprints, records sha256), options, counts per difficulty
        images/000012-003.png  + 000012-003.codes.npy, hard-linked from the run (or copied)

Rows name images relative to DATASET_DIR (``NAME/images/...``), which is how
the host resolves them.  Selection (``accepted`` = the record's own verdict,
or ``p_yes >= --threshold`` when given):

* SFT (Algorithm 1): every accepted candidate of a prompt is a row, most-yes
  first; ``--best-of-n`` keeps only the top candidate, ``--max-per-prompt K``
  the top K.  ``--with-und`` adds every judged candidate as an understanding
  row (image + the run's judge question -> "Yes" / "No", the self-judgment).
* DPO: chosen = highest P(yes), rejected = lowest, only when chosen is accepted
  and rejected is not (``--any-outcome`` drops that condition), with margin at
  least ``--min-margin``; ``--pairs K`` takes the K outermost such pairs
  (2nd best vs 2nd worst, ...); ``--all-pairs`` takes every accepted x rejected
  pair, largest margin first, capped by ``--pairs`` when given.

Ties in P(yes) are broken by candidate number (lower first), so builds are
deterministic.

Every row also carries a ``unigap`` object (:mod:`unigap.rowmeta`; ignored by the
host, which keeps only the columns its index names): the prompt id and text, the row's
own image path (its identity), difficulty, category, and the prompt's
self-score in the run (acceptance rate, mean P(yes)) plus the row's P(yes).
unigap's curriculum sampler reads it (``unigap.curriculum``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from .. import __version__
from ..codes import CODES_SUFFIX, GenImageError
from ..rowmeta import MANIFEST_FILE, POOL_FILE, pool_entry
from ..rowmeta import replay_defaults as _replay_defaults
from ..rowmeta import row_meta as _row_meta
from ..samples import DatasetFormat, GenSample, PairSample, UndSample
from .output import BuildError, Output, format_counts, now_iso, place_file
from .runsource import Candidate, CodesChecker, PromptGroup, RunSource, check_png_fast

DATA_FILE = "data.jsonl"
UND_FILE = "und.jsonl"
DISCARD_FILE = POOL_FILE
IMAGES = "images"


def row_meta(group: PromptGroup, cand: Candidate, image: str, accepted: Callable[[Candidate], bool]) -> dict[str, Any]:
    """What the curriculum sampler needs to know about a row (keyed by the row's own image)."""
    first = group.first
    cands = group.candidates
    return _row_meta(
        prompt_id=first["prompt_id"],
        prompt=first["prompt"],
        image=image,
        difficulty=first["difficulty"],
        category=first["category"],
        acceptance=sum(1 for c in cands if accepted(c)) / len(cands),
        mean_p_yes=sum(c.p for c in cands) / len(cands),
        p_yes=cand.p,
    )


@dataclass
class SftOptions:
    threshold: float | None = None
    best_of_n: bool = False
    max_per_prompt: int | None = None
    with_und: bool = False

    def validate(self) -> None:
        _check_threshold(self.threshold)
        if self.max_per_prompt is not None and self.max_per_prompt < 1:
            raise BuildError(f"--max-per-prompt must be >= 1, got {self.max_per_prompt}")


@dataclass
class DpoOptions:
    threshold: float | None = None
    min_margin: float = 0.0
    pairs: int | None = None
    all_pairs: bool = False
    any_outcome: bool = False

    def validate(self) -> None:
        _check_threshold(self.threshold)
        if not 0.0 <= self.min_margin <= 1.0:
            raise BuildError(f"--min-margin must be in [0, 1], got {self.min_margin}")
        if self.pairs is not None and self.pairs < 1:
            raise BuildError(f"--pairs must be >= 1, got {self.pairs}")


def _check_threshold(value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise BuildError(f"--threshold must be in [0, 1], got {value}")


# ---------------------------------------------------------------------- selection (pure)
def ranked(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Most-yes first; equal P(yes) in candidate order."""
    return sorted(candidates, key=lambda c: (-c.p, c.index))


def accept_fn(threshold: float | None) -> Callable[[Candidate], bool]:
    if threshold is None:
        return lambda c: c.record["accepted"]
    return lambda c: c.p >= threshold


def select_sft(group: list[Candidate], accepted: Callable[[Candidate], bool], opts: SftOptions) -> list[Candidate]:
    chosen = [c for c in ranked(group) if accepted(c)]
    if opts.best_of_n:
        chosen = chosen[:1]
    if opts.max_per_prompt is not None:
        chosen = chosen[: opts.max_per_prompt]
    return chosen


def select_pairs(
    group: list[Candidate], accepted: Callable[[Candidate], bool], opts: DpoOptions
) -> list[tuple[Candidate, Candidate]]:
    order = ranked(group)

    def ok(c: Candidate, r: Candidate) -> bool:
        if c.p <= r.p or c.p - r.p < opts.min_margin:
            return False
        return opts.any_outcome or (accepted(c) and not accepted(r))

    if opts.all_pairs:
        if opts.any_outcome:
            pairs = [(c, r) for i, c in enumerate(order) for r in order[i + 1 :] if ok(c, r)]
        else:
            pairs = [(c, r) for c in order if accepted(c) for r in order if not accepted(r) and ok(c, r)]
        pairs.sort(key=lambda cr: (-(cr[0].p - cr[1].p), cr[0].index, cr[1].index))
        return pairs if opts.pairs is None else pairs[: opts.pairs]
    limit = 1 if opts.pairs is None else opts.pairs
    pairs = []
    i, j = 0, len(order) - 1
    while i < j and len(pairs) < limit:
        # inner pairs have smaller margins and less-yes chosen / more-yes rejected: stop at the first miss
        if not ok(order[i], order[j]):
            break
        pairs.append((order[i], order[j]))
        i, j = i + 1, j - 1
    return pairs


# ---------------------------------------------------------------------- the build
def open_runs(run_dirs: list[str], allow_partial: bool) -> list[RunSource]:
    if not run_dirs:
        raise BuildError("give at least one RUN_DIR")
    runs = [RunSource.open(d, allow_partial=allow_partial) for d in run_dirs]
    if len({os.path.realpath(r.path) for r in runs}) != len(runs):
        raise BuildError("the same RUN_DIR is given twice")
    first = runs[0]
    for run in runs[1:]:
        if run.meta["model_fingerprint"] != first.meta["model_fingerprint"]:
            raise BuildError(
                f"mixed runs from different models: {first.path} was drawn by model "
                f"{first.meta['model_fingerprint']!r}, {run.path} by {run.meta['model_fingerprint']!r}; "
                "build one dataset per model"
            )
        if vars(run.spec) != vars(first.spec):
            raise BuildError(f"runs {first.path} and {run.path} have different model specs ({vars(first.spec)} vs "
                             f"{vars(run.spec)})")
    return runs


class _Build:
    """State of one build: output files, file placement, counters (all bounded)."""

    def __init__(self, kind: str, runs: list[RunSource], output: Output, copy: bool, files: dict[str, TextIO]):
        self.kind = kind
        self.runs = runs
        self.output = output
        self.mode = "copy" if copy else "link"
        self.files = files
        self.transfers = {"link": 0, "copy": 0}
        self.by_difficulty: dict[str, dict[str, int]] = {}
        self.checkers = {id(r): CodesChecker(r.spec) for r in runs}
        self.prefixes = {id(r): ("" if len(runs) == 1 else f"run{k}-") for k, r in enumerate(runs)}
        self._placed: dict[int, str] = {}
        self.images_dir = ""

    def count(self, group: PromptGroup, **increments: int) -> None:
        counts = self.by_difficulty.setdefault(group.difficulty, {})
        for key, value in increments.items():
            counts[key] = counts.get(key, 0) + value

    def start_group(self) -> None:
        self._placed = {}

    def place(self, group: PromptGroup, cand: Candidate) -> str:
        """Verify the candidate's PNG + codes and put them into the dataset; returns the row's image path."""
        done = self._placed.get(cand.index)
        if done is not None:
            return done
        run = group.run
        src_png = run.source_file(cand, "image")
        src_codes = run.source_file(cand, "codes")
        try:
            check_png_fast(src_png)
            self.checkers[id(run)](src_codes)
        except GenImageError as err:
            prompt = cand.record["prompt_id"]
            raise BuildError(f"{cand.where} (prompt {prompt!r}, candidate {cand.index}): {err}") from None
        stem = f"{self.prefixes[id(run)]}{group.prompt_index:06d}-{cand.index:03d}"
        self.transfers[place_file(src_codes, f"{self.images_dir}/{stem}{CODES_SUFFIX}", self.mode)] += 1
        self.transfers[place_file(src_png, f"{self.images_dir}/{stem}.png", self.mode)] += 1
        rel = self.output.path(f"{IMAGES}/{stem}.png")
        self._placed[cand.index] = rel
        return rel

    def write(self, key: str, row: dict[str, Any]) -> None:
        self.files[key].write(json.dumps(row, ensure_ascii=False) + "\n")

    def discard(self, group: PromptGroup) -> None:
        first = group.first
        self.write(
            "discard",
            pool_entry(
                prompt_index=group.prompt_index,
                prompt_id=first["prompt_id"],
                prompt=first["prompt"],
                difficulty=first["difficulty"],
                category=first["category"],
                p_yes=[c.p for c in group.candidates],
                run=self.runs.index(group.run) if len(self.runs) > 1 else None,
            ),
        )


def replay_defaults(run: RunSource, threshold: float | None) -> dict[str, Any]:
    """The judge and sampling settings of the (first) source run; the build's threshold wins when given."""
    from ..models import adapter_class_for

    config = run.meta.get("config") or {}
    family = adapter_class_for({"model_type": (run.meta.get("spec") or {}).get("model_type")})
    keys = family.sampling.keys(selfplay_only=True) if family is not None else []
    return _replay_defaults(config, keys, run.question, run.threshold if threshold is None else threshold)


def _totals(by_difficulty: dict[str, dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in by_difficulty.values():
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    return total


def _run_build(
    kind: str,
    run_dirs: list[str],
    dataset_dir: str,
    name: str,
    options: SftOptions | DpoOptions,
    per_group: Callable[[_Build, PromptGroup], None],
    entries: dict[str, dict[str, Any]],
    file_keys: dict[str, str],
    allow_partial: bool,
    overwrite: bool,
    copy: bool,
    fmt: DatasetFormat,
) -> dict[str, Any]:
    options.validate()
    runs = open_runs(run_dirs, allow_partial)
    output = Output(dataset_dir, name, list(entries), fmt, overwrite=overwrite)
    with output.building() as tmp:
        (tmp / IMAGES).mkdir()
        handles = {key: open(tmp / fname, "w", encoding="utf-8") for key, fname in file_keys.items()}
        try:
            build = _Build(kind, runs, output, copy, handles)
            build.images_dir = os.fspath(tmp / IMAGES)
            for run in runs:
                for group in run.groups():
                    build.start_group()
                    per_group(build, group)
        finally:
            for handle in handles.values():
                handle.close()
        totals = _totals(build.by_difficulty)
        main_count = totals.get("rows" if kind == "sft" else "pairs", 0)
        if main_count == 0:
            raise BuildError(
                f"nothing to build: {totals.get('prompts', 0)} prompts, {totals.get('accepted', 0)} accepted candidates, "
                f"no {'rows' if kind == 'sft' else 'pairs'} selected with these options; nothing was written"
            )
        manifest = {
            "unigap_version": __version__,
            "kind": kind,
            "name": name,
            "created": now_iso(),
            "entries": {key: entry["file_name"] for key, entry in entries.items()},
            "files": {key: fname for key, fname in file_keys.items()},
            "sources": [run.describe() for run in runs],
            "options": {**asdict(options), "allow_partial": allow_partial, "copy": copy},
            "replay_defaults": replay_defaults(runs[0], options.threshold),
            "counts": {"total": totals, "by_difficulty": build.by_difficulty},
            "image_files": dict(build.transfers),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    output.register(entries)  # the last step: the dataset becomes visible to the host
    return {
        "name": name,
        "folder": str(output.dataset_dir / name),
        "entries": list(entries),
        "totals": totals,
        "by_difficulty": build.by_difficulty,
        "image_files": dict(build.transfers),
        "swept": output.swept,
        "dropped": output.dropped,
    }


def build_sft(
    run_dirs: list[str],
    dataset_dir: str,
    name: str,
    options: SftOptions | None = None,
    *,
    allow_partial: bool = False,
    overwrite: bool = False,
    copy: bool = False,
    fmt: DatasetFormat,
) -> dict[str, Any]:
    """Algorithm 1: accepted candidates -> generation SFT rows; prompts with none -> the discard pool."""
    opts = options or SftOptions()
    accepted = accept_fn(opts.threshold)

    def per_group(build: _Build, group: PromptGroup) -> None:
        cands = group.candidates
        n_acc = sum(1 for c in cands if accepted(c))
        rows = select_sft(cands, accepted, opts)
        for cand in rows:
            image = build.place(group, cand)
            build.write("data", fmt.render(GenSample(cand.record["prompt"], image, row_meta(group, cand, image, accepted))))
        und = 0
        if opts.with_und:
            question = group.run.question.format(prompt=group.first["prompt"])
            for cand in cands:
                answer = "Yes" if accepted(cand) else "No"
                image = build.place(group, cand)
                build.write("und", fmt.render(UndSample(image, question, answer, row_meta(group, cand, image, accepted))))
                und += 1
        if not n_acc:
            build.discard(group)
        build.count(
            group, prompts=1, candidates=len(cands), accepted=n_acc, rows=len(rows), discarded=int(not n_acc),
            **({"und_rows": und} if opts.with_und else {}),
        )

    entries = {name: fmt.entry(f"{name}/{DATA_FILE}")}
    files = {"data": DATA_FILE, "discard": DISCARD_FILE}
    if opts.with_und:
        entries[f"{name}_und"] = fmt.entry(f"{name}/{UND_FILE}")
        files["und"] = UND_FILE
    return _run_build("sft", run_dirs, dataset_dir, name, opts, per_group, entries, files, allow_partial, overwrite,
                      copy, fmt)


def build_dpo(
    run_dirs: list[str],
    dataset_dir: str,
    name: str,
    options: DpoOptions | None = None,
    *,
    allow_partial: bool = False,
    overwrite: bool = False,
    copy: bool = False,
    fmt: DatasetFormat,
) -> dict[str, Any]:
    """Most-yes against most-no pairs per prompt -> a ranking dataset for ``stage: dpo``."""
    opts = options or DpoOptions()
    accepted = accept_fn(opts.threshold)

    def per_group(build: _Build, group: PromptGroup) -> None:
        cands = group.candidates
        n_acc = sum(1 for c in cands if accepted(c))
        pairs = select_pairs(cands, accepted, opts)
        prompt = group.first["prompt"]
        for chosen, rejected in pairs:
            image = build.place(group, chosen)
            meta = row_meta(group, chosen, image, accepted)
            build.write("data", fmt.render(PairSample(prompt, image, build.place(group, rejected), meta)))
        if not n_acc:
            build.discard(group)
        build.count(
            group, prompts=1, candidates=len(cands), accepted=n_acc, pairs=len(pairs), discarded=int(not n_acc),
            unpaired=int(not pairs),
        )

    entries = {name: fmt.entry(f"{name}/{DATA_FILE}", ranking=True)}
    files = {"data": DATA_FILE, "discard": DISCARD_FILE}
    return _run_build("dpo", run_dirs, dataset_dir, name, opts, per_group, entries, files, allow_partial, overwrite,
                      copy, fmt)


def describe(kind: str, result: dict[str, Any], out: TextIO | None = None, index_file: str = "index") -> None:
    """Print what a build did: rows / pairs, discarded prompts, per difficulty."""
    out = out or sys.stdout
    t = result["totals"]
    folder = result["folder"]
    if kind == "sft":
        line = (f"unigap build sft: {result['name']}: {t.get('rows', 0)} generation rows from {t.get('prompts', 0)} "
                f"prompts ({t.get('candidates', 0)} candidates, {t.get('accepted', 0)} accepted); "
                f"{t.get('discarded', 0)} prompts with no accepted candidate -> {DISCARD_FILE}")
        if "und_rows" in t:
            line += f"; {t['und_rows']} understanding rows ({result['name']}_und)"
        keys = ["prompts", "rows", "discarded"] + (["und_rows"] if "und_rows" in t else [])
    else:
        line = (f"unigap build dpo: {result['name']}: {t.get('pairs', 0)} pairs from {t.get('prompts', 0)} prompts "
                f"({t.get('candidates', 0)} candidates, {t.get('accepted', 0)} accepted); {t.get('unpaired', 0)} "
                f"prompts without a pair, of which {t.get('discarded', 0)} had no accepted candidate -> {DISCARD_FILE}")
        keys = ["prompts", "pairs", "unpaired", "discarded"]
    print(line, file=out)
    print(f"  per difficulty: {format_counts(result['by_difficulty'], keys)}", file=out)
    files = result["image_files"]
    print(f"  wrote {folder} (image + codes files: {files['link']} hard-linked, {files['copy']} copied); "
          f"{index_file}: {', '.join(result['entries'])}", file=out)
    if result.get("dropped"):
        print(f"  {index_file}: removed {', '.join(result['dropped'])} (written by the replaced build, not by "
              "this one)", file=out)
    if result.get("swept"):
        print(f"  removed {result['swept']} leftover folder(s) of interrupted builds of {result['name']}", file=out)
