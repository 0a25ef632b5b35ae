"""Numerical parity of the Show-o reimplementation with golden outputs of the ORIGINAL code.

``tests/golden/showo/`` holds a tiny random Show-o (Phi 64-wide, 2 layers; MAGVIT ch 32, 3 levels) in the
original key format and what the original code (showlab/Show-o 45a5a2d) computed with it: the omni-attention
masks, logits, MaskGIT codes, MAGVIT codes / decoded pixels / LFQ indices and the T2I training loss.  How it
was produced is in ``tests/golden/showo/README.md``.  Tolerances are fixed: a failure is a parity bug.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

GOLDEN = Path(__file__).parent / "golden" / "showo"
ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def cfg() -> dict:
    return json.loads((GOLDEN / "config.json").read_text())


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((GOLDEN / "golden.json").read_text())


@pytest.fixture(scope="module")
def gold() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN / "golden.safetensors"))


def _magvit_config(cfg: dict):
    from unigap.models.showo.magvit import MagvitConfig

    enc, dec = cfg["magvit"]["encoder"], cfg["magvit"]["decoder"]
    return MagvitConfig(
        in_channels=enc["in_ch"],
        out_channels=dec["out_ch"],
        ch=enc["ch"],
        z_channels=enc["z_channels"],
        enc_ch_mult=tuple(enc["ch_mult"]),
        enc_num_res_blocks=tuple(enc["num_res_blocks"]),
        dec_ch_mult=tuple(dec["ch_mult"]),
        dec_num_res_blocks=tuple(dec["num_res_blocks"]),
        attn_resolutions=tuple(enc["attn_resolutions"]),
        resolution=enc["resolution"],
        dropout=enc["dropout"],
    )


@pytest.fixture(scope="module")
def model(cfg):
    from transformers import PhiConfig
    from unigap.models.showo.modeling import ShowoConfig, ShowoForConditionalGeneration

    p, s = cfg["phi_config"], cfg["showo"]
    phi = PhiConfig(
        vocab_size=s["vocab_size"],
        hidden_size=p["hidden_size"],
        intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["num_hidden_layers"],
        num_attention_heads=p["num_attention_heads"],
        num_key_value_heads=p["num_key_value_heads"],
        hidden_act=p["hidden_act"],
        max_position_embeddings=p["max_position_embeddings"],
        layer_norm_eps=p["layer_norm_eps"],
        rope_parameters={
            "rope_type": "default",
            "rope_theta": p["rope_theta"],
            "partial_rotary_factor": p["partial_rotary_factor"],
        },
        qk_layernorm=p["qk_layernorm"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        bos_token_id=p["bos_token_id"],
        eos_token_id=p["eos_token_id"],
    )
    config = ShowoConfig(
        llm_config=phi.to_dict(),
        vq_config=_magvit_config(cfg).to_dict(),
        llm_vocab_size=s["llm_vocab_size"],
        codebook_size=s["codebook_size"],
        num_vq_tokens=s["num_vq_tokens"],
        image_size=s["image_size"],
        max_text_len=s["text_segment_len"],
        bos_token_id=p["bos_token_id"],
        eos_token_id=p["eos_token_id"],
    )
    torch.manual_seed(0)
    m = ShowoForConditionalGeneration(config)
    showo_sd = load_file(str(GOLDEN / "showo.safetensors"))
    missing, unexpected = m.load_state_dict(showo_sd, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith("vq_model.") for k in missing), [k for k in missing if not k.startswith("vq_model.")]
    m.vq_model.load_checkpoint_state(load_file(str(GOLDEN / "magvit.safetensors")))
    return m.eval()


def test_layout_ids(model, cfg):
    c = model.config
    ids = cfg["token_ids"]
    assert c.vocab_size == cfg["showo"]["vocab_size"]
    assert c.mask_token_id == cfg["showo"]["mask_token_id"]
    assert c.code_offset == cfg["showo"]["image_token_offset"]
    assert c.pad_token_id == ids["[PAD]"]
    for name in ("soi", "eoi", "sov", "eov", "t2i", "mmu", "t2v", "v2v", "lvg"):
        assert getattr(c, f"{name}_token_id") == ids[f"<|{name}|>"], name


# ------------------------------------------------------------------------------------- (a) masks


@pytest.mark.parametrize("task", ["t2i", "mmu"])
def test_omni_attention_mask_matches_original(model, gold, task):
    ids = gold[f"{task}_input_ids"]
    want = gold[f"{task}_mask_bool"].bool()
    for two_d in (None, (ids != model.config.pad_token_id).long()):
        got = model.omni_attention_mask(ids, two_d)[:, 0] == 0
        bad = (got != want).nonzero().tolist()
        assert not bad, (
            f"{task} mask differs at (row, query, key) {bad[:10]} ({len(bad)} cells; 2-D mask {two_d is not None})"
        )


# ------------------------------------------------------------------------------------ (b) logits


@pytest.mark.parametrize("task", ["t2i", "mmu"])
def test_logits_match_original(model, gold, task):
    ids = gold[f"{task}_input_ids"]
    with torch.no_grad():
        logits = model(ids).logits.float()
    sel = gold["logit_sel_ids"]
    torch.testing.assert_close(logits[:, :, sel], gold[f"{task}_logits_sel"], atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.logsumexp(logits, -1), gold[f"{task}_logits_lse"], atol=ATOL, rtol=0)
    pos = gold[f"{task}_full_logits_pos"]
    torch.testing.assert_close(logits[:, pos], gold[f"{task}_full_logits"], atol=ATOL, rtol=0)
    assert torch.equal(logits.argmax(-1), gold[f"{task}_logits_argmax"])
    off, mask_id = model.config.code_offset, model.config.mask_token_id
    assert torch.equal(logits[:, :, off:mask_id].argmax(-1), gold[f"{task}_logits_img_argmax"])


# --------------------------------------------------------------------------------- (e) T2I loss


def test_t2i_masked_token_loss_matches_original(model, gold, meta, cfg):
    ids, labels = gold["loss_input_ids"], gold["loss_labels"]
    start = cfg["showo"]["text_segment_len"]  # the original slices [max_seq_length + 1:], <|soi|> included
    with torch.no_grad():
        logits = model(ids).logits.float()
    loss = F.cross_entropy(
        logits[:, start:].reshape(-1, logits.shape[-1]), labels[:, start:].reshape(-1), ignore_index=-100
    )
    assert abs(float(loss) - meta["loss"]["loss_t2i"]) < ATOL, (float(loss), meta["loss"]["loss_t2i"])
    lp = torch.log_softmax(logits[:, start:], -1)
    lab = labels[:, start:]
    valid = lab != -100
    per_row = torch.where(valid, lp.gather(-1, lab.clamp(min=0)[..., None])[..., 0], torch.zeros(())).sum(-1)
    torch.testing.assert_close(per_row, torch.tensor(meta["loss"]["sum_logprob_per_row"]), atol=1e-3, rtol=0)


# ------------------------------------------------------------------------------------ (c) sampler


def test_maskgit_codes_match_original(model, gold, meta):
    from unigap.models.showo import sampler

    seen_prompts = set()
    for run, text_ids in (
        (r, meta["gen_prompt_token_ids"][meta["gen_prompts"].index(r["prompt"])]) for r in meta["generation"]
    ):
        key = run["key"]
        prompt_ids = sampler.t2i_prompt_ids(model.config, list(text_ids))
        if run["prompt"] not in seen_prompts:
            seen_prompts.add(run["prompt"])
            want_prefix = gold[key + "_input_ids"][0, : model.config.max_text_len].tolist()
            assert list(prompt_ids)[: len(want_prefix)] == want_prefix, (key, list(prompt_ids), want_prefix)
        with torch.no_grad():
            codes = sampler.maskgit_generate(
                model,
                [prompt_ids],
                [run["seed"]],
                steps=run["timesteps"],
                guidance_scale=run["guidance_scale"],
                temperature=run["temperature"],
            )
        got = torch.as_tensor(codes).reshape(-1).cpu()
        want = gold[key + "_codes"]
        diff = (got != want).nonzero().flatten().tolist()
        assert not diff, f"{key}: {len(diff)} of {want.numel()} codes differ, first at {diff[:8]}"


# -------------------------------------------------------------------------------------- (d) MAGVIT


def test_magvit_encoder_codes_match_original(model, gold):
    vq = model.vq_model
    with torch.no_grad():
        latent = vq.latents(gold["vq_pixels"])
        codes = vq.encode(gold["vq_pixels"])
    torch.testing.assert_close(latent, gold["vq_encoder_latent"], atol=ATOL, rtol=0)
    assert torch.equal(codes.cpu(), gold["vq_codes"])


def test_magvit_decoder_matches_original(model, gold):
    vq = model.vq_model
    with torch.no_grad():
        out = vq.decode_codes(gold["vq_decode_codes"])
        rt = vq.decode_codes(gold["vq_codes"])
    torch.testing.assert_close(out, gold["vq_decoded"], atol=ATOL, rtol=0)
    torch.testing.assert_close(rt, gold["vq_decoded_roundtrip"], atol=ATOL, rtol=0)


def test_lfq_indices_match_original(gold):
    from unigap.models.showo.magvit import lfq_indices, lfq_latents

    idx = lfq_indices(gold["lfq_hand_latent"]).reshape(-1)
    assert idx.tolist() == gold["lfq_hand_indices"].tolist()
    z = lfq_latents(gold["lfq_hand_indices"].reshape(-1, 1), 13, (1, 1))
    assert torch.equal(z.float(), gold["lfq_entry_of_hand_indices"])
