"""Janus-Pro-1B's real shapes through the whole loop, on a CPU in about two minutes.

A random Janus with Janus-Pro-1B's exact sizes (SigLIP-L/16 at 384 px: 576 image tokens; the VQ with
its 16384 codes; aligners, generation head and embeddings; text width 2048, MLP 5632, 16 heads, the
102400-token vocabulary with the special tokens at the real ids) but two text layers of 24 draws one
image in self-play, which its own understanding branch judges; the run becomes one generation-SFT row
and one DPO pair, and the real ``llamafactory-cli train`` runs one LoRA step of each.
"""

from __future__ import annotations

import json
import resource
import shutil
import time

import numpy as np
import pytest
from conftest import BIN, base_config, lf_train, run

pytestmark = pytest.mark.e2e

PROMPT = {"id": "p0", "prompt": "a red square left of a blue circle"}
WALL: dict[str, float] = {}


def _shapes(path) -> dict[str, list[int]]:
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return {name: f.get_slice(name).get_shape() for name in f.keys()}  # noqa: SIM118 (safe_open is no dict)


@pytest.fixture(scope="module")
def pro_model(tmp_path_factory):
    from unigap.models.janus.tiny import build_pro_shaped_janus

    start = time.perf_counter()
    path = build_pro_shaped_janus(tmp_path_factory.mktemp("models") / "pro-shaped", num_layers=2)
    WALL["build"] = time.perf_counter() - start
    yield path
    usage = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nreal shapes: wall {', '.join(f'{k} {v:.0f}s' for k, v in WALL.items())}; "
          f"peak RSS: this process {own:.2f} GiB, largest child {usage:.2f} GiB")


@pytest.fixture(scope="module")
def selfplay_run(pro_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("real_selfplay")
    (root / "prompts.jsonl").write_text(json.dumps(PROMPT) + "\n")
    start = time.perf_counter()
    proc = run([str(BIN / "unigap"), "selfplay", "yaml_examples/selfplay.yaml", f"model_name_or_path={pro_model}",
                f"prompts={root / 'prompts.jsonl'}", f"output_dir={root / 'run'}", "num_candidates=1",
                "progress=false"], timeout=300)
    WALL["selfplay"] = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="module")
def data_dir(selfplay_run, tmp_path_factory):
    """One SFT row (the candidate, accepted at threshold 0) and one DPO pair: the candidate vs a hand-made
    second candidate (its codes rolled by one, half its P(yes)) appended to a copy of the run."""
    run_dir = tmp_path_factory.mktemp("real_pair") / "run"
    shutil.copytree(selfplay_run, run_dir)
    (record,) = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    other = dict(record, candidate=1, p_yes=record["p_yes"] / 2, image="images/000000-001.png",
                 codes="images/000000-001.codes.npy")
    np.save(run_dir / other["codes"], np.roll(np.load(run_dir / record["codes"]), 1))
    shutil.copy(run_dir / record["image"], run_dir / other["image"])
    with open(run_dir / "records.jsonl", "a") as handle:
        handle.write(json.dumps(other) + "\n")
    data = run_dir.parent / "data"
    for args in (["sft", "--name", "gen", "--threshold", "0", "--max-per-prompt", "1"],
                 ["dpo", "--name", "pairs", "--any-outcome"]):
        proc = run([str(BIN / "unigap"), "build", args[0], str(run_dir), "--out", str(data), *args[1:]])
        assert proc.returncode == 0, proc.stderr[-3000:]
    return data


def test_checkpoint_has_janus_pro_1b_shapes(pro_model):
    config = json.loads((pro_model / "config.json").read_text())
    text, vision, vq = config["text_config"], config["vision_config"], config["vq_config"]
    assert (text["hidden_size"], text["intermediate_size"], text["num_attention_heads"], text["num_key_value_heads"],
            text["num_hidden_layers"], text["vocab_size"], text["max_position_embeddings"]) == (
        2048, 5632, 16, 16, 2, 102400, 16384)
    assert (text["bos_token_id"], text["eos_token_id"], text["pad_token_id"], config["image_token_id"]) == (
        100000, 100001, 100002, 100581)
    assert (vision["hidden_size"], vision["num_hidden_layers"], vision["num_attention_heads"], vision["image_size"],
            vision["patch_size"], vision["num_image_tokens"], vision["mlp_ratio"]) == (1024, 24, 16, 384, 16, 576, 4.0)
    assert (vq["num_embeddings"], vq["embed_dim"], vq["base_channels"], vq["latent_channels"],
            vq["channel_multiplier"], vq["num_res_blocks"], vq["num_patches"]) == (16384, 8, 128, 256, [1, 1, 2, 2, 4], 2, 24)
    generation = json.loads((pro_model / "generation_config.json").read_text())["generation_kwargs"]
    assert generation == {"boi_token_id": 100016, "num_image_tokens": 576}

    shapes = _shapes(pro_model / "model.safetensors")
    expected = {
        "model.language_model.embed_tokens.weight": [102400, 2048],
        "lm_head.weight": [102400, 2048],
        "model.language_model.layers.1.mlp.gate_proj.weight": [5632, 2048],
        "model.vision_model.embeddings.patch_embedding.weight": [1024, 3, 16, 16],
        "model.vision_model.embeddings.position_embedding.weight": [576, 1024],
        "model.vision_model.encoder.layers.23.mlp.fc1.weight": [4096, 1024],
        "model.aligner.fc1.weight": [2048, 1024],
        "model.generation_aligner.fc1.weight": [2048, 8],
        "model.generation_embeddings.weight": [16384, 8],
        "model.generation_head.vision_head.weight": [16384, 2048],
        "model.vqmodel.quantize.embedding.weight": [16384, 8],
    }
    assert {k: shapes.get(k) for k in expected} == expected
    assert "model.language_model.layers.2.mlp.gate_proj.weight" not in shapes
    assert "model.vision_model.encoder.layers.24.mlp.fc1.weight" not in shapes

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pro_model)
    assert len(tokenizer) == 102400 and tokenizer.pad_token_id == 100002
    ids = tokenizer.convert_tokens_to_ids(["<image_placeholder>", "<begin_of_image>", "<end_of_image>"])
    assert ids == [100581, 100016, 100593]
    encoded = tokenizer(PROMPT["prompt"]).input_ids
    assert encoded[0] == 100000 and max(encoded[1:]) < 1000  # BOS, then the trained BPE's low ids


def test_selfplay_draws_and_judges_576_codes(selfplay_run):
    run_info = json.loads((selfplay_run / "run.json").read_text())
    assert run_info["spec"] == {"model_type": "janus", "num_image_tokens": 576, "codebook_size": 16384, "image_size": 384}
    (record,) = [json.loads(line) for line in (selfplay_run / "records.jsonl").read_text().splitlines()]
    assert record["prompt_id"] == "p0" and 0.0 < record["p_yes"] < 1.0
    codes = np.load(selfplay_run / record["codes"])
    assert codes.shape == (576,) and 0 <= codes.min() and codes.max() < 16384
    from PIL import Image

    assert Image.open(selfplay_run / record["image"]).size == (384, 384)


def _lora_b(out) -> dict[str, float]:
    """Each LoRA B matrix's largest absolute entry."""
    from safetensors.torch import load_file

    return {k: v.float().abs().max().item() for k, v in load_file(out / "adapter_model.safetensors").items() if "lora_B" in k}


@pytest.mark.parametrize("stage,dataset", [("sft", "gen"), ("dpo", "pairs")])
def test_one_lora_step_through_llamafactory(pro_model, data_dir, tmp_path, stage, dataset):
    out = tmp_path / "out"
    # 576 image tokens + BOI/EOI + the prompt: 1024 fits; LoRA B starts at zero, so any non-zero B is a change
    cfg = base_config(pro_model, data_dir, dataset, out, stage=stage, max_steps=1, per_device_train_batch_size=1,
                      cutoff_len=1024, learning_rate=1e-3, **({"pref_beta": 0.1} if stage == "dpo" else {}))
    start = time.perf_counter()
    lf_train(cfg, tmp_path, timeout=300)
    WALL[stage] = time.perf_counter() - start
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 1 and np.isfinite(losses[0])
    lora_b = _lora_b(out)
    assert lora_b and any(v > 0 for v in lora_b.values())
    # the LoRA reaches the 2048-wide text model and the 16384-way generation head
    names = " ".join(lora_b)
    assert "language_model.layers.1" in names and "generation_head" in names
