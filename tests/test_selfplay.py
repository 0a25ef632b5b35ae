"""`unigap selfplay` and `unigap report` on the real tiny model, through the real command line.

Runs are compared file by file (bytes): determinism and exactly-once resumption
are properties of the run directory a user gets, not of internal state.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SYSTEM, USER
from PIL import Image

from conftest import BIN, ENV, ROOT, run

# every test here runs `unigap selfplay` / `unigap report` in subprocesses (torchrun and accelerate too)
pytestmark = pytest.mark.e2e

PROMPTS = [
    {"id": "e1", "prompt": "a red square", "difficulty": "easy", "category": "colour"},
    {"id": "e2", "prompt": "a blue circle", "difficulty": "easy", "category": "shape"},
    {"prompt": "two green squares", "difficulty": "medium", "category": "count"},
    {"id": 7, "prompt": "a yellow circle above a red square", "difficulty": "hard", "category": "spatial"},
    {"id": "m2", "prompt": "a green circle and a blue square", "difficulty": "medium", "category": "binding"},
    {"id": "h2", "prompt": "a big red circle left of a small blue square", "difficulty": "hard"},
]
N = 3
# the untrained tiny model's P(yes) sits near 0.47: this threshold accepts some images and rejects others
THRESHOLD = 0.475
RESULT_FILES = ("records.jsonl", "summary.json")


def _write_prompts(path: Path, rows=PROMPTS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def selfplay(model, prompts, out, *extra, env=None, expect_ok=True, timeout=300):
    cmd = [
        str(BIN / "unigap"),
        "selfplay",
        f"model_name_or_path={model}",
        f"prompts={prompts}",
        f"output_dir={out}",
        f"num_candidates={N}",
        f"judge_threshold={THRESHOLD}",
        "seed=3",
        *extra,
    ]
    proc = run(cmd, env=env, timeout=timeout)
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f"selfplay failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run (run.json aside: it records the batch size and output dir used)."""
    files = {}
    for path in sorted(run_dir.rglob("*")):
        if path.is_file() and path.name != "run.json" and "report" not in path.parts:
            files[str(path.relative_to(run_dir))] = path.read_bytes()
    return files


def assert_same_run(a: Path, b: Path) -> None:
    sa, sb = snapshot(a), snapshot(b)
    assert sorted(sa) == sorted(sb), set(sa) ^ set(sb)
    different = [name for name in sa if sa[name] != sb[name]]
    assert not different, f"files differ: {different[:5]}"
    ma, mb = (json.loads((d / "run.json").read_text()) for d in (a, b))
    assert ma["config_fingerprint"] == mb["config_fingerprint"]
    assert ma["model_fingerprint"] == mb["model_fingerprint"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory) -> Path:
    return _write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.jsonl")


@pytest.fixture(scope="session")
def reference_run(tiny_model, prompts_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("selfplay") / "reference"
    selfplay(tiny_model, prompts_file, out, "batch_size=4")
    return out


# ---------------------------------------------------------------------------------- the run itself
def test_run_directory_holds_one_record_per_candidate_with_its_files(reference_run, tiny_model):
    from transformers import AutoTokenizer, JanusForConditionalGeneration

    from unigap.codes import load_codes
    from unigap.models.janus import JanusAdapter

    recs = records(reference_run)
    assert [(r["prompt_index"], r["candidate"]) for r in recs] == [(i, k) for i in range(len(PROMPTS)) for k in range(N)]
    assert [r["prompt_id"] for r in recs[::N]] == ["e1", "e2", "3", "7", "m2", "h2"]  # missing id = line number
    assert recs[2 * N]["difficulty"] == "medium" and recs[5 * N]["category"] is None
    assert len({r["seed"] for r in recs}) == len(recs)
    accepted = [r["accepted"] for r in recs]
    assert any(accepted) and not all(accepted), "the test threshold should split the candidates"
    assert all(r["accepted"] == (r["p_yes"] >= THRESHOLD) for r in recs)
    assert not (reference_run / "parts").exists()
    assert not list(reference_run.rglob("*.tmp"))

    # each PNG is the decoding of its codes, and the codes are what the model draws from the recorded seed
    model = JanusForConditionalGeneration.from_pretrained(tiny_model).eval()
    adapter = JanusAdapter(model, AutoTokenizer.from_pretrained(tiny_model))
    meta = json.loads((reference_run / "run.json").read_text())
    for rec in recs[:: N + 1]:
        codes = load_codes(reference_run / rec["codes"], adapter.spec)
        redrawn = adapter.generate([rec["prompt"]], seeds=[rec["seed"]], cfg_scale=meta["config"]["cfg_scale"])
        assert redrawn[0].tolist() == codes.tolist()
        png = np.asarray(Image.open(reference_run / rec["image"]).convert("RGB"))
        decoded = np.asarray(adapter.decode_codes(torch.from_numpy(codes)[None])[0])
        assert np.abs(png.astype(int) - decoded.astype(int)).max() <= 1


def test_judge_is_the_models_own_understanding_of_its_decoded_image(reference_run, tiny):
    """P(yes) recomputed with transformers' own forward, image processor and chat format."""
    model, tokenizer, processor = tiny
    n = model.config.vision_config.num_image_tokens
    yes = tokenizer.encode(" Yes", add_special_tokens=False)[0]
    no = tokenizer.encode(" No", add_special_tokens=False)[0]
    for rec in records(reference_run)[:4]:
        question = f"Does this image show {rec['prompt']}?"
        text = SYSTEM + USER.format("<begin_of_image>" + "<image_placeholder>" * n + "<end_of_image>\n" + question)
        ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False)])
        image = Image.open(reference_run / rec["image"]).convert("RGB")
        pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logits = model(input_ids=ids, pixel_values=pixels).logits[0, -1]
        p_yes = torch.softmax(logits[[yes, no]].double(), -1)[0].item()
        assert abs(p_yes - rec["p_yes"]) < 1e-5


def test_judge_batched_equals_one_by_one(tiny):
    from unigap.models.janus import JanusAdapter

    model, tokenizer, _ = tiny
    adapter = JanusAdapter(model, tokenizer)
    prompts = ["a red square", "two blue circles", "a green circle above a yellow square", "a circle"]
    codes = adapter.generate(prompts, seeds=[1, 2, 3, 4], cfg_scale=2.0)
    images = adapter.decode_codes(codes)
    questions = [f"Does this image show {p}?" for p in prompts]
    batched = adapter.judge(images, questions)
    single = torch.cat([adapter.judge([im], [q]) for im, q in zip(images, questions)])
    assert torch.allclose(batched, single, atol=1e-6, rtol=0)
    assert (batched - batched.mean()).abs().max() > 1e-4  # different images/questions -> different answers


def test_same_images_and_judgments_whatever_the_batch_size(reference_run, tiny_model, prompts_file, tmp_path):
    one = tmp_path / "bs1"
    selfplay(tiny_model, prompts_file, one, "batch_size=1", "progress=false")
    assert_same_run(reference_run, one)
    seven = tmp_path / "bs7"
    selfplay(tiny_model, prompts_file, seven, "batch_size=7", "progress=false")
    assert_same_run(reference_run, seven)
    # and a different seed really draws other images (the comparison can fail)
    other = tmp_path / "seed4"
    selfplay(tiny_model, prompts_file, other, "batch_size=4", "seed=4", "progress=false")
    assert records(other)[0]["seed"] != records(reference_run)[0]["seed"]
    assert (other / "images/000000-000.codes.npy").read_bytes() != (reference_run / "images/000000-000.codes.npy").read_bytes()


LAUNCHERS = {
    "torchrun": ["torchrun", "--nproc_per_node", "2", "--master_port", "29531"],
    # accelerate on a CPU machine: --multi_gpu only selects its torch.distributed launcher
    "accelerate": ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533"],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_equal_one_process(launcher, reference_run, tiny_model, prompts_file, tmp_path):
    out = tmp_path / "ddp"
    head = [str(BIN / LAUNCHERS[launcher][0]), *LAUNCHERS[launcher][1:]]
    cmd = head + [
        "-m", "unigap", "selfplay", f"model_name_or_path={tiny_model}", f"prompts={prompts_file}",
        f"output_dir={out}", f"num_candidates={N}", f"judge_threshold={THRESHOLD}", "seed=3", "batch_size=2",
    ]
    proc = run(cmd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rank 0/2" in proc.stderr  # really two ranks
    assert_same_run(reference_run, out)


# ---------------------------------------------------------------------------------- kill and resume
def _count_writes(run_dir: Path) -> int:
    # run.json + (codes + png) per candidate + one part per prompt + records + summary
    return 1 + len(PROMPTS) * (2 * N + 1) + 2


@pytest.mark.parametrize("kill_at", ["first", "merge", "summary"])
def test_kill_minus_nine_mid_write_then_resume_equals_uninterrupted(kill_at, reference_run, tiny_model, prompts_file, tmp_path):
    total = _count_writes(reference_run)
    at = {"first": 2, "merge": total - 1, "summary": total}[kill_at]
    out = tmp_path / "run"
    killed = selfplay(
        tiny_model, prompts_file, out, "batch_size=4", "progress=false",
        env={"UNIGAP_KILL_AT_WRITE": str(at)}, expect_ok=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert list(out.rglob("*.tmp")), "the kill should leave a temporary file behind"
    assert not (out / "summary.json").exists()
    resumed = selfplay(tiny_model, prompts_file, out, "batch_size=5", "progress=false")
    assert resumed.returncode == 0
    assert_same_run(reference_run, out)


def test_external_kill_at_any_moment_then_resume(reference_run, tiny_model, prompts_file, tmp_path):
    """A real kill -9 from outside, while the run is busy, twice; the third launch finishes it."""
    out = tmp_path / "run"
    cmd = [
        str(BIN / "unigap"), "selfplay", f"model_name_or_path={tiny_model}", f"prompts={prompts_file}",
        f"output_dir={out}", f"num_candidates={N}", f"judge_threshold={THRESHOLD}", "seed=3", "batch_size=1",
        "progress=false",
    ]
    env = {**os.environ, **ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for wanted in (1, 3):
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            parts = out / "parts"
            if parts.is_dir() and len(list(parts.glob("*.jsonl"))) >= wanted:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (out / "summary.json").exists(), "the run finished before it could be killed"
    selfplay(tiny_model, prompts_file, out, "batch_size=4", "progress=false")
    assert_same_run(reference_run, out)


def test_resume_into_a_run_with_another_configuration_is_refused(reference_run, tiny_model, prompts_file, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    before = snapshot(out)
    proc = selfplay(tiny_model, prompts_file, out, "cfg_scale=2.0", expect_ok=False)
    assert proc.returncode == 2
    assert "different configuration" in proc.stderr and "cfg_scale: 5.0 -> 2.0" in proc.stderr
    assert snapshot(out) == before
    # the same configuration with another batch size is the same run: nothing to do
    again = selfplay(tiny_model, prompts_file, out, "batch_size=2")
    assert "already complete" in again.stderr and snapshot(out) == before


# ---------------------------------------------------------------------------------- report
def _independent_bootstrap(groups: list[list[tuple[float, bool]]], rng, reps=4000):
    out = {"non_unification": [], "mean_p_yes": [], "pass_at_n": []}
    for _ in range(reps):
        chosen = [groups[i] for i in rng.integers(0, len(groups), len(groups))]
        resampled = [[g[j] for j in rng.integers(0, len(g), len(g))] for g in chosen]
        flat = [c for g in resampled for c in g]
        out["non_unification"].append(1 - sum(a for _, a in flat) / len(flat))
        out["mean_p_yes"].append(sum(p for p, _ in flat) / len(flat))
        out["pass_at_n"].append(np.mean([any(a for _, a in g) for g in resampled]))
    return {k: np.percentile(v, [2.5, 97.5]) for k, v in out.items()}


def test_report_numbers_recomputed_from_records(reference_run, tmp_path):
    out = tmp_path / "report"
    proc = run([str(BIN / "unigap"), "report", str(reference_run), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    recs = records(reference_run)
    rng = np.random.default_rng(123)

    def check(entry, subset):
        by_prompt: dict[str, list] = {}
        for r in subset:
            by_prompt.setdefault(r["prompt_id"], []).append((r["p_yes"], r["accepted"]))
        groups = list(by_prompt.values())
        assert entry["n_prompts"] == len(groups) and entry["n_images"] == len(subset)
        assert entry["non_unification"]["value"] == pytest.approx(1 - sum(r["accepted"] for r in subset) / len(subset))
        assert entry["mean_p_yes"]["value"] == pytest.approx(np.mean([r["p_yes"] for r in subset]))
        assert entry["pass_at_n"]["value"] == pytest.approx(np.mean([any(a for _, a in g) for g in groups]))
        assert entry["discard_pool"] == sum(not any(a for _, a in g) for g in groups)
        mine = _independent_bootstrap(groups, rng)
        for key, (lo, hi) in mine.items():
            got = entry[key]["ci"]
            assert got[0] <= entry[key]["value"] + 1e-12 <= got[1] + 2e-12
            # percentiles of a discrete distribution may land one step (one image / prompt) apart
            slack = 0.15 * (hi - lo) + (0.01 if key == "mean_p_yes" else 1.0 / len(groups) + 1e-9)
            assert abs(got[0] - lo) <= slack and abs(got[1] - hi) <= slack, (key, got, lo, hi)

    result = report["runs"][0]
    check(result["overall"], recs)
    for level in ("easy", "medium", "hard"):
        check(result["per_difficulty"][level], [r for r in recs if r["difficulty"] == level])
    assert list(result["per_difficulty"]) == ["easy", "medium", "hard"]
    check(result["per_category"]["(none)"], [r for r in recs if r["category"] is None])
    # a one-prompt group with mixed judgments still gets a non-degenerate interval
    for r in (result["per_category"][c] for c in result["per_category"]):
        if 0 < r["non_unification"]["value"] < 1:
            assert r["non_unification"]["ci"][1] > r["non_unification"]["ci"][0]

    md = (out / "report.md").read_text()
    overall = result["overall"]["non_unification"]
    assert f"{100 * overall['value']:.1f}%" in md and "| difficulty: hard |" in md
    assert Image.open(out / "non_unification_by_difficulty.png").size[0] > 300
    page = (out / "report.html").read_text()
    for rec in recs:  # every candidate shown, marked as the record says, and the link resolves
        src = os.path.relpath(reference_run / rec["image"], out)
        marker = f"<span class='cand {'ok' if rec['accepted'] else 'no'}'><img src='{src}'"
        assert marker in page and (out / src).is_file()


def test_report_compares_two_runs(reference_run, tiny_model, prompts_file, tmp_path):
    after = tmp_path / "after"
    selfplay(tiny_model, prompts_file, after, "seed=11", "judge_threshold=0.474", "progress=false")
    out = tmp_path / "cmp"
    proc = run([str(BIN / "unigap"), "report", str(reference_run), str(after), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    comp = json.loads((out / "report.json").read_text())["comparison"]
    before_recs, after_recs = records(reference_run), records(after)

    def nonu(recs):
        return 1 - sum(r["accepted"] for r in recs) / len(recs)

    entry = comp["overall"]["non_unification"]
    assert comp["overall"]["paired"] is True
    assert entry["before"] == pytest.approx(nonu(before_recs)) and entry["after"] == pytest.approx(nonu(after_recs))
    assert entry["diff"] == pytest.approx(nonu(after_recs) - nonu(before_recs))
    assert entry["ci"][0] <= entry["diff"] <= entry["ci"][1]
    for group in [comp["overall"], *comp["per_difficulty"].values()]:
        for key in ("non_unification", "mean_p_yes", "pass_at_n"):
            lo, hi = group[key]["ci"]
            assert group[key]["outside_ci"] == (lo > 0 or hi < 0)
    md = (out / "report.md").read_text()
    assert "## Before / after" in md and "outside CI" in md
    page = (out / "report.html").read_text()
    assert page.count("<span class='run'>before</span>") == len(PROMPTS)
    assert page.count("<span class='run'>after</span>") == len(PROMPTS)


def test_selfplay_example_yaml_runs_as_is(tmp_path):
    out = tmp_path / "example"
    proc = run([str(BIN / "unigap"), "selfplay", "yaml_examples/selfplay.yaml", f"output_dir={out}", "max_prompts=6"], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["n_images"] == 6 * summary["num_candidates"]
    assert "non-unification" in proc.stdout


def test_report_of_an_unfinished_run_needs_allow_partial(reference_run, tiny_model, prompts_file, tmp_path):
    out = tmp_path / "run"
    killed = selfplay(tiny_model, prompts_file, out, "batch_size=4", "progress=false",
                      env={"UNIGAP_KILL_AT_WRITE": str(1 + 2 * (2 * N + 1) + 1)}, expect_ok=False)
    assert killed.returncode == -signal.SIGKILL
    refused = run([str(BIN / "unigap"), "report", str(out)])
    assert refused.returncode == 2 and "is not complete (2 prompts finished" in refused.stderr
    assert "--allow-partial" in refused.stderr and not (out / "report").exists()
    proc = run([str(BIN / "unigap"), "report", str(out), "--allow-partial"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["partial"] == [True] and report["runs"][0]["overall"]["n_prompts"] == 2
    assert report["runs"][0]["overall"]["n_images"] == 2 * N
    assert "unfinished run" in (out / "report" / "report.md").read_text()

