"""Show-o end to end through the real, unmodified ``llamafactory-cli`` (``template: showo``) in a subprocess.

Effects are measured with the model's plain forward (tests/showo_helpers.py): the masked-token
likelihood of trained images, P(answer) of understanding rows, the DPO margin, which weights moved.
"""

from __future__ import annotations

import json

import pytest
import torch
from showo_helpers import answer_logp, masked_logp, quadrants, write_rows

from conftest import BIN, base_config, lf_train, run

pytestmark = pytest.mark.e2e

PROMPTS = ["a red square", "a blue circle", "a green square", "a yellow circle"]


def _load(path, adapter_path=None):
    from unigap.models.showo import ShowoAdapter

    return ShowoAdapter.load(str(path), dtype=torch.float32, adapter_path=adapter_path and str(adapter_path))


@pytest.fixture(scope="module")
def base(tiny_showo):
    return _load(tiny_showo)


@pytest.fixture(scope="module")
def targets():
    return {p: quadrants(100 + i) for i, p in enumerate(PROMPTS[:2])}


@pytest.fixture(scope="module")
def pairs():
    return {p: (quadrants(200 + i), quadrants(300 + i)) for i, p in enumerate(PROMPTS)}


@pytest.fixture(scope="module")
def und_items(base, targets):
    """(image, question, answer): the target images, asked about their own prompt (Yes) and another (No)."""
    images = dict(zip(targets, base.decode_codes(torch.tensor(list(targets.values())))))
    items = []
    for p, image in images.items():
        other = next(q for q in PROMPTS if q != p)
        items += [(image, f"Does this image show {p}?", "Yes"), (image, f"Does this image show {other}?", "No")]
    return items


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, base, targets, pairs, und_items):
    from unigap.codes import save_gen_image
    from unigap.host.llamafactory.datasets import gen_dpo_row, gen_sft_row, und_sft_row

    root = tmp_path_factory.mktemp("showo_data")

    def image(name, codes):
        save_gen_image(root / name, base.decode_codes(torch.tensor([codes]))[0], list(codes))
        return name

    gen = [gen_sft_row(p, image(f"gen/{i}.png", t)) for i, (p, t) in enumerate(targets.items())]
    write_rows(root, "fixed_gen", gen * 8)
    dpo = [gen_dpo_row(p, image(f"dpo/{i}c.png", c), image(f"dpo/{i}r.png", r)) for i, (p, (c, r)) in enumerate(pairs.items())]
    write_rows(root, "fixed_dpo", dpo * 2, ranking=True)
    und = []
    for i, (img, question, answer) in enumerate(und_items):
        (root / "und").mkdir(exist_ok=True)
        img.save(root / f"und/{i}.png")
        und.append(und_sft_row(f"und/{i}.png", question, answer))
    write_rows(root, "und", und * 2)
    return root


def _config(model, data_dir, dataset, out, **overrides):
    return base_config(model, data_dir, dataset, out, template="showo", **overrides)


@pytest.fixture(scope="module")
def sft_lora(tmp_path_factory, tiny_showo, data_dir):
    out = tmp_path_factory.mktemp("showo_sft") / "out"
    lf_train(_config(tiny_showo, data_dir, "fixed_gen,und", out, learning_rate=1e-2, num_train_epochs=6,
                     gen_prompt_dropout=0.1), out.parent)
    return out


def test_sft_lora_learns_the_images_and_the_answers(base, tiny_showo, sft_lora, targets, und_items):
    trained = _load(tiny_showo, sft_lora)
    gains = [masked_logp(trained.model, trained, p, t) - masked_logp(base.model, base, p, t) for p, t in targets.items()]
    assert min(gains) > 3.0, gains  # nats per code
    lifts = [answer_logp(trained.model, trained, im, q, a) - answer_logp(base.model, base, im, q, a) for im, q, a in und_items]
    assert min(lifts) > 2.0, lifts
    history = json.loads((sft_lora / "trainer_state.json").read_text())["log_history"]
    assert any("gen_loss" in row and "text_loss" in row for row in history)
    # LoRA on the language model only: never the image tokenizer
    from safetensors import safe_open

    with safe_open(str(sft_lora / "adapter_model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all(".showo." in k for k in keys) and not any("vq_model" in k for k in keys)
    # the trained model samples its targets (the sampler is the same code as self-play's)
    wanted = torch.tensor([t for t in targets.values() for _ in range(2)])
    prompts = [p for p in targets for _ in range(2)]
    share = float((trained.generate(prompts, seeds=[0, 1, 2, 3], steps=8) == wanted).float().mean())
    before = float((base.generate(prompts, seeds=[0, 1, 2, 3], steps=8) == wanted).float().mean())
    assert before < 0.02 and share > 0.1, (before, share)


def test_full_sft_changes_the_language_model_only_and_saves_a_showo_checkpoint(tmp_path, base, tiny_showo, data_dir, targets):
    out = tmp_path / "out"
    cfg = _config(tiny_showo, data_dir, "fixed_gen,und", out, finetuning_type="full", learning_rate=1e-3,
                  num_train_epochs=2)
    cfg.pop("lora_target"), cfg.pop("lora_rank")
    lf_train(cfg, tmp_path)
    trained = _load(out)  # a plain Show-o checkpoint: config, weights, tokenizer, processor
    before, after = base.model.state_dict(), trained.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("showo.model.layers.") for k in changed) and "showo.lm_head.weight" in changed
    assert not any(k.startswith("vq_model.") for k in changed)
    assert (out / "processor_config.json").exists()


def _train_dpo(tmp_path_factory, tiny_showo, data_dir, **overrides):
    out = tmp_path_factory.mktemp("showo_dpo") / "out"
    cfg = _config(tiny_showo, data_dir, "fixed_dpo", out, stage="dpo", learning_rate=5e-3, num_train_epochs=6,
                  pref_beta=0.1)
    cfg.update(overrides)
    lf_train(cfg, out.parent)
    return out


def test_dpo_raises_the_margin_against_an_unchanged_reference(tmp_path_factory, base, tiny_showo, data_dir, pairs):
    out = _train_dpo(tmp_path_factory, tiny_showo, data_dir)
    trained = _load(tiny_showo, out)

    def margin(a, p, c, r):
        return masked_logp(a.model, a, p, c) - masked_logp(a.model, a, p, r)

    gains = [margin(trained, p, c, r) - margin(base, p, c, r) for p, (c, r) in pairs.items()]
    assert min(gains) > 0.1, gains
    check = json.loads((out / "unigap_reference_check.json").read_text())
    assert check["unchanged"] and check["tensors"] > 50, check


def test_dpo_precomputed_reference_equals_the_live_one(tmp_path_factory, tiny_showo, data_dir):
    """The estimator's mask depends on the pair's prompt only: reference log-probs computed once before
    training are the ones the live reference would give at every step."""
    live = _train_dpo(tmp_path_factory, tiny_showo, data_dir, num_train_epochs=2)
    pre = _train_dpo(tmp_path_factory, tiny_showo, data_dir, num_train_epochs=2, gen_precompute_ref=True)

    def curve(out):
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        return [v for row in history if "rewards/margins" in row for v in (row["loss"], row["rewards/margins"])]

    assert len(curve(live)) == len(curve(pre)) >= 4
    assert curve(live) == pytest.approx(curve(pre), abs=1e-4)
    report = json.loads((pre / "unigap_reference_check.json").read_text())
    assert report["unchanged"] and report["precomputed_pairs"] == 4


def test_export_merges_the_lora_into_a_showo_checkpoint(tmp_path, tiny_showo, sft_lora, targets):
    export_dir = tmp_path / "merged"
    yaml_path = tmp_path / "export.yaml"
    yaml_path.write_text(
        f"model_name_or_path: {tiny_showo}\nadapter_name_or_path: {sft_lora}\ntemplate: showo\n"
        f"finetuning_type: lora\nexport_dir: {export_dir}\ninfer_dtype: float32\nexport_device: cpu\n"
    )
    proc = run([str(BIN / "llamafactory-cli"), "export", str(yaml_path)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    exported, in_memory = _load(export_dir), _load(tiny_showo, sft_lora)
    prompts = list(targets)
    assert torch.equal(exported.generate(prompts, seeds=[5, 6], steps=6), in_memory.generate(prompts, seeds=[5, 6], steps=6))


def test_a_janus_dataset_in_a_showo_run_names_the_row(tmp_path, tiny_showo, example_data):
    """Rows whose images carry another model's codes (a tiny Janus: 16 codes of 64) are refused by name."""
    proc = lf_train(_config(tiny_showo, example_data, "unigap_gen_sft", tmp_path / "out", num_train_epochs=1),
                    tmp_path, expect_ok=False)
    assert proc.returncode != 0
    text = proc.stderr[-4000:]
    assert "generation row with prompt" in text and "16" in text and "64" in text, text


def test_selfplay_build_and_training_with_replay_of_the_discard_pool(tmp_path, tiny_showo):
    """The whole loop on Show-o: self-play -> build (SFT + discard pool) -> C-SFT with curriculum and replay,
    whose mid-training images are drawn with Show-o's own sampling keys."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p, "difficulty": ["easy", "hard"][i % 2]}) + "\n"
                               for i, p in enumerate(PROMPTS)))
    run_dir = tmp_path / "run"
    proc = run([str(BIN / "unigap"), "selfplay", f"model_name_or_path={tiny_showo}", f"prompts={prompts}",
                f"output_dir={run_dir}", "num_candidates=3", "steps=4", "progress=false"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    assert len(records) == 12 and {r["candidate"] for r in records} == {0, 1, 2}
    # a threshold between the prompts' best P(yes): some prompts keep images, the others go to the pool
    best = sorted({max(r["p_yes"] for r in records if r["prompt_id"] == pid) for pid in {r["prompt_id"] for r in records}})
    threshold = (best[1] + best[2]) / 2
    data = tmp_path / "data"
    proc = run([str(BIN / "unigap"), "build", "sft", str(run_dir), "--out", str(data), "--name", "sp",
                "--threshold", repr(threshold)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    pool = (data / "sp" / "discard_pool.jsonl").read_text().splitlines()
    assert len(pool) == 2
    out = tmp_path / "out"
    cfg = _config(tiny_showo, data, "sp", out, num_train_epochs=2, replay_epochs=1, replay_pool="sp",
                  replay_steps=3, curriculum_difficulty="label")
    lf_train(cfg, tmp_path)
    summary = json.loads((out / "unigap_replay/epoch_1/summary.json").read_text())
    assert summary["prompts_tried"] == len(pool) and summary["candidates"] == 2 * 3
    assert summary["settings"]["steps"] == 3 and summary["settings"]["guidance_scale"] == 1.75, summary["settings"]


def test_torchrun_with_understanding_on_one_rank_and_generation_on_the_other(tmp_path, tiny_showo, data_dir):
    """Show-o under DDP (2 CPU ranks): a generation row on one rank, an understanding row on the other,
    every step; both heads' losses are logged (summed over ranks) and training neither hangs nor diverges."""
    import shutil
    import subprocess

    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    rows = json.loads((root / "fixed_gen.json").read_text())[:1] + json.loads((root / "und.json").read_text())[:1]
    write_rows(root, "mix", rows)
    out = tmp_path / "out"
    cfg = _config(tiny_showo, root, "mix", out, per_device_train_batch_size=1, num_train_epochs=3)
    try:
        lf_train(cfg, tmp_path, env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"}, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("DDP training hung")
    history = [r for r in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in r]
    assert len(history) == 3 and all("gen_loss" in r and "text_loss" in r for r in history), history
    assert history[-1]["loss"] < history[0]["loss"], history


def _full_sft(root, tiny_showo, data_dir, name, env, **extra):
    out = root / name / "out"
    cfg = _config(tiny_showo, data_dir, "fixed_gen,und", out, finetuning_type="full", learning_rate=1e-3,
                  per_device_train_batch_size=2, max_steps=3, **extra)
    cfg.pop("lora_target"), cfg.pop("lora_rank")
    (root / name).mkdir()
    lf_train(cfg, root / name, env=env, timeout=300)
    return out


@pytest.fixture(scope="module")
def ddp_full_sft(tmp_path_factory, tiny_showo, data_dir):
    """Full generation + understanding SFT of the tiny Show-o as plain DDP on 2 CPU ranks."""
    from test_sharded import TWO

    return _full_sft(tmp_path_factory.mktemp("showo_ddp"), tiny_showo, data_dir, "ddp", TWO)


@pytest.mark.parametrize("engine", ["fsdp2", "zero3"])
def test_sharded_full_sft_shards_show_o_and_trains_like_ddp(tmp_path, base, tiny_showo, data_dir, ddp_full_sft, engine):
    """Show-o under FSDP2 (2 CPU processes, tests/cpu_fsdp) and DeepSpeed ZeRO-3 (the shipped ds_z3_config.json):
    every parameter sharded, each rank holding about half the bytes, the same losses as plain DDP, and a saved plain
    Show-o checkpoint equal to DDP's (LLM trained, VQ not)."""
    from test_sharded import CPU_FSDP, FSDP2, TWO, Z3, _assert_halves, _assert_sharded, _assert_zero3, _losses, _reports

    numel = sum(p.numel() for p in base.model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in base.model.parameters())
    if engine == "fsdp2":
        out = _full_sft(tmp_path, tiny_showo, data_dir, engine, CPU_FSDP, **FSDP2)
        reports = _reports(out)
        for r in reports:
            _assert_sharded(r, numel)
            assert r["checksum_end"] != r["checksum_begin"], r
        _assert_halves(reports)
    else:
        out = _full_sft(tmp_path, tiny_showo, data_dir, engine, TWO, deepspeed=Z3)
        _assert_zero3(_reports(out), numel, nbytes)
    assert all(set(r["by_type"]) == {"Parameter"} for r in _reports(ddp_full_sft))
    assert _losses(out) == pytest.approx(_losses(ddp_full_sft), rel=1e-4, abs=1e-5)
    sharded, plain = (_load(d).model.state_dict() for d in (out, ddp_full_sft))
    before = base.model.state_dict()
    assert all(torch.equal(sharded[k], v) for k, v in before.items() if k.startswith("vq_model."))
    # the update itself equals DDP's (Adam turns the reduction-order noise of near-zero gradients into full-size
    # steps for a few entries, so the update vectors are compared as a whole)
    delta = {k: torch.cat([(sd[n] - before[n]).flatten() for n in before]) for k, sd in (("sharded", sharded), ("ddp", plain))}
    assert delta["ddp"].norm() > 0
    assert (delta["sharded"] - delta["ddp"]).norm() < 0.02 * delta["ddp"].norm()
    assert any(not torch.equal(sharded[k], before[k]) for k in before if k.startswith("showo.model.layers."))
