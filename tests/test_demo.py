"""`make demo` on a reduced size: the whole loop on the embedded default, with the real CLIs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import changed_keys, gen_logp, state

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "shapes-janus"


@pytest.mark.e2e
def test_reduced_demo_runs_the_loop_and_reports_true_figures(tmp_path):
    from PIL import Image
    from transformers import AutoTokenizer, JanusForConditionalGeneration

    from unigap.shapesworld.world import oracle

    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "scripts/demo.py", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    runs = {"before": out / "selfplay_before", "sft": out / "selfplay_sft", "csft": out / "selfplay_csft"}
    threshold = json.loads((runs["before"] / "run.json").read_text())["config"]["judge_threshold"]

    # every figure of the summary, recomputed from the runs' own records and images
    for name, run in runs.items():
        records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
        assert len(records) == 6 * 4
        correct = [oracle(Image.open(run / r["image"]), r["prompt"]) for r in records]
        table = summary["tables"][name]["all"]
        assert table["oracle_accuracy"]["value"] == pytest.approx(np.mean(correct))
        assert table["non_unification"]["value"] == pytest.approx(np.mean([r["p_yes"] < threshold for r in records]))
        for level in ("easy", "medium", "hard"):
            sel = [c for r, c in zip(records, correct) if r["difficulty"] == level]
            assert summary["tables"][name][level]["oracle_accuracy"]["value"] == pytest.approx(np.mean(sel))
        lo, hi = table["oracle_accuracy"]["ci"]
        assert lo <= table["oracle_accuracy"]["value"] <= hi
    # the after runs drew with the trained models, from the same seeds (a paired comparison)
    meta = {k: json.loads((r / "run.json").read_text()) for k, r in runs.items()}
    assert len({m["model_fingerprint"] for m in meta.values()}) == 3
    seeds = {k: [json.loads(x)["seed"] for x in (r / "records.jsonl").read_text().splitlines()] for k, r in runs.items()}
    assert seeds["before"] == seeds["sft"] == seeds["csft"]

    # training data = the accepted images; the discard pool = prompts with none; C-SFT replayed exactly that pool
    before = [json.loads(line) for line in (runs["before"] / "records.jsonl").read_text().splitlines()]
    accepted = [r for r in before if r["p_yes"] >= threshold]
    rows = [json.loads(line) for line in (out / "data/gap_sft/data.jsonl").read_text().splitlines()]
    assert len(rows) == summary["sft_rows"] == len(accepted) > 0
    pool = {r["prompt_id"] for r in before} - {r["prompt_id"] for r in accepted}
    assert summary["discard_pool"] == len(pool) >= 1
    replay = summary["replay"]
    assert replay["prompts_tried"] == len(pool)
    assert (out / "models/csft/unigap_replay").is_dir()

    # SFT changed the LLM and the generation head, never the VQ tokenizer, and made its training images likelier
    base = JanusForConditionalGeneration.from_pretrained(MODEL).eval()
    tuned = JanusForConditionalGeneration.from_pretrained(out / "models/sft").eval()
    changed = changed_keys(state(base), state(tuned))
    assert any(".language_model." in k for k in changed) and any("generation_head" in k for k in changed)
    assert not any("vqmodel" in k for k in changed)
    tok = AutoTokenizer.from_pretrained(MODEL)
    data = out / "data"

    def mean_logp(model):
        values = []
        for row in rows:
            codes = np.load(data / row["images"][0].replace(".png", ".codes.npy"))
            values.append(gen_logp(model, tok, row["messages"][0]["content"], torch.as_tensor(codes)))
        return float(np.mean(values))

    assert mean_logp(tuned) > mean_logp(base)

    # the report a person reads: Markdown + HTML + plot, with the per-model reports it links to
    md = (out / "summary.md").read_text()
    assert "| after C-SFT |" in md and "## Wall time" in md
    page = (out / "summary.html").read_text()
    assert "summary.png" in page and (out / "summary.png").stat().st_size > 10_000
    for kind in ("sft", "csft"):
        assert f"report_{kind}/report.html" in page and (out / f"report_{kind}/report.html").exists()


def test_demo_never_replaces_a_directory_it_did_not_write(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("user data")
    proc = subprocess.run([sys.executable, "scripts/demo.py", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "is not an earlier demo output" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "user data"
