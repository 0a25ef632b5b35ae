"""`unigap evidence` on a reduced size for both embedded models (one per family), through the real CLI and
`llamafactory-cli train`, and `unigap evidence-compare` side by side on the two results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"shapes-janus": ("janus", {"cfg_scale": 1.0}), "shapes-showo": ("showo", {"guidance_scale": 0.0})}
#: the shared LLM's weights in each family's checkpoint
LLM_PREFIX = {"janus": "model.language_model.", "showo": "showo.model.layers."}
REDUCED = ["--seeds", "0", "--num-candidates", "2", "--eval-samples", "2", "--und-items", "2", "--sft-epochs", "2",
           "--dpo-epochs", "2", "--replay-epoch", "1", "--grad-pairs", "3"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unigap", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def evidence_runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("evidence")
    runs = {}
    for name in MODELS:
        out = base / name
        proc = _cli("evidence", "--model", f"models/{name}", "--out", str(out), *REDUCED)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[name] = out
    return runs


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(MODELS))
def test_reduced_evidence_runs_for_each_family(name, evidence_runs):
    from PIL import Image

    from unigap.shapesworld.world import oracle

    family, unguided = MODELS[name]
    out = evidence_runs[name]
    result = json.loads((out / "evidence.json").read_text())
    # every draw sampled the model itself: the family's own unguided keys, resolved from the checkpoint
    assert {k: result["config"]["sampling"][k] for k in unguided} == unguided
    assert sorted(result["claims"]) == ["1", "2", "3", "4", "5", "6"]
    verdicts = {"confirmed", "refuted", "not confirmed", "partly confirmed"}
    for number, claim in result["claims"].items():
        parts = [v.split(": ")[-1] for v in claim["verdict"].split("; ")]
        assert set(parts) <= verdicts, (number, claim["verdict"])
    # the base model's figures are a recount of its own records (20 test prompts x 2 images)
    records = json.loads((out / "seed_0" / "eval" / "base.json").read_text())["generation"]
    assert len(records) == 40
    assert result["table"]["base"]["oracle_accuracy"]["all"]["value"] == pytest.approx(np.mean([r["correct"] for r in records]))
    assert result["table"]["base"]["non_unification"]["all"]["value"] == pytest.approx(
        np.mean([r["p_yes"] < 0.5 for r in records]))
    # the self-play images are the model's own, and the oracle's verdicts on them were stored as it reads them
    run = out / "seed_0" / "selfplay"
    meta = json.loads((run / "run.json").read_text())
    assert meta["spec"]["model_type"] == family and meta["num_prompts"] == 67
    assert {k: meta["config"][k] for k in unguided} == unguided and meta["config"]["num_candidates"] == 2
    lines = (run / "records.jsonl").read_text().splitlines()
    assert len(lines) == 67 * 2
    first = json.loads(lines[0])
    with Image.open(run / first["image"]) as img:
        assert isinstance(oracle(img, first["prompt"]), bool)
    # the three trainings changed the shared LLM, never the image tokenizer
    base = _tensors(ROOT / "models" / name)
    for kind in ("sft", "csft", "dpo"):
        trained = _tensors(out / "seed_0" / "models" / kind)
        assert set(trained) == set(base), kind
        tokenizer_keys = [k for k in base if "vq" in k]
        assert tokenizer_keys and all((trained[k] == base[k]).all() for k in tokenizer_keys), kind
        llm = [k for k in base if k.startswith(LLM_PREFIX[family])]
        changed = [k for k in llm if not (trained[k] == base[k]).all()]
        assert llm and len(changed) > len(llm) // 2, (kind, len(changed), len(llm))
    assert (out / "evidence.md").read_text().count("| ") > 20


@pytest.mark.e2e
def test_evidence_compare_puts_the_families_side_by_side(evidence_runs, tmp_path):
    janus, showo = evidence_runs["shapes-janus"], evidence_runs["shapes-showo"]
    proc = _cli("evidence-compare", str(janus), str(showo), "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md.count("| figure | shapes-janus | shapes-showo |") == 7  # the base model's gap + six claims
    comparison = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    results = {"shapes-janus": json.loads((janus / "evidence.json").read_text()),
               "shapes-showo": json.loads((showo / "evidence.json").read_text())}
    for label, result in results.items():  # figures and verdicts are the runs' own, not recomputed
        figures = comparison["claims"]["3"]["figures"][label]
        assert figures["oracle accuracy, SFT - base (points)"] == result["claims"]["3"]["oracle_accuracy_sft_minus_base"]
        assert comparison["claims"]["1"]["verdicts"][label] == result["claims"]["1"]["verdict"]
        assert comparison["claims"]["0"]["figures"][label]["non-unification, all test prompts (%)"] == \
            result["table"]["base"]["non_unification"]["all"]
    diff = comparison["claims"]["0"]["difference"]
    a, b = (results[k]["table"]["base"]["non_unification"]["all"]["value"] for k in ("shapes-janus", "shapes-showo"))
    assert diff["value"] == pytest.approx(a - b) and diff["ci"][0] <= a - b <= diff["ci"][1]
    # a directory that holds no finished evidence is named, and nothing is written
    bad = _cli("evidence-compare", str(janus), str(tmp_path / "nothing"), "--out", str(tmp_path / "cmp2"))
    assert bad.returncode == 2 and "nothing: no evidence.json" in bad.stderr
    assert not (tmp_path / "cmp2").exists()
