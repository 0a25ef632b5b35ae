"""The non-unification report (``unigap report RUN_DIR [RUN_DIR_2]``).

Scores, for all prompts and per difficulty level and category:

* **non-unification**: share of the model's own images that its own judge rejects;
* **mean P(yes)** over images;
* **pass@N**: share of prompts with at least one accepted candidate;
* **discard pool**: prompts with no accepted candidate (what C-SFT replays).

Confidence intervals are 95% percentile bootstraps (``unigap.stats``) at two levels: prompts are
resampled (a prompt's N candidates share the prompt, so they are not
independent draws), then candidates within each drawn prompt (so a group of
one prompt still gets an honest interval); the bootstrap is seeded, so a report is reproducible.  With two runs, the
difference after - before gets its own interval (a paired bootstrap over the
prompts both runs share when they hold the same prompt set, an independent one
otherwise); a difference whose interval excludes 0 is marked as outside the CI.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import stats
from .errors import UnigapError
from .fsutil import write_bytes_atomic, write_text_atomic
from .runs import is_complete, iter_records, read_meta, resolve_inside

METRICS = ("non_unification", "mean_p_yes", "pass_at_n")
LABELS = {"non_unification": "non-unification", "mean_p_yes": "mean P(yes)", "pass_at_n": "pass@N"}
LEVEL_ORDER = {"easy": 0, "medium": 1, "hard": 2}
NONE = "(none)"
REPLICATES = stats.REPLICATES


class ReportError(UnigapError):
    """A run cannot be reported (no records, wrong number of runs)."""


# ---------------------------------------------------------------------------------- per-prompt table
class PromptTable:
    """Per prompt: its candidates' P(yes) and judgments (padded to the largest N), and labels."""

    def __init__(self, records: Iterable[dict[str, Any]]):
        order: dict[str, int] = {}
        p_rows: list[list[float]] = []
        a_rows: list[list[bool]] = []
        difficulty, category, text = [], [], []
        self.candidates: list[list[dict[str, Any]]] = []
        for record in records:
            pid = str(record["prompt_id"])
            if pid not in order:
                order[pid] = len(order)
                p_rows.append([])
                a_rows.append([])
                difficulty.append(record.get("difficulty") or NONE)
                category.append(record.get("category") or NONE)
                text.append(record["prompt"])
                self.candidates.append([])
            j = order[pid]
            p_rows[j].append(float(record["p_yes"]))
            a_rows[j].append(bool(record["accepted"]))
            self.candidates[j].append({k: record[k] for k in ("candidate", "p_yes", "accepted", "image")})
        if not order:
            raise ReportError("the run holds no records")
        width = max(map(len, p_rows))
        self.ids = list(order)
        self.n = np.array([len(r) for r in p_rows], dtype=np.int64)
        self.p = np.zeros((len(p_rows), width))
        self.acc = np.zeros((len(p_rows), width), dtype=bool)
        for j, (pr, ar) in enumerate(zip(p_rows, a_rows)):
            self.p[j, : len(pr)] = pr
            self.acc[j, : len(ar)] = ar
        self.difficulty = difficulty
        self.category = category
        self.text = text

    def subset(self, mask: np.ndarray) -> "PromptTable":
        """The prompts where ``mask`` is true, in their order."""
        return self.take(np.flatnonzero(mask))

    def take(self, order: np.ndarray) -> "PromptTable":
        """The prompts at ``order`` (indices), in that order."""
        order = np.asarray(order, dtype=np.int64)
        sub = object.__new__(PromptTable)
        sub.ids = [self.ids[i] for i in order]
        sub.n, sub.p, sub.acc = self.n[order], self.p[order], self.acc[order]
        sub.difficulty = [self.difficulty[i] for i in order]
        sub.category = [self.category[i] for i in order]
        sub.text = [self.text[i] for i in order]
        sub.candidates = [self.candidates[i] for i in order]
        return sub

    def groups(self, key: str) -> dict[str, np.ndarray]:
        labels = self.difficulty if key == "difficulty" else self.category
        return {name: np.array([lab == name for lab in labels]) for name in ordered_levels(labels)}

    def valid(self) -> np.ndarray:
        return np.arange(self.p.shape[1]) < self.n[:, None]

    def metrics(self, draw: stats.Draw) -> dict[str, np.ndarray]:
        """Metrics of bootstrap replicates (``unigap.stats``: prompts, then candidates within each)."""
        return _metrics(draw.take(self.p), draw.take(self.acc), draw.valid)


def ordered_levels(labels: Sequence[str]) -> list[str]:
    """easy < medium < hard, numbers numerically, other labels alphabetically; '(none)' last."""
    names = sorted(set(labels) - {NONE})

    def key(name: str):
        if name.lower() in LEVEL_ORDER:
            return (0, LEVEL_ORDER[name.lower()], "")
        try:
            return (1, float(name), "")
        except ValueError:
            return (2, 0.0, name)

    return sorted(names, key=key) + ([NONE] if NONE in labels else [])


def _metrics(p: np.ndarray, acc: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics over the last two axes (prompts, candidates); ``valid`` masks the padding."""
    total = valid.sum((-1, -2))
    accepted = acc & valid
    return {
        "non_unification": 1.0 - accepted.sum((-1, -2)) / total,
        "mean_p_yes": np.where(valid, p, 0.0).sum((-1, -2)) / total,
        "pass_at_n": accepted.any(-1).mean(-1),
    }


def point(table: PromptTable) -> dict[str, Any]:
    valid = table.valid()
    values = _metrics(table.p, table.acc, valid)
    n_accepted = (table.acc & valid).sum(-1)
    return {
        **{k: float(v) for k, v in values.items()},
        "n_prompts": len(table.ids),
        "n_images": int(table.n.sum()),
        "n_accepted": int(n_accepted.sum()),
        "discard_pool": int((n_accepted == 0).sum()),
    }


def bootstrap(table: PromptTable, seed: int = 0) -> dict[str, list[float]]:
    """95% percentile intervals of each metric (prompts resampled, then candidates within them)."""
    draws = stats.nested_bootstrap(table.metrics, table.n, replicates=REPLICATES, seed=seed)
    return {k: stats.percentile_interval(draws[k]) for k in METRICS}


def bootstrap_diff(before: PromptTable, after: PromptTable, seed: int = 0) -> tuple[dict[str, list[float]], bool]:
    """Intervals of after - before.  When both hold the same prompt ids the bootstrap is paired over
    prompts (one draw of prompts for both runs; each run's candidates drawn within them); otherwise
    each run is resampled on its own."""
    paired = sorted(before.ids) == sorted(after.ids)
    if paired:
        where = {pid: i for i, pid in enumerate(after.ids)}
        aligned = after.take(np.array([where[pid] for pid in before.ids]))

        def diff(b: stats.Draw, a: stats.Draw) -> dict[str, np.ndarray]:
            mb, ma = before.metrics(b), aligned.metrics(a)
            return {k: ma[k] - mb[k] for k in METRICS}

        draws = stats.nested_bootstrap(diff, before.n, aligned.n, replicates=REPLICATES, seed=seed)
    else:
        b = stats.nested_bootstrap(before.metrics, before.n, replicates=REPLICATES, seed=seed)
        a = stats.nested_bootstrap(after.metrics, after.n, replicates=REPLICATES, seed=seed + 1)
        draws = {k: a[k] - b[k] for k in METRICS}
    return {k: stats.percentile_interval(draws[k]) for k in METRICS}, paired


def summarize(records: Iterable[dict[str, Any]], num_candidates: int | None = None) -> dict[str, Any]:
    """Point estimates (no intervals): what ``summary.json`` of a finished run holds."""
    table = PromptTable(records)
    out = {"overall": point(table), "num_candidates": num_candidates}
    for key in ("difficulty", "category"):
        out[f"per_{key}"] = {name: point(table.subset(mask)) for name, mask in table.groups(key).items()}
    return out


def _scored(table: PromptTable) -> dict[str, Any]:
    entry = point(table)
    cis = bootstrap(table)
    for k in METRICS:
        entry[k] = {"value": entry[k], "ci": cis[k]}
    return entry


def analyse(table: PromptTable) -> dict[str, Any]:
    out: dict[str, Any] = {"overall": _scored(table)}
    for key in ("difficulty", "category"):
        out[f"per_{key}"] = {name: _scored(table.subset(mask)) for name, mask in table.groups(key).items()}
    return out


def compare(before: PromptTable, after: PromptTable) -> dict[str, Any]:
    def one(b: PromptTable, a: PromptTable) -> dict[str, Any]:
        pb, pa = point(b), point(a)
        cis, paired = bootstrap_diff(b, a)
        row: dict[str, Any] = {"paired": paired}
        for k in METRICS:
            diff = pa[k] - pb[k]
            lo, hi = cis[k]
            row[k] = {"before": pb[k], "after": pa[k], "diff": diff, "ci": cis[k], "outside_ci": bool(lo > 0 or hi < 0)}
        row["discard_pool"] = {"before": pb["discard_pool"], "after": pa["discard_pool"]}
        return row

    out: dict[str, Any] = {"overall": one(before, after)}
    for key in ("difficulty", "category"):
        groups_b, groups_a = before.groups(key), after.groups(key)
        out[f"per_{key}"] = {
            name: one(before.subset(groups_b[name]), after.subset(groups_a[name]))
            for name in ordered_levels(list(groups_b) + list(groups_a))
            if name in groups_b and name in groups_a
        }
    return out


# ---------------------------------------------------------------------------------- rendering
def _fmt(value: float) -> str:
    return f"{100 * value:.1f}%"


def _fmt_ci(entry: dict[str, Any]) -> str:
    lo, hi = entry["ci"]
    return f"{_fmt(entry['value'])} [{_fmt(lo)}, {_fmt(hi)}]"


def _fmt_p(entry: dict[str, Any]) -> str:
    lo, hi = entry["ci"]
    return f"{entry['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def _markdown_run(name: str, result: dict[str, Any], n: int | None) -> list[str]:
    lines = [f"## {name}", "", f"| group | prompts | images | non-unification [95% CI] | mean P(yes) [95% CI] | pass@{n or 'N'} [95% CI] | discard pool |", "|---|---|---|---|---|---|---|"]

    def row(label: str, e: dict[str, Any]) -> str:
        return (
            f"| {label} | {e['n_prompts']} | {e['n_images']} | {_fmt_ci(e['non_unification'])} | "
            f"{_fmt_p(e['mean_p_yes'])} | {_fmt_ci(e['pass_at_n'])} | {e['discard_pool']} |"
        )

    lines.append(row("**all**", result["overall"]))
    for key in ("difficulty", "category"):
        for label, entry in result[f"per_{key}"].items():
            lines.append(row(f"{key}: {label}", entry))
    return lines + [""]


def _markdown_compare(comp: dict[str, Any]) -> list[str]:
    lines = [
        "## Before / after",
        "",
        f"Differences are after - before; 95% bootstrap CI of the difference "
        f"({'paired over the shared prompts' if comp['overall']['paired'] else 'independent resampling'}); "
        "**yes** = the CI excludes 0.",
        "",
        "| group | metric | before | after | difference [95% CI] | outside CI |",
        "|---|---|---|---|---|---|",
    ]

    def rows(label: str, e: dict[str, Any]) -> list[str]:
        out = []
        for k in METRICS:
            m = e[k]
            f = (lambda v: f"{v:.3f}") if k == "mean_p_yes" else _fmt
            sign = "+" if m["diff"] >= 0 else ""
            out.append(
                f"| {label} | {LABELS[k]} | {f(m['before'])} | {f(m['after'])} | "
                f"{sign}{f(m['diff'])} [{f(m['ci'][0])}, {f(m['ci'][1])}] | {'**yes**' if m['outside_ci'] else 'no'} |"
            )
        out.append(f"| {label} | discard pool | {e['discard_pool']['before']} | {e['discard_pool']['after']} | | |")
        return out

    lines += rows("**all**", comp["overall"])
    for key in ("difficulty", "category"):
        for label, entry in comp[f"per_{key}"].items():
            lines += rows(f"{key}: {label}", entry)
    return lines + [""]


def _plot(results: list[dict[str, Any]], names: list[str], path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = ordered_levels([lv for r in results for lv in r["per_difficulty"]])
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 2.2 * len(levels) + 3), 3.6))
    width = 0.8 / len(results)
    for ax, metric in zip(axes, ("non_unification", "pass_at_n")):
        for j, (result, name) in enumerate(zip(results, names)):
            xs, ys, errs = [], [], [[], []]
            for x, level in enumerate(levels):
                entry = result["per_difficulty"].get(level)
                if entry is None:
                    continue
                value, (lo, hi) = entry[metric]["value"], entry[metric]["ci"]
                xs.append(x + (j - (len(results) - 1) / 2) * width)
                ys.append(100 * value)
                errs[0].append(100 * max(value - lo, 0))
                errs[1].append(100 * max(hi - value, 0))
            ax.bar(xs, ys, width, yerr=errs, capsize=3, label=name)
        ax.set_xticks(range(len(levels)), levels)
        ax.set_ylabel("%")
        ax.set_ylim(0, 105)
        ax.set_title(f"{LABELS[metric]} by difficulty (95% CI)")
        if len(results) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def _inline(text: str) -> str:
    """Escape, then render the Markdown the report uses inline (**bold**, `code`)."""
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def md_to_html(md: str) -> str:
    """The report's own Markdown (headings, bullets, tables, paragraphs) as HTML."""
    out: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
            out.append("</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            cells = [_inline(c.strip()) for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                table.append(cells)
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("- "):
            out.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


def _html(tables: list[PromptTable], run_dirs: list[Path], names: list[str], out: Path, md: str, max_prompts: int) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>unigap report</title><style>",
        "body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px}"
        "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}"
        ".cand{display:inline-block;margin:3px;text-align:center;font-size:11px}"
        ".cand img{width:96px;height:96px;image-rendering:pixelated;border:4px solid}"
        ".ok img{border-color:#2a2}.no img{border-color:#d22}.prompt{margin-top:1em;font-weight:600}"
        ".run{color:#666;font-size:12px;margin-right:.5em}",
        "</style></head><body><h1>unigap self-play report</h1>",
        "<img src='non_unification_by_difficulty.png' alt='non-unification by difficulty'>",
        md_to_html(md.split("\n", 1)[1] if md.startswith("# ") else md),
        "<h2>Candidates per prompt</h2><p>green border = accepted by the model's own judge, red = rejected; "
        "the number is P(yes).</p>",
    ]
    first = tables[0]
    by_id = [{pid: i for i, pid in enumerate(t.ids)} for t in tables]
    shown = first.ids[:max_prompts]
    for pid in shown:
        i0 = by_id[0][pid]
        label = " / ".join(x for x in (first.difficulty[i0], first.category[i0]) if x != NONE)
        parts.append(f"<div class='prompt'>{e(first.text[i0])} <span class='run'>{e(pid)} {e(label)}</span></div>")
        for table, run_dir, name, index in zip(tables, run_dirs, names, by_id):
            if pid not in index:
                continue
            row = [f"<div><span class='run'>{e(name)}</span>"] if len(tables) > 1 else ["<div>"]
            for cand in table.candidates[index[pid]]:
                src = os.path.relpath(resolve_inside(run_dir, cand["image"], "image"), out)
                cls = "ok" if cand["accepted"] else "no"
                row.append(
                    f"<span class='cand {cls}'><img src='{e(Path(src).as_posix())}' "
                    f"title='candidate {cand['candidate']}'><br>{cand['p_yes']:.3f}</span>"
                )
            parts.append("".join(row) + "</div>")
    if len(first.ids) > len(shown):
        parts.append(f"<p>{len(first.ids) - len(shown)} more prompts not shown (max_html_prompts={max_prompts}).</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def default_out(run_dirs: Sequence[str | os.PathLike]) -> Path:
    """Where a report goes without ``--out``: ``report/`` in the last run given."""
    return Path(run_dirs[-1]) / "report"


def build_report(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    max_html_prompts: int = 300,
    allow_partial: bool = False,
) -> dict[str, Any]:
    """Write report.json, report.md, non_unification_by_difficulty.png and report.html; return the JSON."""
    if not 1 <= len(run_dirs) <= 2:
        raise ReportError("give one run directory, or two (before and after) to compare")
    dirs = [Path(d) for d in run_dirs]
    metas = [read_meta(d) for d in dirs]
    tables = [PromptTable(iter_records(d, allow_partial=allow_partial)) for d in dirs]
    out_dir = Path(out) if out else default_out(dirs)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = ["before", "after"] if len(dirs) == 2 else [dirs[0].name]
    results = [analyse(t) for t in tables]
    report: dict[str, Any] = {
        "runs": [
            {
                "name": name,
                "run_dir": str(d),
                "model_fingerprint": m.get("model_fingerprint"),
                "config_fingerprint": m.get("config_fingerprint"),
                "num_candidates": m.get("config", {}).get("num_candidates"),
                "judge_threshold": m.get("config", {}).get("judge_threshold"),
                **r,
            }
            for name, d, m, r in zip(names, dirs, metas, results)
        ],
        "partial": [not is_complete(d) for d in dirs],
        "bootstrap": {"unit": "prompt, then candidate", "replicates": REPLICATES, "level": 0.95, "seed": 0},
    }
    if len(dirs) == 2:
        report["comparison"] = compare(tables[0], tables[1])
    md = ["# unigap self-play report", ""]
    for name, d, m, r in zip(names, dirs, metas, results):
        cfg = m.get("config", {})
        md.append(
            f"- **{name}**: `{d}` (model {m.get('model_fingerprint')}, N={cfg.get('num_candidates')}, "
            f"threshold {cfg.get('judge_threshold')}, judge: \"{cfg.get('judge_question')}\")"
        )
    for name, d in zip(names, dirs):
        if not is_complete(d):
            md.append(f"- **{name} is an unfinished run**: only the prompts finished so far are counted.")
    md.append("")
    md.append(
        "non-unification = share of the model's own images its own judge rejects; pass@N = share of prompts "
        "with at least one accepted image; discard pool = prompts with none. 95% CIs: bootstrap over prompts, then candidates."
    )
    md.append("")
    for name, r, m in zip(names, results, metas):
        md += _markdown_run(name, r, m.get("config", {}).get("num_candidates"))
    if len(dirs) == 2:
        md += _markdown_compare(report["comparison"])
    md_text = "\n".join(md)
    _plot(results, names, out_dir / "non_unification_by_difficulty.png")
    write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(out_dir / "report.md", md_text)
    write_text_atomic(out_dir / "report.html", _html(tables, dirs, names, out_dir, md_text, max_html_prompts))
    return report
