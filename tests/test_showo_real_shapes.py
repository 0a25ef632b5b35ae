"""Show-o's released shapes through the whole loop, on a CPU in about two minutes.

A random Show-o with the released 256-px checkpoint's exact sizes (Phi-1.5 widths: hidden 2048, 32 heads,
MLP 8192, rotary on half of each head; the 58498-token vocabulary = 50295 text ids + [PAD] and 9 special
tokens + 8192 codes + the mask token, an untied ``lm_head`` with a bias; the full MAGVIT-v2; 256 px ->
16 x 16 = 256 codes; a 129-token text part) but 2 of Phi-1.5's 24 layers.  Its text tokenizer is an
offline BPE padded to 50295 ids, ``<|endoftext|>`` at 50256, so ``[PAD]`` and the specials land at
50295..50304 as released.  It draws one image in ``unigap selfplay`` (judged by its own understanding
branch), the run becomes one generation-SFT row (``unigap build sft``) and the real, unmodified
``llamafactory-cli train`` runs one LoRA step on it.

bfloat16 (the dtype the model is built and stored in, so self-play runs in it): on this test's CPU both
the MAGVIT-v2 convolutions and the 2048-wide Phi run about twice as fast as in float32.
"""

from __future__ import annotations

import json
import resource
import time

import numpy as np
import pytest
from conftest import BIN, base_config, lf_train, run

pytestmark = pytest.mark.e2e

PROMPT = {"id": "p0", "prompt": "a red square left of a blue circle"}
EOS = "<|endoftext|>"
TEXT_VOCAB = 50295  # Phi-1.5's tokenizer (CodeGen's 50257 + padding tokens), what Show-o appends to
EOS_ID = 50256
HIDDEN, HEADS, MLP, VOCAB, LAYERS = 2048, 32, 8192, 58498, 24
WALL: dict[str, float] = {}

_WORDS_TEXT = ("a an the one two of and with on in left right above below next to red green blue yellow black white "
               "square circle triangle star shape small big image picture does this show is there")


def _tokenizer():
    """A Phi-like byte-level BPE (``<|endoftext|>`` = BOS = EOS at 50256, nothing prepended) padded to 50295
    ids, then Show-o's ``[PAD]`` and 9 special tokens appended at 50295..50304."""
    import random

    from unigap.models.showo.checkpoint import add_showo_tokens
    from unigap.textbpe import build_bpe_tokenizer

    rng = random.Random(0)
    words = _WORDS_TEXT.split()
    corpus = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) for _ in range(1500)]
    corpus += ["USER: \n", " ASSISTANT:", " Yes", " No", "Does this image show", "0123456789", "!?.,:;'\"()-_/\n"]
    tokenizer = build_bpe_tokenizer(corpus, vocab_size=600, special_tokens=[EOS], bos_token=EOS, eos_token=EOS,
                                    prepend_bos=False, model_max_length=2048, fixed_ids={EOS: EOS_ID},
                                    total_size=TEXT_VOCAB)
    assert len(tokenizer) == TEXT_VOCAB and tokenizer.convert_tokens_to_ids(EOS) == EOS_ID
    return add_showo_tokens(tokenizer, TEXT_VOCAB)


def _config(num_layers: int):
    from unigap.models.showo.magvit import MagvitConfig
    from unigap.models.showo.modeling import ShowoConfig, phi_1_5_config_dict

    llm = phi_1_5_config_dict()
    llm["num_hidden_layers"] = num_layers
    return ShowoConfig(llm_config=llm, vq_config=MagvitConfig().to_dict(), llm_vocab_size=TEXT_VOCAB,
                       codebook_size=8192, num_vq_tokens=256, image_size=256, max_text_len=129,
                       bos_token_id=EOS_ID, eos_token_id=EOS_ID)


def _shapes(path) -> dict[str, list[int]]:
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118 (not a dict)


@pytest.fixture(scope="module")
def real_model(tmp_path_factory):
    import torch
    from unigap.fsutil import atomic_directory
    from unigap.models.showo.checkpoint import save_checkpoint
    from unigap.models.showo.modeling import ShowoForConditionalGeneration

    start = time.perf_counter()
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = ShowoForConditionalGeneration(_config(2)).eval()
    finally:
        torch.set_default_dtype(previous)
    path = tmp_path_factory.mktemp("models") / "showo-256-shaped"
    with atomic_directory(path) as tmp:
        save_checkpoint(tmp, model, tokenizer)
    del model
    WALL["build"] = time.perf_counter() - start
    yield path
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nShow-o real shapes: wall {', '.join(f'{k} {v:.0f}s' for k, v in WALL.items())}; "
          f"peak RSS: this process {own:.2f} GiB, largest child {child:.2f} GiB")


@pytest.fixture(scope="module")
def selfplay_run(real_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("showo_selfplay")
    (root / "prompts.jsonl").write_text(json.dumps(PROMPT) + "\n")
    config = {
        "model_name_or_path": str(real_model), "prompts": str(root / "prompts.jsonl"),
        "num_candidates": 1, "steps": 4, "guidance_scale": 1.75, "temperature": 1.0, "seed": 42,
        "batch_size": 1, "device": "cpu", "dtype": "auto",
        "judge_question": "Does this image show {prompt}?", "judge_threshold": 0.5,
        "output_dir": str(root / "run"), "progress": False,
    }
    (root / "selfplay.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))
    start = time.perf_counter()
    proc = run([str(BIN / "unigap"), "selfplay", str(root / "selfplay.yaml")], timeout=300)
    WALL["selfplay"] = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="module")
def sft_data(selfplay_run):
    data = selfplay_run.parent / "data"
    proc = run([str(BIN / "unigap"), "build", "sft", str(selfplay_run), "--out", str(data), "--name", "x",
                "--threshold", "0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return data


def test_checkpoint_has_the_released_shapes(real_model):
    from transformers import AutoTokenizer
    from unigap.models.showo.modeling import ShowoConfig

    config = ShowoConfig.from_pretrained(real_model)
    phi = config.phi_config()
    assert (phi.hidden_size, phi.num_attention_heads, phi.intermediate_size, phi.num_hidden_layers,
            phi.vocab_size, phi.tie_word_embeddings) == (HIDDEN, HEADS, MLP, 2, VOCAB, False)
    assert phi.rope_parameters["partial_rotary_factor"] == 0.5
    assert (config.llm_vocab_size, config.code_offset, config.mask_token_id, config.num_vq_tokens,
            config.image_size, config.max_text_len) == (50295, 50305, 58497, 256, 256, 129)

    shapes = _shapes(real_model / "model.safetensors")
    lm = {k: v for k, v in shapes.items() if k.startswith("showo.")}
    expected = {"showo.model.embed_tokens.weight": [VOCAB, HIDDEN], "showo.lm_head.weight": [VOCAB, HIDDEN],
                "showo.lm_head.bias": [VOCAB], "showo.model.final_layernorm.weight": [HIDDEN],
                "showo.model.final_layernorm.bias": [HIDDEN]}
    for i in range(2):
        layer = f"showo.model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "dense"):
            expected[f"{layer}self_attn.{proj}.weight"] = [HIDDEN, HIDDEN]
            expected[f"{layer}self_attn.{proj}.bias"] = [HIDDEN]
        expected.update({f"{layer}mlp.fc1.weight": [MLP, HIDDEN], f"{layer}mlp.fc1.bias": [MLP],
                         f"{layer}mlp.fc2.weight": [HIDDEN, MLP], f"{layer}mlp.fc2.bias": [HIDDEN],
                         f"{layer}input_layernorm.weight": [HIDDEN], f"{layer}input_layernorm.bias": [HIDDEN]})
        if phi.qk_layernorm:  # Show-o's Phi normalises q and k per head (LayerNorm over the 64-wide head)
            for norm in ("q_layernorm", "k_layernorm"):
                expected.update({f"{layer}self_attn.{norm}.{p}": [HIDDEN // HEADS] for p in ("weight", "bias")})
    assert lm == expected
    vq = {k for k in shapes if k.startswith("vq_model.")}
    assert set(shapes) == set(lm) | vq
    assert shapes["vq_model.encoder.conv_out.weight"][0] == 13  # 13 LFQ bits: 8192 codes

    # the full 24-layer language model, counted from its shapes on the meta device: Show-o's 1.4482 B
    import torch
    from unigap.models.showo.modeling import ShowoForConditionalGeneration

    with torch.device("meta"):
        full = ShowoForConditionalGeneration(_config(LAYERS))
    count = sum(p.numel() for p in full.showo.parameters())
    assert abs(count - 1.4482e9) <= 0.001e9, count

    tokenizer = AutoTokenizer.from_pretrained(real_model)
    specials = ["[PAD]", "<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>"]
    assert tokenizer.convert_tokens_to_ids(specials) == list(range(50295, 50305))
    assert len(tokenizer) == 50305 and tokenizer.pad_token_id == 50295
    assert tokenizer.convert_tokens_to_ids(EOS) == EOS_ID
    encoded = tokenizer(PROMPT["prompt"], add_special_tokens=False).input_ids
    assert encoded and max(encoded) < 1000  # the trained BPE's low ids, no BOS


def test_selfplay_draws_and_judges_256_codes(selfplay_run):
    run_info = json.loads((selfplay_run / "run.json").read_text())
    assert run_info["spec"] == {"model_type": "showo", "num_image_tokens": 256, "codebook_size": 8192, "image_size": 256}
    (record,) = [json.loads(line) for line in (selfplay_run / "records.jsonl").read_text().splitlines()]
    assert record["prompt_id"] == "p0" and 0.0 < record["p_yes"] < 1.0
    codes = np.load(selfplay_run / record["codes"])
    assert codes.shape == (256,) and 0 <= codes.min() and codes.max() < 8192
    from PIL import Image

    assert Image.open(selfplay_run / record["image"]).size == (256, 256)


def test_one_lora_sft_step_through_llamafactory(real_model, sft_data, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "out"
    # 129-ish prompt tokens + <|soi|> 256 codes <|eoi|>: 1024 fits; LoRA B starts at zero, so a non-zero B is a change
    cfg = base_config(real_model, sft_data, "x", out, template="showo", max_steps=1, per_device_train_batch_size=1,
                      cutoff_len=1024, learning_rate=1e-3)
    start = time.perf_counter()
    lf_train(cfg, tmp_path, timeout=300)
    WALL["sft"] = time.perf_counter() - start
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 1 and np.isfinite(losses[0])

    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = {k: v.float().abs().max().item() for k, v in adapter.items() if "lora_B" in k}
    assert lora_b and any(v > 0 for v in lora_b.values())
    assert any(".layers.1." in k for k in lora_b)  # the 2048-wide Phi layers got adapters
    # the image tokenizer is frozen: no adapter on it, and merging the LoRA leaves every MAGVIT-v2 tensor as stored
    assert not [k for k in adapter if "vq_model" in k]
    from unigap.models.showo import ShowoAdapter
    from unigap.models.showo.checkpoint import read_prefixed

    merged = ShowoAdapter.load(str(real_model), dtype=torch.bfloat16, adapter_path=str(out))
    stored = read_prefixed(str(real_model), "vq_model.")
    live = merged._base().vq_model.state_dict()
    assert stored and set(stored) <= set(live)
    assert all(torch.equal(live[k], v) for k, v in stored.items())
    # and the LoRA did change the language model
    base_q = read_prefixed(str(real_model), "showo.model.layers.1.self_attn.q_proj.weight")[""]
    assert not torch.equal(merged._base().showo.model.layers[1].self_attn.q_proj.weight, base_q)
