"""`make demo`: the whole self-improvement loop on the embedded default model (models/shapes-janus).

Every stage is the real command a user would type, run in a subprocess and printed:
1. ``unigap selfplay`` on the ShapesWorld validation prompts: N images per prompt, judged by the
   model's own understanding branch;
2. ``unigap report``: the non-unification score per difficulty level;
3. ``unigap build sft`` (every accepted image; prompts with none -> discard pool) and
   ``unigap build dpo`` (most-yes vs most-no candidate);
4. ``llamafactory-cli train``: SFT, then C-SFT (easy-to-hard sampler + replay of the discard pool
   with the model being trained), then DPO (the YAML files are written to OUT/configs/);
5. ``unigap selfplay`` again with each trained model (same seeds: a paired comparison);
6. before / after reports: ``unigap report`` per model (Markdown + HTML of every candidate + plot)
   and OUT/summary.md / summary.html / summary.png, where the exact ShapesWorld oracle says how
   many images are really correct, next to what the model's own judge says.

``--quick`` is the reduced size the test suite runs (a few prompts, N = 4, short training).
The oracle is never used for training: it only measures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL = ROOT / "models" / "shapes-janus"
KINDS = ("sft", "csft", "dpo")
NAMES = {"before": "before", "sft": "after SFT", "csft": "after C-SFT", "dpo": "after DPO"}
#: written first into the output directory: only a directory holding it is ever replaced
MARKER = ".unigap-demo"


def step(title: str, cmd: list[str], times: dict[str, float], key: str) -> None:
    print(f"\n=== {title}\n$ {' '.join(map(str, cmd))}", flush=True)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
           "DISABLE_VERSION_CHECK": "1"}
    start = time.perf_counter()
    subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, check=True)
    times[key] = times.get(key, 0.0) + time.perf_counter() - start


METRICS = {  # name: (hit, counted)
    "oracle_accuracy": (lambda r: r["correct"], lambda r: True),
    "non_unification": (lambda r: not r["accepted"], lambda r: True),
    "rejected_oracle_also_rejects": (lambda r: not r["correct"], lambda r: not r["accepted"]),
    "accepted_oracle_accepts": (lambda r: r["correct"], lambda r: r["accepted"]),
}


def oracle_table(run_dir: Path) -> dict[str, Any]:
    """Per level and overall: oracle accuracy, non-unification, and how the judge's verdicts split,
    with 95% intervals (prompts resampled, then each prompt's own images)."""
    from unigap.shapesworld.evidence import nested_bootstrap, oracle_run, outcomes

    records = oracle_run(run_dir)
    level_of = {r["prompt"]: r["difficulty"] for r in records}  # dict order = the run's prompt order
    out: dict[str, Any] = {}
    for level in ("easy", "medium", "hard", "all"):
        units = [p for p, lv in level_of.items() if level in ("all", lv)]
        if not units:
            continue
        entry: dict[str, Any] = {"prompts": len(units), "images": sum(level in ("all", level_of[r["prompt"]]) for r in records),
                                 "_tables": {}}
        for name, (hit, counted) in METRICS.items():
            table = outcomes([records], units, hit, counted)
            entry["_tables"][name] = table
            value, ci = nested_bootstrap(table)
            entry[name] = {"value": value, "ci": ci}
        out[level] = entry
    return out


def paired_diff(after: dict[str, Any], before: dict[str, Any], level: str, metric: str) -> dict[str, Any]:
    """after - before, paired down to the image (both runs drew candidate k of a prompt from one seed)."""
    from unigap.shapesworld.evidence import nested_bootstrap

    value, ci = nested_bootstrap(after[level]["_tables"][metric], before[level]["_tables"][metric])
    return {"value": value, "ci": ci}


def plot(tables: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [lv for lv in ("easy", "medium", "hard", "all") if lv in tables["before"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(tables)
    for ax, metric, title in zip(axes, ("oracle_accuracy", "non_unification"),
                                 ("really correct (exact oracle)", "non-unification (own judge rejects)")):
        for j, (name, table) in enumerate(tables.items()):
            xs = [x + (j - (len(tables) - 1) / 2) * width for x in range(len(levels))]
            vals = [100 * table[lv][metric]["value"] for lv in levels]
            errs = [[100 * max(table[lv][metric]["value"] - table[lv][metric]["ci"][0], 0) for lv in levels],
                    [100 * max(table[lv][metric]["ci"][1] - table[lv][metric]["value"], 0) for lv in levels]]
            ax.bar(xs, vals, width, yerr=errs, capsize=2, label=NAMES[name])
        ax.set_xticks(range(len(levels)), levels)
        ax.set_ylim(0, 105)
        ax.set_ylabel("% of images")
        ax.set_title(title + ", 95% CI")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "outputs" / "demo"))
    parser.add_argument("--model", default=str(MODEL))
    parser.add_argument("--quick", action="store_true", help="the reduced size the test suite runs")
    parser.add_argument("--num-candidates", type=int, default=None)
    parser.add_argument("--cfg-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    from unigap.host.llamafactory.recipes import train_command, write_train_yaml
    from unigap.prompts import load_prompt_file
    from unigap.shapesworld.evidence import NAMES as MODEL_NAMES
    from unigap.shapesworld.evidence import EvidenceConfig, pct, recipe

    out, model = Path(args.out).resolve(), Path(args.model).resolve()
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            sys.exit(f"demo: {out} exists and is not an earlier demo output (no {MARKER}); choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by scripts/demo.py: the next demo run replaces this directory\n")
    n = args.num_candidates or (4 if args.quick else 6)
    cfg = EvidenceConfig(model=str(model), generation={"cfg_scale": args.cfg_scale}, num_candidates=n)
    if args.quick:
        cfg.sft_epochs, cfg.replay_epoch, cfg.dpo_epochs = 2, 1, 2
    unigap = BIN / "unigap"
    prompts = model / "prompts" / "val.jsonl"
    threshold = 0.5
    kinds = KINDS
    if args.quick:  # 6 prompts (1 easy, 2 medium, 3 hard), a strict judge so the pool is not empty, no DPO
        rows = load_prompt_file(prompts)
        picked = [r for lv, k in (("easy", 1), ("medium", 2), ("hard", 3)) for r in [x for x in rows if x.difficulty == lv][:k]]
        prompts = out / "prompts.jsonl"
        prompts.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in picked))
        threshold, kinds = 0.9, ("sft", "csft")
    selfplay = [unigap, "selfplay", "yaml_examples/selfplay.yaml", f"model_name_or_path={model}", f"prompts={prompts}",
                f"num_candidates={n}", f"cfg_scale={args.cfg_scale}", "seed=7", "batch_size=64",
                f"judge_threshold={threshold}", "progress=false"]
    times: dict[str, float] = {}
    runs = {"before": out / "selfplay_before"}
    total = time.perf_counter()
    step("1/6 self-play + self-judge on the validation prompts", selfplay + [f"output_dir={runs['before']}"],
         times, "self-play before")
    step("2/6 non-unification report", [unigap, "report", runs["before"]], times, "reports")
    data = out / "data"
    step("3/6 build SFT rows (every accepted image) and the discard pool",
         [unigap, "build", "sft", runs["before"], "--out", data, "--name", "gap_sft"], times, "build")
    step("3/6 build DPO pairs (most-yes vs most-no)",
         [unigap, "build", "dpo", runs["before"], "--out", data, "--name", "gap_dpo"], times, "build")
    trained = {}
    for kind in kinds:
        trained[kind] = out / "models" / kind
        path = write_train_yaml(out / "configs" / f"demo_{kind}.yaml", recipe(cfg, kind, data, trained[kind], seed=0))
        step(f"4/6 llamafactory-cli train ({MODEL_NAMES[kind]}, full fine-tuning)", train_command(path), times,
             f"train {MODEL_NAMES[kind]}")
    for kind in kinds:
        runs[kind] = out / f"selfplay_{kind}"
        step(f"5/6 self-play again with the {MODEL_NAMES[kind]} model",
             selfplay + [f"model_name_or_path={trained[kind]}", f"output_dir={runs[kind]}"], times, "self-play after")
    for kind in kinds:
        step(f"6/6 before / after report ({MODEL_NAMES[kind]})",
             [unigap, "report", runs["before"], runs[kind], "--out", out / f"report_{kind}"], times, "reports")

    start = time.perf_counter()
    tables = {name: oracle_table(run) for name, run in runs.items()}
    plot(tables, out / "summary.png")
    times["oracle + summary"] = time.perf_counter() - start
    times["total"] = time.perf_counter() - total
    replay = json.loads(next((trained["csft"] / "unigap_replay").glob("epoch_*/summary.json")).read_text())
    sft_rows = sum(1 for _ in (data / "gap_sft" / "data.jsonl").open())
    pool = sum(1 for _ in (data / "gap_sft" / "discard_pool.jsonl").open())
    pairs = sum(1 for _ in (data / "gap_dpo" / "data.jsonl").open())  # built even where DPO is not trained
    b = tables["before"]["all"]
    lines = [
        "# unigap demo: self-improvement of shapes-janus, judged by itself, checked by the exact oracle",
        "",
        f"{b['prompts']} validation prompts x {n} images, CFG {args.cfg_scale}, judge threshold {threshold}. "
        f"Training data from the first self-play: {sft_rows} SFT rows (accepted images), discard pool {pool} prompts, "
        f"{pairs} DPO pairs. C-SFT replayed the pool after epoch {cfg.replay_epoch}: {replay['prompts_tried']} tried, "
        f"{replay['prompts_recovered']} recovered, {replay['rows_added']} rows added. Self-play after training uses "
        "the same seeds, so before / after differences are paired. Figures in %, [95% CI] (bootstrap over prompts, then the images of each; changes paired image by image).",
        "",
        "## Before / after",
        "",
        "| model | really correct (oracle) | change | non-unification (own judge) | change | "
        "rejected that are really wrong | accepted that are really right |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in tables.items():
        a = t["all"]
        ch_acc = pct(paired_diff(tables[name], tables["before"], "all", "oracle_accuracy"), True) if name != "before" else ""
        ch_non = pct(paired_diff(tables[name], tables["before"], "all", "non_unification"), True) if name != "before" else ""
        lines.append(f"| {NAMES[name]} | {pct(a['oracle_accuracy'])} | {ch_acc} | {pct(a['non_unification'])} | "
                     f"{ch_non} | {pct(a['rejected_oracle_also_rejects'])} | {pct(a['accepted_oracle_accepts'])} |")
    lines += ["", "## Per difficulty level (oracle accuracy / non-unification, %)", "",
              "| model | " + " | ".join(lv for lv in ("easy", "medium", "hard") if lv in tables["before"]) + " |",
              "|---|" + "---|" * sum(lv in tables["before"] for lv in ("easy", "medium", "hard"))]
    for name, t in tables.items():
        lines.append(f"| {NAMES[name]} | " + " | ".join(
            f"{100 * t[lv]['oracle_accuracy']['value']:.1f} / {100 * t[lv]['non_unification']['value']:.1f}"
            for lv in ("easy", "medium", "hard") if lv in t) + " |")
    lines += [
        "",
        "The model trains on prompts it then draws again (in-distribution); `unigap evidence` measures the same "
        "loop on held-out test prompts over several seeds. Every candidate image, with the judge's P(yes): "
        "`report_sft/report.html` (and " + ", ".join(f"`report_{k}`" for k in kinds[1:]) + "). Plot: `summary.png`.",
        "",
        "## Wall time (seconds)",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in times.items()],
        "",
    ]
    md = "\n".join(lines)
    from unigap.report import md_to_html

    page = ("<!doctype html><html><head><meta charset='utf-8'><title>unigap demo</title><style>"
            "body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1100px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}</style></head><body>"
            f"<h1>{lines[0][2:]}</h1><img src='summary.png' alt='before / after'>{md_to_html(md.split(chr(10), 1)[1])}"
            + "".join(f"<p><a href='report_{k}/report.html'>every candidate, before vs {NAMES[k]}</a></p>" for k in kinds)
            + "</body></html>")
    clean = {name: {lv: {k: v for k, v in e.items() if k != "_tables"} for lv, e in t.items()} for name, t in tables.items()}
    (out / "summary.json").write_text(json.dumps({"tables": clean, "seconds": times, "sft_rows": sft_rows,
                                                  "discard_pool": pool, "dpo_pairs": pairs, "replay": replay,
                                                  "num_candidates": n, "cfg_scale": args.cfg_scale}, indent=1))
    (out / "summary.md").write_text(md)
    (out / "summary.html").write_text(page)
    print("\n" + md)
    print(f"wrote {out / 'summary.md'} and {out / 'summary.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
