"""`make demo` (`unigap loop yaml_examples/loop_shapes.yaml`) on a reduced size: two rounds on the embedded
default with the real CLIs; and `scripts/demo.py` (`make demo-one-round`) never replaces a folder it did not write."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "shapes-janus"


def test_demo_never_replaces_a_directory_it_did_not_write(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("user data")
    proc = subprocess.run([sys.executable, "scripts/demo.py", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "is not an earlier demo output" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "user data"


@pytest.mark.e2e
def test_make_demo_loop_two_rounds_on_the_embedded_default_reports_true_figures(tmp_path):
    """`make demo` = `unigap loop yaml_examples/loop_shapes.yaml`, reduced: two rounds on 24 train prompts,
    evaluated on the 20 held-out prompts by the model's own judge and the exact oracle."""
    from PIL import Image

    from unigap.shapesworld.world import oracle

    out = tmp_path / "loop"
    proc = subprocess.run([sys.executable, "-m", "unigap", "loop", "yaml_examples/loop_shapes.yaml", f"output_dir={out}",
                           "max_train_prompts=24", "eval_candidates=4", "progress=false"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "$ " in proc.stdout and "llamafactory-cli train" in proc.stdout  # the commands it runs, printed
    report = json.loads((out / "report/report.json").read_text())
    assert report["rounds_done"] == 2 and report["best_metric"] == "oracle_accuracy"
    for entry in report["rounds"]:
        run = out / entry["eval_run"]
        records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
        assert len(records) == 20 * 4
        correct = [oracle(Image.open(run / r["image"]), r["prompt"]) for r in records]
        assert entry["eval"]["oracle_accuracy"]["all"]["value"] == pytest.approx(np.mean(correct))
        assert entry["eval"]["non_unification"]["all"]["value"] == pytest.approx(np.mean([not r["accepted"] for r in records]))
        for level in ("easy", "medium", "hard"):
            sel = [c for r, c in zip(records, correct) if r["difficulty"] == level]
            assert entry["eval"]["oracle_accuracy"][level]["value"] == pytest.approx(np.mean(sel))
        if entry["round"]:  # trained by the host from the previous round's model, full fine-tuning as the YAML says
            written = (out / f"round_{entry['round']}/train_0/train.yaml").read_text()
            assert "finetuning_type: full" in written and "learning_rate: 0.0001" in written
            assert entry["train"][0]["train_loss"] > 0 and entry["seconds"]["train0"] > 0
    assert report["best_round"] in (0, 1, 2)
    md = (out / "report/report.md").read_text()
    assert f"**Best round: {report['best_round']}**" in md and "oracle accuracy per difficulty" in md


def test_make_demo_takes_either_embedded_model():
    """`make demo MODEL=...`: the Janus loop by default, the Show-o loop for models/shapes-showo, a clear error
    for any other model (dry runs: what make would execute)."""
    def dry(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "-n", "demo", *args], cwd=ROOT, capture_output=True, text=True)

    assert "unigap loop yaml_examples/loop_shapes.yaml" in dry().stdout
    assert "unigap loop yaml_examples/loop_shapes_showo.yaml" in dry("MODEL=models/shapes-showo").stdout
    assert "unigap loop yaml_examples/loop_shapes.yaml" in dry("MODEL=models/shapes-janus/").stdout
    other = subprocess.run(["make", "demo", "MODEL=models/mine"], cwd=ROOT, capture_output=True, text=True)
    assert other.returncode != 0 and "no demo loop for MODEL=models/mine" in other.stderr


@pytest.mark.e2e
def test_make_demo_loop_runs_on_the_embedded_showo(tmp_path):
    """`make demo MODEL=models/shapes-showo` = `unigap loop yaml_examples/loop_shapes_showo.yaml`, reduced: one
    round on 12 train prompts; the trained round is Show-o trained by the host with template showo."""
    out = tmp_path / "loop"
    proc = subprocess.run([sys.executable, "-m", "unigap", "loop", "yaml_examples/loop_shapes_showo.yaml",
                           f"output_dir={out}", "rounds=1", "max_train_prompts=12", "eval_candidates=2",
                           "progress=false"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report/report.json").read_text())
    assert report["rounds_done"] == 1 and [r["round"] for r in report["rounds"]] == [0, 1]
    written = (out / "round_1/train_0/train.yaml").read_text()
    assert "template: showo" in written and "shapes-showo" in written
    assert report["rounds"][1]["train"][0]["train_loss"] > 0
    run = out / report["rounds"][1]["eval_run"]
    assert json.loads((run / "run.json").read_text())["config"]["guidance_scale"] == 0.0
    assert len((run / "records.jsonl").read_text().splitlines()) == 20 * 2
