"""`unigap loop` without starting a model-loading subprocess: the per-round training YAML, refusals,
held-out figures against a recount, launchers, early stop, the independent judge (fast tier)."""

from __future__ import annotations

import os

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT

SHAPES = ROOT / "models" / "shapes-janus"

USER_YAML = """\
### model
model_name_or_path: my/old-model
adapter_name_or_path: my/old-adapter
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 16
deepspeed: examples/deepspeed/ds_z3_config.json
fsdp: full_shard auto_wrap
fsdp_config:
  fsdp_version: 2
template: janus
dataset: something_else
learning_rate: 3.0e-5
replay_pool: old_pool
replay_epochs: 2
output_dir: saves/mine
num_train_epochs: 4
"""


def test_round_training_yaml_fills_four_keys_and_keeps_every_other_as_written(tmp_path):
    from unigap.loop.config import read_train_template, round_train_config

    (tmp_path / "t.yaml").write_text(USER_YAML)
    template = read_train_template(str(tmp_path / "t.yaml"))
    config = round_train_config(template, model="/loop/round_1/model", adapter=None, datasets=["loop_sft", "loop_sft_und"],
                                dataset_dir="/loop/round_1/data", output_dir="/loop/round_1/train_0/output")
    assert config["model_name_or_path"] == "/loop/round_1/model" and "adapter_name_or_path" not in config
    assert config["dataset"] == "loop_sft,loop_sft_und" and config["dataset_dir"] == "/loop/round_1/data"
    assert config["output_dir"] == "/loop/round_1/train_0/output" and config["replay_pool"] == "loop_sft"
    filled = {"model_name_or_path", "adapter_name_or_path", "dataset", "dataset_dir", "output_dir", "replay_pool"}
    assert {k: v for k, v in config.items() if k not in filled} == {k: v for k, v in template.items() if k not in filled}
    assert config["deepspeed"] == "examples/deepspeed/ds_z3_config.json" and config["learning_rate"] == 3.0e-5
    assert config["fsdp_config"] == {"fsdp_version": 2}
    assert [k for k in config if k in template and k != "adapter_name_or_path"] == [
        k for k in template if k != "adapter_name_or_path"]  # in the user's order, dataset_dir appended
    assert list(config)[-1] == "dataset_dir"
    # a carried LoRA adapter (merge_lora: false) is set in place
    carried = round_train_config(template, model="m", adapter="/loop/round_1/train_0/output", datasets=["loop_sft"],
                                 dataset_dir="d", output_dir="o")
    assert carried["adapter_name_or_path"] == "/loop/round_1/train_0/output"
    # what the loop writes is what the host reads: the same keys back from the YAML file
    from unigap.loop.commands import write_yaml

    assert yaml.safe_load(write_yaml(tmp_path / "round.yaml", config).read_text()) == config


def _loop_yaml(tmp_path: Path, template: str = USER_YAML.replace("stage: sft", "stage: sft"), **extra) -> Path:
    (tmp_path / "train.yaml").write_text(template)
    config = {"model_name_or_path": str(SHAPES), "train_prompts": str(SHAPES / "prompts/train.jsonl"),
              "eval_prompts": str(SHAPES / "prompts/test.jsonl"), "train_yaml": str(tmp_path / "train.yaml"),
              "output_dir": str(tmp_path / "loop"), **extra}
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "loop.yaml"


def test_a_loop_directory_of_other_settings_is_refused_naming_the_keys(tmp_path):
    from unigap.loop.config import LoopConfigError, load_loop_config
    from unigap.loop.run import claim_directory

    path = _loop_yaml(tmp_path)
    out = claim_directory(load_loop_config(str(path)))
    assert json.loads((out / "loop.json").read_text())["settings"]["train_yaml"][0]["learning_rate"] == 3.0e-5
    claim_directory(load_loop_config(str(path), ["rounds=5", "progress=false"]))  # more rounds: the same results
    (tmp_path / "train.yaml").write_text(USER_YAML.replace("3.0e-5", "1.0e-4"))  # the user edits the training YAML
    with pytest.raises(LoopConfigError) as err:
        claim_directory(load_loop_config(str(path), ["num_candidates=8"]))
    assert "num_candidates: 4 -> 8" in str(err.value) and "train_yaml[0].learning_rate: 3e-05 -> 0.0001" in str(err.value)
    # a folder the loop did not make is never written into
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("user data")
    with pytest.raises(LoopConfigError, match="not a unigap loop directory"):
        claim_directory(load_loop_config(str(path), [f"output_dir={foreign}"]))
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_bad_loop_settings_fail_before_anything_runs_naming_the_item(tmp_path):
    from unigap.loop.config import LoopConfigError, load_loop_config
    from unigap.loop.run import Loop

    path = _loop_yaml(tmp_path)
    with pytest.raises(LoopConfigError, match="unknown loop key 'num_candidate'.*num_candidates"):
        load_loop_config(str(path), ["num_candidate=3"])
    with pytest.raises(LoopConfigError, match="launcher must be one of"):
        load_loop_config(str(path), ["launcher=torchrunn"])
    with pytest.raises(LoopConfigError, match="needs an oracle"):
        load_loop_config(str(path), ["early_stop_metric=oracle_accuracy"])
    (tmp_path / "dpo.yaml").write_text(USER_YAML.replace("stage: sft", "stage: dpo"))
    with pytest.raises(LoopConfigError, match="dpo.yaml trains stage dpo but build is 'sft'"):
        Loop(load_loop_config(str(path), [f"train_yaml={tmp_path / 'dpo.yaml'}"]))
    (tmp_path / "full.yaml").write_text(USER_YAML.replace("finetuning_type: lora", "finetuning_type: full"))
    with pytest.raises(LoopConfigError, match="full fine-tuning after a LoRA step"):
        Loop(load_loop_config(str(path), [f"train_yaml=[{tmp_path / 'train.yaml'}, {tmp_path / 'full.yaml'}]",
                                          "merge_lora=false"]))
    assert not (tmp_path / "loop").exists()


@pytest.mark.parametrize("name", ["loop_shapes.yaml", "loop_shapes_csft.yaml", "loop_shapes_dpo.yaml",
                                  "loop_shapes_showo.yaml"])
def test_shipped_loop_examples_load_and_plan(name, tmp_path, monkeypatch):
    from unigap.loop.config import load_loop_config
    from unigap.loop.run import Loop

    monkeypatch.chdir(ROOT)
    loop = Loop(load_loop_config(f"yaml_examples/{name}", [f"output_dir={tmp_path / 'out'}"]))
    assert loop.total_stages >= 5 and loop.config.oracle == "shapesworld"


def test_shipped_loop_examples_each_have_their_own_output_dir_and_model():
    """Two examples sharing an output directory would refuse each other's runs (or mix them)."""
    examples = sorted((ROOT / "yaml_examples").glob("loop_shapes*.yaml"))
    configs = {p.name: yaml.safe_load(p.read_text()) for p in examples}
    dirs = [c["output_dir"] for c in configs.values()]
    assert len(configs) >= 4 and len(set(dirs)) == len(dirs), dirs
    for name, c in configs.items():  # the output directory names the model it runs
        assert Path(c["model_name_or_path"]).name in c["output_dir"], name
        assert c["train_prompts"].startswith(c["model_name_or_path"]), name


def _records(p_yes: list[list[float]], levels: list[str], threshold: float = 0.5) -> list[dict]:
    return [{"prompt_id": f"p{j}", "prompt": f"prompt {j}", "difficulty": levels[j], "candidate": k, "p_yes": p,
             "accepted": p >= threshold} for j, row in enumerate(p_yes) for k, p in enumerate(row)]


def test_held_out_figures_equal_a_recount_and_paired_changes_are_paired():
    from unigap.loop.evaluate import EvalTable, figures, paired_differences

    rng = np.random.default_rng(0)
    levels = ["easy", "easy", "medium", "hard", "hard", "hard"]
    before = _records(rng.random((6, 5)).tolist(), levels)
    after = _records(rng.random((6, 5)).tolist(), levels)
    correct = rng.random(30) < 0.4
    judge = rng.random(30)
    scores = [{"prompt_id": r["prompt_id"], "candidate": r["candidate"], "oracle_correct": bool(c),
               "judge_p_yes": float(p), "judge_accepted": bool(p >= 0.5)} for r, c, p in zip(before, correct, judge)]
    fig = figures(EvalTable(before, scores))
    accepted = np.array([r["accepted"] for r in before])
    assert fig["non_unification"]["all"]["value"] == pytest.approx(1 - accepted.mean())
    assert fig["oracle_accuracy"]["all"]["value"] == pytest.approx(correct.mean())
    assert fig["oracle_agreement"]["all"]["value"] == pytest.approx((correct == accepted).mean())
    assert fig["judge_agreement"]["all"]["value"] == pytest.approx(((judge >= 0.5) == accepted).mean())
    assert fig["judge_mean_p_yes"]["all"]["value"] == pytest.approx(judge.mean())
    hard = np.array([r["difficulty"] == "hard" for r in before])
    assert fig["oracle_accuracy"]["hard"]["value"] == pytest.approx(correct[hard].mean())
    assert fig["pass_at_n"]["all"]["value"] == pytest.approx(
        np.mean([accepted[5 * j: 5 * j + 5].any() for j in range(6)]))
    for metric in fig.values():
        for entry in metric.values():
            assert entry["ci"][0] <= entry["value"] <= entry["ci"][1]
    same = paired_differences(EvalTable(before, []), EvalTable(before, []))
    assert same["non_unification"]["value"] == 0 and same["non_unification"]["ci"] == [0.0, 0.0]
    diff = paired_differences(EvalTable(after, []), EvalTable(before, []))
    assert diff["mean_p_yes"]["value"] == pytest.approx(np.mean([r["p_yes"] for r in after]) - np.mean([r["p_yes"] for r in before]))
    assert "oracle_accuracy" not in diff  # no oracle scores: no oracle figure


def test_early_stop_follows_the_best_score_with_patience():
    from unigap.loop.run import early_stop

    assert early_stop([0.3, 0.4, 0.5], "oracle_accuracy", 1, 0.0) is None
    assert "for 1 round" in early_stop([0.3, 0.4, 0.35], "oracle_accuracy", 1, 0.0)
    assert early_stop([0.3, 0.4, 0.35], "oracle_accuracy", 2, 0.0) is None
    assert early_stop([0.3, 0.305], "oracle_accuracy", 1, 0.01) is not None  # below min_delta: no improvement
    assert early_stop([0.4, 0.3], "non_unification", 1, 0.0) is None  # lower is better


def test_launchers_build_the_hosts_own_commands():
    from unigap.loop.commands import train_command, unigap_command

    plain = train_command("r1.yaml")
    assert plain.argv[1:] == ["train", "r1.yaml"] and plain.argv[0].endswith("llamafactory-cli") and not plain.env
    torchrun = train_command("r1.yaml", "torchrun", 8)
    assert torchrun.env["FORCE_TORCHRUN"] == "1" and torchrun.env["NPROC_PER_NODE"] == "8"
    assert "FORCE_TORCHRUN=1 NPROC_PER_NODE=8" in torchrun.shell()
    acc = train_command("r1.yaml", "accelerate", 4, "my_accelerate.yaml")
    assert acc.argv[1:6] == ["launch", "--num_processes", "4", "--main_process_port", "29581"]
    assert acc.argv[-3:] == ["-m", "llamafactory.launcher", "r1.yaml"] and "my_accelerate.yaml" in acc.argv
    sp = unigap_command(["selfplay", "s.yaml"], "torchrun", 2)
    assert sp.argv[0].endswith("torchrun") and sp.argv[-4:] == ["-m", "unigap", "selfplay", "s.yaml"]


def test_independent_judge_reads_p_yes_in_one_forward(tmp_path):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from unigap.vlm_judge import JudgeModelError, VLMJudge, build_tiny_vlm_judge

    path = build_tiny_vlm_judge(tmp_path / "judge")
    judge = VLMJudge(str(path))
    images = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    questions = ["Does this image show a red bar?", "Does this image show a blue square?"]
    together = judge.p_yes(images, questions)
    assert together == [judge.p_yes([i], [q])[0] for i, q in zip(images, questions)]  # batch-invariant
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    yes, no = (processor.tokenizer.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": questions[0]}]}]
    inputs = processor(text=[processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)],
                       images=[images[0]], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].float()
    assert together[0] == pytest.approx(float(torch.softmax(logits[[yes, no]], -1)[0]), abs=1e-6)
    assert 0.0 < together[0] < 1.0
    with pytest.raises(JudgeModelError, match=str(tmp_path / "nothing")):
        VLMJudge(str(tmp_path / "nothing"))


def test_a_sigterm_to_the_loop_stops_the_command_it_is_running(tmp_path):
    """`kill` / `timeout` / a scheduler stopping the loop must not leave its self-play or training running."""
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    script = (
        "import sys\nfrom pathlib import Path\nfrom unigap.loop.commands import Command, Live, run_command\n"
        f"run_command(Command([sys.executable, '-c', {child!r}]), Path({str(tmp_path / 'log.txt')!r}), "
        "stage='s', label='l', live=Live(False))\n"
    )
    loop = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and loop.poll() is None, "the command never started"
        time.sleep(0.1)
    child_pid = int(pid_file.read_text())
    loop.send_signal(signal.SIGTERM)
    assert loop.wait(timeout=30) == 128 + signal.SIGTERM
    try:
        os.kill(child_pid, 0)
        alive = not open(f"/proc/{child_pid}/stat").read().split()[2] == "Z"
    except ProcessLookupError:
        alive = False
    assert not alive, "the command kept running after the loop was stopped"
