"""The report across rounds: ``LOOP_DIR/report/`` (report.json, report.md, report.html, a plot).

Per round: every held-out figure with its 95% interval, overall and per difficulty
(``unigap.loop.evaluate``), the change against round 0 and against the round before (paired image
by image), the train-prompt self-play (non-unification, discard pool), the build's counts, each
training's loss (final and curve), and the wall time of every stage.  The best round by the loop's
score is marked; an early stop is stated.  ``before_vs_last/`` is ``unigap report`` of the round-0
and the last evaluation runs side by side (every candidate image with its P(yes)).
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path
from typing import Any

from ..fsutil import write_bytes_atomic, write_text_atomic
from .config import SCORES
from .evaluate import SCORES_FILE, figures, load_table, paired_differences

LABELS = {"oracle_accuracy": "oracle accuracy", "oracle_agreement": "self-judge agrees with oracle",
          "judge_accuracy": "independent judge accepts", "judge_agreement": "independent judge agrees with self",
          "judge_mean_p_yes": "independent judge mean P(yes)", "non_unification": "non-unification",
          "mean_p_yes": "mean P(yes) (self)", "pass_at_n": "pass@N"}
PLOTTED = ("oracle_accuracy", "judge_accuracy", "non_unification", "pass_at_n")


def _pct(e: dict[str, Any], signed: bool = False) -> str:
    fmt = "{:+.1f}" if signed else "{:.1f}"
    lo, hi = e["ci"]
    if any(isinstance(v, float) and math.isnan(v) for v in (e["value"], lo, hi)):
        return "n/a"
    return f"{fmt.format(100 * e['value'])} [{fmt.format(100 * lo)}, {fmt.format(100 * hi)}]"


def collect(loop: Any, stopped: str | None) -> dict[str, Any]:
    """Every round's figures from the loop directory's own runs, scores and journal."""
    c = loop.config
    journal = loop.journal
    rounds: list[dict[str, Any]] = []
    tables = []
    r = 0
    while journal.done(f"r{r}.eval"):
        folder = loop.round_dir(r) / "eval"
        table = load_table(folder / "run", folder / SCORES_FILE)
        tables.append(table)
        entry: dict[str, Any] = {"round": r, "eval": figures(table),
                                 "eval_run": str((folder / "run").relative_to(loop.out))}
        if r:
            entry["vs_round_0"] = paired_differences(table, tables[0])
            entry["vs_previous"] = paired_differences(table, tables[r - 1])
            sp = journal.result(f"r{r}.selfplay")
            entry["selfplay"] = {k: sp["overall"][k] for k in ("non_unification", "pass_at_n", "mean_p_yes",
                                                               "discard_pool", "n_images", "n_accepted")}
            built = journal.result(f"r{r}.build")
            entry["build"] = {k: v for k, v in built.items() if k in ("sft", "dpo")}
            entry["train"] = [{k: v for k, v in journal.result(f"r{r}.train{i}").items() if k != "summary"}
                              for i in range(len(loop.templates))]
        entry["seconds"] = {key.split(".", 1)[1]: e.get("seconds") for key, e in journal.stages().items()
                            if key.startswith(f"r{r}.") and e.get("done")}
        entry["attempts"] = {key.split(".", 1)[1]: e.get("attempts") for key, e in journal.stages().items()
                             if key.startswith(f"r{r}.")}
        rounds.append(entry)
        r += 1
    metric = c.best_metric()
    sign = SCORES[metric]
    values = [e["eval"][metric]["all"]["value"] for e in rounds if metric in e["eval"]]
    best = max(range(len(values)), key=lambda i: (sign * values[i], -i)) if values else None
    return {"loop_dir": str(loop.out), "model": c.model_name_or_path, "rounds_planned": c.rounds,
            "rounds_done": len(rounds) - 1, "stopped_early": stopped, "best_metric": metric, "best_round": best,
            "eval": {"prompts": c.eval_prompts, "candidates": c.eval_candidates, "seed": c.eval_seed,
                     "oracle": c.oracle, "judge_model": c.judge_model},
            "selfplay": {"prompts": c.train_prompts, "candidates": c.num_candidates, "seed": f"{c.seed} + round"},
            "train_yaml": c.train_yamls, "rounds": rounds,
            "seconds": {"total": round(sum(e.get("seconds", 0) or 0 for e in journal.stages().values()), 1)}}


def markdown(report: dict[str, Any]) -> str:
    rounds = report["rounds"]
    metrics = [m for m in LABELS if rounds and m in rounds[0]["eval"]]
    lines = [
        f"# unigap loop: {report['rounds_done']} round(s) from `{report['model']}`",
        "",
        f"Held-out evaluation: `{report['eval']['prompts']}`, {report['eval']['candidates']} images per prompt, the "
        f"same seed ({report['eval']['seed']}) every round, so rounds are compared image by image"
        + (f"; oracle `{report['eval']['oracle']}`" if report["eval"]["oracle"] else "")
        + (f"; independent judge `{report['eval']['judge_model']}`" if report["eval"]["judge_model"] else "")
        + f". Self-play on `{report['selfplay']['prompts']}` ({report['selfplay']['candidates']} images per prompt, "
        "seed + round). Figures in %, [95% CI]: bootstrap over prompts, then the images of each; changes paired.",
        "",
    ]
    if report["best_round"] is not None:
        lines.append(f"**Best round: {report['best_round']}** by {LABELS.get(report['best_metric'], report['best_metric'])}."
                     + (f" Stopped early: {report['stopped_early']}." if report["stopped_early"] else ""))
        lines.append("")
    lines += ["## Held-out figures per round", "", "| round | " + " | ".join(LABELS[m] for m in metrics) + " |",
              "|---|" + "---|" * len(metrics)]
    for e in rounds:
        mark = " (best)" if e["round"] == report["best_round"] else ""
        lines.append(f"| {e['round']}{mark} | " + " | ".join(_pct(e["eval"][m]["all"]) for m in metrics) + " |")
    if len(rounds) > 1:
        lines += ["", "## Change against round 0 (paired; **bold** = the interval excludes 0)", "",
                  "| round | " + " | ".join(LABELS[m] for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
        for e in rounds[1:]:
            cells = []
            for m in metrics:
                d = e["vs_round_0"][m]
                cells.append(f"**{_pct(d, True)}**" if d["excludes_0"] else _pct(d, True))
            lines.append(f"| {e['round']} | " + " | ".join(cells) + " |")
    levels = [lv for lv in rounds[0]["eval"]["non_unification"] if lv != "all"] if rounds else []
    for m in [m for m in ("oracle_accuracy", "non_unification", "judge_accuracy") if m in metrics]:
        lines += ["", f"## {LABELS[m]} per difficulty", "", "| round | " + " | ".join(levels) + " |",
                  "|---|" + "---|" * len(levels)]
        for e in rounds:
            lines.append(f"| {e['round']} | " + " | ".join(_pct(e["eval"][m][lv]) for lv in levels) + " |")
    if len(rounds) > 1:
        lines += ["", "## Training data and training per round", "",
                  "| round | self-play non-unification | discard pool (prompts) | SFT rows | DPO pairs | train loss |",
                  "|---|---|---|---|---|---|"]
        for e in rounds[1:]:
            sp, b = e["selfplay"], e["build"]
            losses = ", ".join(f"{t['train_loss']:.4f}" if t.get("train_loss") is not None else "n/a" for t in e["train"])
            lines.append(f"| {e['round']} | {100 * sp['non_unification']:.1f}% | {sp['discard_pool']} | "
                         f"{b.get('sft', {}).get('rows', '')} | {b.get('dpo', {}).get('pairs', '')} | {losses} |")
    stage_names = sorted({k for e in rounds for k in e["seconds"]}, key=_stage_order)
    lines += ["", "## Wall time per stage (seconds)", "", "| round | " + " | ".join(stage_names) + " | total |",
              "|---|" + "---|" * (len(stage_names) + 1)]
    for e in rounds:
        total = sum(v or 0 for v in e["seconds"].values())
        lines.append(f"| {e['round']} | " + " | ".join(f"{e['seconds'][k]:.1f}" if k in e["seconds"] else ""
                                                       for k in stage_names) + f" | {total:.1f} |")
    redone = [f"round {e['round']} {k} ({n} attempts)" for e in rounds for k, n in e["attempts"].items() if n and n > 1]
    lines += ["", f"All stages: {report['seconds']['total']:.1f} s."
              + (f" Redone after an interruption: {', '.join(redone)}." if redone else ""), ""]
    return "\n".join(lines)


def _stage_order(name: str) -> tuple[int, str]:
    order = ("selfplay", "build", "train", "export", "eval")
    return next((i for i, p in enumerate(order) if name.startswith(p)), 9), name


def plot(report: dict[str, Any], path_stem: Path) -> Path:
    """``rounds.png`` (matplotlib) or, without matplotlib, ``rounds.svg`` drawn by hand."""
    rounds = report["rounds"]
    series = {m: [(e["round"], e["eval"][m]["all"]["value"], *e["eval"][m]["all"]["ci"]) for e in rounds]
              for m in PLOTTED if rounds and m in rounds[0]["eval"]}
    losses = [(e["round"], [pt for t in e["train"] for pt in t["loss_curve"]]) for e in rounds[1:]]
    try:
        import matplotlib
    except ImportError:
        return _svg(series, path_stem.with_suffix(".svg"))
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for m, pts in series.items():
        xs = [p[0] for p in pts]
        ys = [100 * p[1] for p in pts]
        err = [[100 * max(p[1] - p[2], 0) for p in pts], [100 * max(p[3] - p[1], 0) for p in pts]]
        axes[0].errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=LABELS[m])
    if report["best_round"] is not None:
        axes[0].axvline(report["best_round"], color="#999", linestyle=":", label="best round")
    axes[0].set_xlabel("round")
    axes[0].set_ylabel("% of held-out images (pass@N: prompts)")
    axes[0].set_ylim(0, 105)
    axes[0].set_xticks([e["round"] for e in rounds])
    axes[0].set_title("held-out figures per round, 95% CI")
    axes[0].legend(fontsize=8)
    for r, curve in losses:
        if curve:
            axes[1].plot(range(1, len(curve) + 1), [pt[1] for pt in curve], marker=".", label=f"round {r}")
    axes[1].set_xlabel("logged step")
    axes[1].set_ylabel("training loss")
    axes[1].set_title("training loss per round")
    if losses:
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path = path_stem.with_suffix(".png")
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _svg(series: dict[str, list[tuple[float, ...]]], path: Path) -> Path:
    """A line chart with interval bars, written by hand (no plotting library)."""
    width, height, pad = 640, 320, 40
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    last = max((p[0] for pts in series.values() for p in pts), default=1) or 1

    def xy(r: float, v: float) -> tuple[float, float]:
        return pad + (width - 2 * pad) * r / last, height - pad - (height - 2 * pad) * v

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-size='11'>",
             f"<rect width='{width}' height='{height}' fill='white'/>",
             f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' stroke='black'/>",
             f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{height - pad}' stroke='black'/>"]
    for i, (m, pts) in enumerate(series.items()):
        colour = colours[i % len(colours)]
        path_d = " ".join(f"{'M' if j == 0 else 'L'}{xy(p[0], p[1])[0]:.1f},{xy(p[0], p[1])[1]:.1f}"
                          for j, p in enumerate(pts))
        parts.append(f"<path d='{path_d}' fill='none' stroke='{colour}'/>")
        for p in pts:
            x, y = xy(p[0], p[1])
            _, lo = xy(p[0], p[2])
            _, hi = xy(p[0], p[3])
            parts.append(f"<line x1='{x:.1f}' y1='{lo:.1f}' x2='{x:.1f}' y2='{hi:.1f}' stroke='{colour}'/>")
            parts.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='{colour}'/>")
        parts.append(f"<text x='{width - pad - 200}' y='{pad + 14 * i}' fill='{colour}'>{html.escape(LABELS[m])}</text>")
    parts.append("</svg>")
    write_text_atomic(path, "\n".join(parts))
    return path


def write_loop_report(loop: Any, stopped: str | None) -> dict[str, Any]:
    """Write ``LOOP_DIR/report/``; returns the JSON."""
    from ..report import build_report, md_to_html

    out = loop.out / "report"
    out.mkdir(parents=True, exist_ok=True)
    report = collect(loop, stopped)
    rounds = report["rounds"]
    if len(rounds) > 1:  # every candidate image of the first and last evaluation, side by side
        build_report([loop.out / rounds[0]["eval_run"], loop.out / rounds[-1]["eval_run"]], out / "before_vs_last")
    picture = plot(report, out / "rounds")
    report["plot"] = picture.name
    md = markdown(report)
    write_text_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out / "report.md", md)
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>unigap loop</title><style>"
            "body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1200px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}</style></head><body>"
            f"<h1>{html.escape(md.splitlines()[0][2:])}</h1><img src='{picture.name}' alt='figures per round'>"
            + md_to_html(md.split("\n", 1)[1])
            + ("<p><a href='before_vs_last/report.html'>every held-out candidate, round 0 vs the last round</a></p>"
               if len(rounds) > 1 else "") + "</body></html>")
    write_text_atomic(out / "report.html", page)
    print(md, flush=True)
    return report
