"""End to end through the real, unmodified ``llamafactory-cli`` in a subprocess.

Every test measures an effect with transformers' own modules (tests/helpers.py),
not unigap's forward: likelihoods of the trained targets, greedy generations,
which weights moved.
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pytest
from helpers import (
    answer_logp,
    changed_keys,
    gen_logp,
    hf_greedy,
    load_trained,
    prompt_ids,
    state,
    write_gen_dataset,
)
from PIL import Image

from conftest import BIN, base_config, lf_train, one_of_each, run

pytestmark = pytest.mark.e2e

PROMPTS = ["a red square", "a blue circle", "a green square", "a yellow circle"]


def _codes(seed: int, n: int = 16, k: int = 64) -> list[int]:
    return np.random.default_rng(seed).integers(0, k, n).tolist()


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def targets():
    return {p: _codes(100 + i) for i, p in enumerate(PROMPTS[:2])}


@pytest.fixture(scope="module")
def pairs():
    return {p: (_codes(200 + i), _codes(300 + i)) for i, p in enumerate(PROMPTS)}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny, example_data, targets, pairs):
    """Generation SFT rows (fixed targets), DPO pairs, plus the example understanding rows."""
    import shutil

    model, tokenizer, _ = tiny
    root = tmp_path_factory.mktemp("train_data")
    shutil.copytree(example_data, root, dirs_exist_ok=True)
    write_gen_dataset(root, "fixed_gen", [(p, t) for p, t in targets.items()] * 8, model, tokenizer)
    write_gen_dataset(root, "fixed_dpo", [(p, c, r) for p, (c, r) in pairs.items()] * 2, model, tokenizer, ranking=True)
    return root


def _und_rows(example_data):
    rows = json.loads((example_data / "und_sft.json").read_text())
    return [
        (Image.open(example_data / r["images"][0]), r["messages"][0]["content"].replace("<image>", ""), r["messages"][1]["content"])
        for r in rows
    ]


@pytest.fixture(scope="module")
def sft_lora(tmp_path_factory, tiny_model, data_dir):
    out = tmp_path_factory.mktemp("sft_lora") / "out"
    weights = _sha(tiny_model / "model.safetensors")
    cfg = base_config(
        tiny_model, data_dir, "fixed_gen,unigap_und_sft", out, learning_rate=1e-2, num_train_epochs=15, plot_loss=True
    )
    lf_train(cfg, out.parent)
    assert _sha(tiny_model / "model.safetensors") == weights, "training must never write into the base model"
    return out


def test_gen_sft_lora_learns_images_and_understanding(tiny, tiny_model, sft_lora, targets, example_data):
    model, tokenizer, processor = tiny
    trained = load_trained(tiny_model, sft_lora)
    for prompt, codes in targets.items():
        before, after = gen_logp(model, tokenizer, prompt, codes), gen_logp(trained, tokenizer, prompt, codes)
        assert after > before + len(codes), (prompt, before, after)  # > 1 nat per code
        # Mild guidance: with only two training prompts the unconditional branch (trained by prompt
        # dropout) is lopsided, and strong guidance would push away from the majority image.
        hits_before = sum(a == b for a, b in zip(hf_greedy(model, tokenizer, prompt, 1.5), codes))
        hits_after = sum(a == b for a, b in zip(hf_greedy(trained, tokenizer, prompt, 1.5), codes))
        assert hits_after > hits_before and hits_after >= len(codes) // 2, (prompt, hits_before, hits_after)
    # understanding was trained in the same run (mixed data)
    und = _und_rows(example_data)
    before = sum(answer_logp(model, tokenizer, processor, *row) for row in und)
    after = sum(answer_logp(trained, tokenizer, processor, *row) for row in und)
    assert after > before + 1.0, (before, after)
    history = json.loads((sft_lora / "trainer_state.json").read_text())["log_history"]
    gen = [row["gen_loss"] for row in history if "gen_loss" in row]
    text = [row["text_loss"] for row in history if "text_loss" in row]
    assert gen and text and gen[-1] < gen[0], (gen, text)
    for plot in ("training_loss.png", "training_gen_loss.png", "training_text_loss.png"):
        assert (sft_lora / plot).exists(), plot


def test_gen_sft_lora_touches_only_the_llm_and_generation_head(sft_lora):
    from safetensors.torch import load_file

    adapter = load_file(sft_lora / "adapter_model.safetensors")
    assert adapter, "empty adapter"
    assert all(("language_model" in k or "generation_head" in k) and "lora_" in k for k in adapter), sorted(adapter)[:5]
    assert any("generation_head" in k for k in adapter) and any("language_model" in k for k in adapter)
    cfg = json.loads((sft_lora / "adapter_config.json").read_text())
    targets = cfg["target_modules"]
    targets = targets if isinstance(targets, list) else [targets]
    assert not any("vqmodel" in t or "vision_model" in t for t in targets), targets


def test_gen_sft_full_changes_intended_modules_and_saves_plain_janus(tmp_path, tiny, tiny_model, data_dir, targets):
    model, tokenizer, _ = tiny
    out = tmp_path / "out"
    lf_train(
        base_config(
            tiny_model, data_dir, "fixed_gen", out, finetuning_type="full", learning_rate=2e-3, num_train_epochs=10
        ),
        tmp_path,
    )
    trained = load_trained(tiny_model, out)
    changed = changed_keys(state(model), state(trained))
    allowed = ("model.language_model.", "lm_head.", "model.generation_head.", "model.generation_embeddings.")
    assert changed and all(k.startswith(allowed) for k in changed), sorted(k for k in changed if not k.startswith(allowed))
    for group in ("model.language_model.", "model.generation_head.", "model.generation_embeddings."):
        assert any(k.startswith(group) for k in changed), group
    frozen = [k for k in state(model) if k.startswith(("model.vqmodel.", "model.vision_model.", "model.aligner."))]
    assert frozen and not changed.intersection(frozen)
    prompt, codes = next(iter(targets.items()))
    assert gen_logp(trained, tokenizer, prompt, codes) > gen_logp(model, tokenizer, prompt, codes) + len(codes)

    # A plain transformers Janus checkpoint: loads and generates with the plugin switched off.
    assert _greedy_without_unigap(out, tokenizer, prompt) == hf_greedy(trained, tokenizer, prompt)



def _greedy_without_unigap(model_dir, tokenizer, prompt) -> list[int]:
    """Load a checkpoint with plain transformers, unigap switched off, and generate greedily."""
    script = (
        "import json, sys, torch\n"
        "from transformers import JanusForConditionalGeneration\n"
        f"m = JanusForConditionalGeneration.from_pretrained({str(model_dir)!r}).eval()\n"
        f"ids = torch.tensor([{json.dumps(prompt_ids(tokenizer, prompt))}])\n"
        "codes = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_mode='image', "
        "do_sample=False, guidance_scale=5.0)\n"
        "assert 'unigap.bridge' not in sys.modules, 'plugin was loaded'\n"
        "assert not any(type(f).__name__ == 'UnigapFinder' for f in sys.meta_path), 'plugin hook installed'\n"
        "print(json.dumps(codes[0].tolist()))\n"
    )
    proc = run([sys.executable, "-c", script], env={"UNIGAP_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _margin(model, tokenizer, prompt, chosen, rejected) -> float:
    return gen_logp(model, tokenizer, prompt, chosen) - gen_logp(model, tokenizer, prompt, rejected)


def _train_dpo(tmp_path_factory, tiny_model, data_dir, finetuning_type="lora", **overrides):
    out = tmp_path_factory.mktemp(f"dpo_{finetuning_type}") / "out"
    cfg = base_config(
        tiny_model, data_dir, "fixed_dpo", out, stage="dpo", finetuning_type=finetuning_type,
        learning_rate=5e-3 if finetuning_type == "lora" else 1e-3, num_train_epochs=10, pref_beta=0.1,
    )
    if finetuning_type == "full":
        cfg.pop("lora_target"), cfg.pop("lora_rank")
    cfg.update(overrides)
    weights = _sha(tiny_model / "model.safetensors")
    lf_train(cfg, out.parent)
    assert _sha(tiny_model / "model.safetensors") == weights, "training must never write into the base model"
    return out


@pytest.fixture(scope="module")
def dpo_lora(tmp_path_factory, tiny_model, data_dir):
    return _train_dpo(tmp_path_factory, tiny_model, data_dir)


@pytest.mark.parametrize("finetuning_type", ["lora", "full"])
def test_dpo_prefers_chosen_image_against_frozen_reference(
    tmp_path_factory, tiny, tiny_model, data_dir, pairs, dpo_lora, finetuning_type
):
    model, tokenizer, _ = tiny
    out = dpo_lora if finetuning_type == "lora" else _train_dpo(tmp_path_factory, tiny_model, data_dir, "full")
    trained = load_trained(tiny_model, out)
    gains = [
        _margin(trained, tokenizer, p, c, r) - _margin(model, tokenizer, p, c, r) for p, (c, r) in pairs.items()
    ]
    assert min(gains) > 0.5, gains
    check = json.loads((out / "unigap_reference_check.json").read_text())
    assert check["unchanged"] and check["tensors"] > 100, check
    assert ("frozen copy" in check["reference"]) == (finetuning_type == "full")


def test_dpo_pref_ftx_adds_nll_on_chosen(tmp_path_factory, tiny, tiny_model, data_dir, pairs, dpo_lora):
    """pref_ftx adds NLL on the chosen image: its likelihood ends higher than without it."""
    _, tokenizer, _ = tiny
    with_ftx = load_trained(tiny_model, _train_dpo(tmp_path_factory, tiny_model, data_dir, pref_ftx=5.0))
    without = load_trained(tiny_model, dpo_lora)
    lifts = [
        gen_logp(with_ftx, tokenizer, p, c) - gen_logp(without, tokenizer, p, c) for p, (c, _) in pairs.items()
    ]
    assert min(lifts) > 0 and sum(lifts) > 2.0, lifts


def test_export_merges_lora_into_plain_checkpoint(tmp_path, tiny, tiny_model, sft_lora, targets):
    _, tokenizer, _ = tiny
    export_dir = tmp_path / "merged"
    yaml_path = tmp_path / "export.yaml"
    yaml_path.write_text(
        f"model_name_or_path: {tiny_model}\nadapter_name_or_path: {sft_lora}\ntemplate: janus\n"
        f"finetuning_type: lora\nexport_dir: {export_dir}\ninfer_dtype: float32\nexport_device: cpu\n"
    )
    proc = run([str(BIN / "llamafactory-cli"), "export", str(yaml_path)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    merged_in_memory = load_trained(tiny_model, sft_lora)
    prompt = next(iter(targets))
    assert _greedy_without_unigap(export_dir, tokenizer, prompt) == hf_greedy(merged_in_memory, tokenizer, prompt)


def test_torchrun_two_workers(tmp_path, tiny_model, data_dir):
    """FORCE_TORCHRUN=1: the plugin is loaded in every torchrun worker (CPU, gloo)."""
    out = tmp_path / "out"
    proc = lf_train(
        base_config(tiny_model, data_dir, "fixed_gen", out, learning_rate=5e-3, num_train_epochs=2),
        tmp_path,
        env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"},
    )
    text = proc.stdout + proc.stderr
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in text
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    assert losses[-1] < losses[0], losses
    assert (out / "adapter_model.safetensors").exists()


def test_host_freeze_flags_apply_but_the_vq_tokenizer_stays_frozen(tmp_path, tiny, tiny_model, data_dir):
    """Unfreezing the vision tower and projectors trains them; the VQ image tokenizer never moves."""
    model, _, _ = tiny
    out = tmp_path / "out"
    lf_train(
        base_config(
            tiny_model, data_dir, "fixed_gen,unigap_und_sft", out, finetuning_type="full", learning_rate=1e-3,
            num_train_epochs=2, freeze_vision_tower=False, freeze_multi_modal_projector=False,
        ),
        tmp_path,
    )
    changed = changed_keys(state(model), state(load_trained(tiny_model, out)))
    for group in ("model.vision_model.", "model.aligner.", "model.generation_aligner.", "model.language_model."):
        assert any(k.startswith(group) for k in changed), group
    assert not any(k.startswith("model.vqmodel.") for k in changed)


def test_dpo_reference_free_losses_use_mean_logps(tmp_path, tiny, tiny_model, data_dir, pairs):
    """pref_loss: simpo (no reference model, length-normalised log-probs) through the same path."""
    model, tokenizer, _ = tiny
    out = tmp_path / "out"
    lf_train(
        base_config(
            tiny_model, data_dir, "fixed_dpo", out, stage="dpo", learning_rate=5e-3, num_train_epochs=10,
            pref_loss="simpo", pref_beta=2.0, simpo_gamma=0.5,
        ),
        tmp_path,
    )
    assert not (out / "unigap_reference_check.json").exists()  # no reference model in SimPO
    trained = load_trained(tiny_model, out)
    gains = [_margin(trained, tokenizer, p, c, r) - _margin(model, tokenizer, p, c, r) for p, (c, r) in pairs.items()]
    assert min(gains) > 0.5, gains


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_dpo_precomputed_reference_matches_live_reference(tmp_path_factory, tiny_model, data_dir, finetuning_type):
    """gen_precompute_ref: the same training as with the live reference, without keeping it around."""
    live = _train_dpo(tmp_path_factory, tiny_model, data_dir, finetuning_type, num_train_epochs=3,
                      preprocessing_num_workers=2)
    pre = _train_dpo(tmp_path_factory, tiny_model, data_dir, finetuning_type, num_train_epochs=3,
                     gen_precompute_ref=True)

    def curve(out):
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        return [v for row in history if "rewards/margins" in row for v in (row["loss"], row["rewards/margins"])]

    assert len(curve(live)) == len(curve(pre)) > 6
    assert curve(live) == pytest.approx(curve(pre), abs=1e-4)
    report = json.loads((pre / "unigap_reference_check.json").read_text())
    assert report["unchanged"] and report["precomputed_pairs"] == 4 and "precomputed" in report["reference"]


def test_precomputed_reference_copy_is_really_freed(tmp_path_factory, tiny, tiny_model, data_dir):
    """gen_precompute_ref with full fine-tuning: every byte of the reference copy is given back.

    The host keeps the reference in ``accelerator._models`` and in its workflow's local variable;
    the trainer must free the storage anyway: the freed bytes equal the whole model's weights, and
    weak references to every freed storage are dead (nothing holds the memory any more).
    """
    model = tiny[0]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in (*model.parameters(), *model.buffers())}
    out = _train_dpo(tmp_path_factory, tiny_model, data_dir, "full", num_train_epochs=1, gen_precompute_ref=True)
    report = json.loads((out / "unigap_reference_check.json").read_text())
    assert report["unchanged"] and report["precomputed_pairs"] == 4, report
    assert report["released_bytes"] == sum(storages.values()) > 0, report
    assert report["reference_storages_alive"] == 0, report
    assert report["reference_in_accelerator_models"] is False, report


def test_torchrun_with_understanding_on_one_rank_and_generation_on_the_other(tmp_path, tiny, tiny_model, example_data):
    """Mixed data under DDP: ranks whose batches use different branches must not hang or diverge."""
    import subprocess

    root = one_of_each(example_data, tmp_path / "data")
    out = tmp_path / "out"
    cfg = base_config(tiny_model, root, "mix", out, per_device_train_batch_size=1, num_train_epochs=3)
    try:
        lf_train(cfg, tmp_path, env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"}, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("DDP training hung: ranks used different model branches")
    history = [r for r in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in r]
    # each step holds the generation row on one rank and the understanding row on the other; the
    # per-head losses are summed over ranks, so every logged step reports both
    assert history and all("gen_loss" in r and "text_loss" in r for r in history), history
