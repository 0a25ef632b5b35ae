"""`unigap loop` end to end on the tiny random Janus: two rounds through the real commands (unigap
selfplay / build, the unmodified llamafactory-cli train and export), an exact oracle and an independent
judge (a tiny random LLaVA built offline); kill -9 in every stage, then rerun, equals the uninterrupted run."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import BIN, ROOT, run

pytestmark = pytest.mark.e2e

SHAPES = ROOT / "models" / "shapes-janus" / "prompts"
THRESHOLD = 0.475
LR = 2.0e-3
TEMPLATE = {  # the user's own training YAML (LoRA: every round is merged with llamafactory-cli export)
    "model_name_or_path": "placeholder/filled-in-by-the-loop",
    "stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_target": "all", "lora_rank": 8,
    "template": "janus", "cutoff_len": 512, "overwrite_output_dir": True, "logging_steps": 1,
    "per_device_train_batch_size": 4, "learning_rate": LR, "lr_scheduler_type": "constant", "num_train_epochs": 1,
    "max_grad_norm": 0.5, "bf16": False, "report_to": "none", "save_strategy": "no", "seed": 0, "data_seed": 0,
    "dataloader_num_workers": 0, "preprocessing_num_workers": 1,
}


def _prompts(path: Path, source: Path, per_level: dict[str, int]) -> Path:
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    picked = [r for level, k in per_level.items() for r in [x for x in rows if x["difficulty"] == level][:k]]
    path.write_text("".join(json.dumps(r) + "\n" for r in picked))
    return path


@pytest.fixture(scope="session")
def tiny_judge(tmp_path_factory) -> Path:
    from unigap.vlm_judge import build_tiny_vlm_judge

    return build_tiny_vlm_judge(tmp_path_factory.mktemp("judge") / "tiny-llava")


@pytest.fixture(scope="session")
def loop_setup(tmp_path_factory, tiny_model, tiny_judge) -> Path:
    work = tmp_path_factory.mktemp("loop")
    (work / "train.yaml").write_text(yaml.safe_dump(TEMPLATE, sort_keys=False))
    config = {
        "model_name_or_path": str(tiny_model),
        "train_prompts": str(_prompts(work / "train.jsonl", SHAPES / "train.jsonl", {"easy": 1, "medium": 1, "hard": 2})),
        "eval_prompts": str(_prompts(work / "eval.jsonl", SHAPES / "test.jsonl", {"easy": 1, "medium": 1, "hard": 1})),
        "rounds": 2, "num_candidates": 2, "eval_candidates": 2, "batch_size": 8, "judge_threshold": THRESHOLD,
        "seed": 3, "eval_seed": 99, "train_yaml": str(work / "train.yaml"),
        "oracle": "shapesworld", "judge_model": str(tiny_judge), "progress": False,
    }
    (work / "loop.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return work


def loop(work: Path, out: Path, *extra: str, env: dict | None = None):
    return run([str(BIN / "unigap"), "loop", str(work / "loop.yaml"), f"output_dir={out}", *extra], env=env, timeout=600)


@pytest.fixture(scope="session")
def reference(loop_setup) -> Path:
    out = loop_setup / "reference"
    proc = loop(loop_setup, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]


def test_two_rounds_run_every_stage_from_the_trained_model(reference, loop_setup, tiny_model):
    report = json.loads((reference / "report/report.json").read_text())
    assert report["rounds_done"] == 2 and [e["round"] for e in report["rounds"]] == [0, 1, 2]
    journal = json.loads((reference / "journal.json").read_text())["stages"]
    assert sorted(journal) == sorted(["r0.eval", "r1.selfplay", "r1.build", "r1.train0", "r1.export0", "r1.eval",
                                      "r2.selfplay", "r2.build", "r2.train0", "r2.export0", "r2.eval"])
    assert all(e["done"] and e["attempts"] == 1 for e in journal.values())
    # round r starts from round r-1's merged model: the self-play and evaluation runs say so by their weights
    fp = {key: json.loads((reference / run / "run.json").read_text())["model_fingerprint"]
          for key, run in (("r0", "round_0/eval/run"), ("r1", "round_1/eval/run"), ("r2", "round_2/eval/run"),
                           ("r1sp", "round_1/selfplay/run"), ("r2sp", "round_2/selfplay/run"))}
    assert fp["r1sp"] == fp["r0"] and fp["r2sp"] == fp["r1"] and len({fp["r0"], fp["r1"], fp["r2"]}) == 3
    second = yaml.safe_load((reference / "round_2/train_0/train.yaml").read_text())
    assert second["model_name_or_path"] == str(reference / "round_1/export_0/model")
    assert (reference / "round_1/export_0/model/model.safetensors").exists()
    # every held-out seed is the same in every round (paired), the train self-play seed moves with the round
    seeds = [[r["seed"] for r in records(reference / f"round_{i}/eval/run")] for i in range(3)]
    assert seeds[0] == seeds[1] == seeds[2]
    assert records(reference / "round_1/selfplay/run")[0]["seed"] != records(reference / "round_2/selfplay/run")[0]["seed"]
    # the report a person reads
    md = (reference / "report/report.md").read_text()
    assert "## Change against round 0" in md and "## Wall time per stage" in md and "(best)" in md
    assert (reference / "report/rounds.png").stat().st_size > 10_000
    assert (reference / "report/before_vs_last/report.html").exists()


def test_user_training_keys_reach_the_host_untouched(reference, loop_setup):
    for r in (1, 2):
        written = yaml.safe_load((reference / f"round_{r}/train_0/train.yaml").read_text())
        filled = {"model_name_or_path", "dataset", "dataset_dir", "output_dir"}
        assert {k: v for k, v in written.items() if k not in filled} == {k: v for k, v in TEMPLATE.items() if k not in filled}
        assert list(written)[: len(TEMPLATE)] == list(TEMPLATE)  # the user's order too
        assert written["dataset"] == "loop_sft" and written["dataset_dir"] == str(reference / f"round_{r}/data")
        # what the host trained with: the user's learning rate at every logged step (constant schedule)
        state = json.loads((reference / f"round_{r}/train_0/output/trainer_state.json").read_text())
        logged = [row["learning_rate"] for row in state["log_history"] if "learning_rate" in row]
        assert logged and all(lr == pytest.approx(LR) for lr in logged)
        assert (reference / f"round_{r}/train_0/output/adapter_model.safetensors").exists()


def test_figures_equal_a_recount_from_the_runs_own_records(reference, tiny_judge):
    """Non-unification, oracle accuracy, the independent judge's P(yes) and agreement, recounted without
    unigap's evaluation code: the oracle on each PNG, the judge through transformers' own forward."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from unigap.shapesworld.world import oracle

    processor = AutoProcessor.from_pretrained(tiny_judge)
    judge = AutoModelForImageTextToText.from_pretrained(tiny_judge).eval()
    yes, no = (processor.tokenizer.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
    report = json.loads((reference / "report/report.json").read_text())
    for entry in report["rounds"]:
        run_dir = reference / entry["eval_run"]
        recs = records(run_dir)
        correct, p_judge = [], []
        for r in recs:
            image = Image.open(run_dir / r["image"]).convert("RGB")
            correct.append(oracle(image, r["prompt"]))
            chat = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": f"Does this image show {r['prompt']}?"}]}]
            text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            with torch.no_grad():
                logits = judge(**processor(text=[text], images=[image], return_tensors="pt")).logits[0, -1]
            p_judge.append(float(torch.softmax(logits[[yes, no]].float(), -1)[0]))
        accepted = [r["p_yes"] >= THRESHOLD for r in recs]
        judged = [p >= 0.5 for p in p_judge]
        ev = entry["eval"]
        assert ev["non_unification"]["all"]["value"] == pytest.approx(1 - np.mean(accepted))
        assert ev["oracle_accuracy"]["all"]["value"] == pytest.approx(np.mean(correct))
        assert ev["oracle_agreement"]["all"]["value"] == pytest.approx(np.mean([a == c for a, c in zip(accepted, correct)]))
        assert ev["judge_mean_p_yes"]["all"]["value"] == pytest.approx(np.mean(p_judge), abs=1e-6)
        assert ev["judge_accuracy"]["all"]["value"] == pytest.approx(np.mean(judged))
        assert ev["judge_agreement"]["all"]["value"] == pytest.approx(np.mean([a == j for a, j in zip(accepted, judged)]))
        for level in ("easy", "medium", "hard"):
            sel = [not a for a, r in zip(accepted, recs) if r["difficulty"] == level]
            assert ev["non_unification"][level]["value"] == pytest.approx(np.mean(sel))
        for metric in ("non_unification", "judge_agreement"):
            lo, hi = ev[metric]["all"]["ci"]
            assert lo <= ev[metric]["all"]["value"] <= hi
        if entry["round"]:
            d = entry["vs_round_0"]["non_unification"]
            assert d["value"] == pytest.approx(ev["non_unification"]["all"]["value"]
                                               - report["rounds"][0]["eval"]["non_unification"]["all"]["value"])
            sp = records(reference / f"round_{entry['round']}/selfplay/run")
            assert entry["selfplay"]["discard_pool"] == len({r["prompt_id"] for r in sp}) - len(
                {r["prompt_id"] for r in sp if r["accepted"]})
            rows = (reference / f"round_{entry['round']}/data/loop_sft/data.jsonl").read_text().splitlines()
            assert entry["build"]["sft"]["rows"] == len(rows) == sum(r["accepted"] for r in sp)


def _comparable(entry: dict) -> dict:
    """A round of the report without what differs between two runs of the same loop (wall time, attempts)."""
    return {k: v for k, v in entry.items() if k not in ("seconds", "attempts")}


#: a kill -9 in every kind of stage: during its command (self-play killed after publishing a prompt, the
#: build at its first write, training at its first logged step, the merge at its first file), while the
#: evaluation is being scored, and after a stage's work but before the journal records it
KILLS = ["r0.eval:end", "r1.selfplay:during", "r1.build:during", "r1.train0:during", "r1.export0:during",
         "r1.eval:scoring"]


def test_kill_9_in_every_stage_then_rerun_equals_the_uninterrupted_run(reference, loop_setup):
    out = loop_setup / "killed"  # one round (rounds does not change results: the reference's first round)
    for point in KILLS:
        proc = loop(loop_setup, out, "rounds=1", env={"UNIGAP_LOOP_KILL": point})
        assert proc.returncode == -signal.SIGKILL, f"{point}: {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        stage = point.split(":")[0]
        entry = json.loads((out / "journal.json").read_text())["stages"][stage]
        assert not entry["done"], point  # killed before the journal recorded it: the rerun redoes it
        if point == "r1.selfplay:during":  # killed after its first prompt was published: the rerun resumes it
            assert len(list((out / "round_1/selfplay/run/parts").glob("*.jsonl"))) == 1
    proc = loop(loop_setup, out, "rounds=1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    journal = json.loads((out / "journal.json").read_text())["stages"]
    assert all(journal[p.split(":")[0]]["attempts"] == 2 for p in KILLS)
    mine = json.loads((out / "report/report.json").read_text())["rounds"]
    theirs = json.loads((reference / "report/report.json").read_text())["rounds"]
    assert [_comparable(e) for e in mine] == [_comparable(e) for e in theirs[:2]]
    for r in range(2):  # bit-identical: every held-out image and P(yes), and the trained weights
        a, b = out / f"round_{r}/eval", reference / f"round_{r}/eval"
        assert records(a / "run") == records(b / "run")
        assert (a / "scores.jsonl").read_bytes() == (b / "scores.jsonl").read_bytes()
        for codes in sorted((b / "run/images").glob("*.codes.npy")):
            assert (a / "run/images" / codes.name).read_bytes() == codes.read_bytes()
    from safetensors.numpy import load_file

    mine_w = load_file(out / "round_1/train_0/output/adapter_model.safetensors")
    theirs_w = load_file(reference / "round_1/train_0/output/adapter_model.safetensors")
    assert mine_w.keys() == theirs_w.keys() and all(np.array_equal(mine_w[k], theirs_w[k]) for k in mine_w)


def test_a_changed_setting_on_an_existing_loop_directory_is_refused(reference, loop_setup):
    before = (reference / "journal.json").read_bytes()
    proc = loop(loop_setup, reference, "num_candidates=3", "eval_seed=7")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "num_candidates: 2 -> 3" in proc.stderr and "eval_seed: 99 -> 7" in proc.stderr, proc.stderr[-2000:]
    assert (reference / "journal.json").read_bytes() == before
