"""Show-o v1 model code on a tiny random model: config layout, omni-attention masks (against matrices written out by
hand), pad invariance, images to understand, and the MaskGIT sampler (cached vs full-sequence, batch invariance)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PhiConfig
from unigap.models.showo.magvit import MagvitConfig
from unigap.models.showo.modeling import SPECIAL_TOKENS, ShowoConfig, ShowoForConditionalGeneration
from unigap.models.showo.sampler import (
    _FullSequenceLogits,
    _plan,
    _prefill,
    _PrefixCache,
    maskgit_generate,
    maskgit_generate_reference,
    t2i_prompt_ids,
    uncond_prompt_ids,
)

V = 300  # tiny text vocabulary
BOS = 299
PAD, SOI, EOI, T2I, MMU, LVG = V, V + 1, V + 2, V + 5, V + 6, V + 9
OFF = V + 10
KW = dict(steps=4, guidance_scale=1.5, temperature=1.0)


def tiny_config(**over) -> ShowoConfig:
    llm = PhiConfig(
        vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        initializer_range=0.2,  # peaked logits, so sampling decisions are not coin flips
    ).to_dict()
    kw = dict(
        llm_config=llm, vq_config=MagvitConfig.tiny().to_dict(), llm_vocab_size=V, codebook_size=8192,
        num_vq_tokens=64, image_size=32, max_text_len=16, bos_token_id=BOS, eos_token_id=BOS,
    )
    kw.update(over)
    return ShowoConfig(**kw)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ShowoForConditionalGeneration(tiny_config()).eval()


def bits(*rows: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in r.replace(" ", "")] for r in rows])


def allowed(model, ids, attention_mask=None) -> torch.Tensor:
    mask = model.omni_attention_mask(torch.tensor(ids), None if attention_mask is None else torch.tensor(attention_mask))
    assert mask.dtype == model.dtype and mask.shape[1] == 1
    assert set(mask.unique().tolist()) <= {0.0, torch.finfo(model.dtype).min}
    return (mask[:, 0] == 0)


# ------------------------------------------------------------------------------------------------ config


def test_config_layout_and_defaults():
    c = ShowoConfig()
    assert (c.llm_vocab_size, c.vocab_size, c.pad_token_id, c.code_offset, c.mask_token_id) == (
        50295, 58498, 50295, 50305, 58497)
    assert [c.special_token_ids[t] for t in SPECIAL_TOKENS] == list(range(50295, 50305))
    assert SPECIAL_TOKENS[0] == "[PAD]" and SPECIAL_TOKENS[-1] == "<|lvg|>" and ShowoConfig.SPECIAL_TOKENS == SPECIAL_TOKENS
    assert (c.soi_token_id, c.eoi_token_id, c.t2i_token_id, c.mmu_token_id) == (50296, 50297, 50300, 50301)
    assert c.und_placeholder_id == c.lvg_token_id == 50304
    assert (c.num_vq_tokens, c.image_size, c.max_text_len, c.bos_token_id, c.eos_token_id) == (256, 256, 129, 50256, 50256)
    phi = c.phi_config()
    assert (phi.vocab_size, phi.hidden_size, phi.num_hidden_layers, phi.num_attention_heads) == (58498, 2048, 24, 32)
    assert (phi.intermediate_size, phi.hidden_act, phi.layer_norm_eps, phi.max_position_embeddings) == (
        8192, "gelu_new", 1e-5, 2048)
    assert phi.rope_parameters["partial_rotary_factor"] == 0.5 and phi.rope_parameters["rope_theta"] == 1e4
    assert phi.tie_word_embeddings is False
    d = c.to_dict()
    assert d["model_type"] == "showo" and "vocab_size" not in d and "mask_token_id" not in d
    # derived values in a config.json are checked, never stored twice
    assert ShowoConfig(vocab_size=58498, mask_token_id=58497, pad_token_id=50295).vocab_size == 58498
    with pytest.raises(ValueError, match="mask_token_id"):
        ShowoConfig(mask_token_id=5)
    with pytest.raises(ValueError, match="num_vq_tokens"):
        ShowoConfig(num_vq_tokens=1024)  # 256 px gives 256 codes
    with pytest.raises(ValueError):
        c.vocab_size = 1


def test_save_load_round_trip_and_auto_classes(model, tmp_path):
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "showo" and (tmp_path / "model.safetensors").exists()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ShowoConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is ShowoForConditionalGeneration
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("showo.model.layers.0.self_attn.q_proj") for k in a) and "showo.lm_head.bias" in a
    assert any(k.startswith("vq_model.encoder.") for k in a) and "vq_model.quantize.power_vals" in a
    assert loaded.showo.lm_head.weight.data_ptr() != loaded.showo.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[T2I, BOS, 5, 6, BOS, SOI] + [OFF + 7] * 64 + [EOI]])
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert isinstance(AutoModelForCausalLM.from_config(tiny_config()), ShowoForConditionalGeneration)
    with pytest.raises(ValueError):
        AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="flash_attention_2")


# ------------------------------------------------------------------------------------------------ masks


def test_mask_t2i_left_and_right_padded(model):
    c = OFF + 3
    left = [PAD, PAD, T2I, BOS, 5, BOS, SOI, c, c, EOI]
    want_left = bits(
        "1000000000",  # pad queries: plain causal
        "1100000000",
        "0010000000",  # text: causal, never a pad key
        "0011000000",
        "0011100000",
        "0011110000",
        "0011111111",  # <|soi|> .. <|eoi|>: every non-pad position
        "0011111111",
        "0011111111",
        "0011111111",
    )
    right = [T2I, BOS, 5, BOS, SOI, c, c, EOI, PAD, PAD]
    want_right = bits(
        "1000000000",
        "1100000000",
        "1110000000",
        "1111000000",
        "1111111100",
        "1111111100",
        "1111111100",
        "1111111100",
        "1111111110",  # pad queries: causal (pads included), so no row is empty
        "1111111111",
    )
    got = allowed(model, [left, right])
    assert torch.equal(got[0], want_left) and torch.equal(got[1], want_right)
    # the host's 2-D mask marks the same pads; a mask of ones still treats [PAD] ids as pads (the original's rule)
    assert torch.equal(allowed(model, [left, right], [[0, 0] + [1] * 8, [1] * 8 + [0, 0]]), got)
    assert torch.equal(allowed(model, [left, right], [[1] * 10, [1] * 10]), got)


def test_mask_t2i_two_images_and_text_after(model):
    c = OFF
    row = [T2I, BOS, BOS, SOI, c, EOI, SOI, c, EOI, 7]
    want = bits(
        "1000000000",
        "1100000000",
        "1110000000",
        "1111110000",  # first image: the text before it and itself, not the later image
        "1111110000",
        "1111110000",
        "1111111110",  # second image: everything before it and itself
        "1111111110",
        "1111111110",
        "1111111111",  # text after the images: causal
    )
    assert torch.equal(allowed(model, [row])[0], want)


def test_mask_mmu_and_lm(model):
    c = OFF + 1
    mmu = [PAD, MMU, SOI, c, c, EOI, BOS, 8, 9, PAD]
    want_mmu = bits(
        "1000000000",
        "0111110000",  # [<|mmu|> <|soi|> codes <|eoi|>] is bidirectional
        "0111110000",
        "0111110000",
        "0111110000",
        "0111110000",
        "0111111000",  # the question: that prefix plus causal
        "0111111100",
        "0111111110",
        "1111111111",
    )
    got = allowed(model, [mmu], [[0] + [1] * 8 + [0]])[0]
    assert torch.equal(got, want_mmu)
    assert torch.equal(allowed(model, [mmu])[0], want_mmu)  # pads found by id without a mask
    # an LM row padded with eos by the host: pads come from the 2-D mask alone
    lm = [BOS, 5, 6, BOS, BOS]
    want_lm = bits("10000", "11000", "11100", "11110", "11111")
    assert torch.equal(allowed(model, [lm], [[1, 1, 1, 0, 0]])[0], want_lm)
    lm_left = [PAD, PAD, BOS, 5, 6]
    want_lm_left = bits("10000", "11000", "00100", "00110", "00111")
    assert torch.equal(allowed(model, [lm_left], [[0, 0, 1, 1, 1]])[0], want_lm_left)


def _codes(n, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 8192, (n,), generator=g) + OFF).tolist()


@pytest.mark.parametrize("kind", ["t2i", "mmu", "lm"])
def test_logits_do_not_depend_on_padding(model, kind):
    if kind == "t2i":
        packed = [T2I, BOS, 5, 6, 7, BOS, SOI] + _codes(64, 1) + [EOI]
    elif kind == "mmu":
        packed = [MMU, SOI] + _codes(64, 2) + [EOI, BOS, 11, 12, 13]
    else:
        packed = [BOS, 21, 22, 23, 24, BOS]
    n, k = len(packed), 5
    left = [PAD] * k + packed
    right = packed + [PAD] * k
    ref = model(torch.tensor([packed])).logits[0]
    # left and right padding in one batch; position ids are arange over the full row (pads included)
    out = model(torch.tensor([left, right]), attention_mask=torch.tensor([[0] * k + [1] * n, [1] * n + [0] * k])).logits
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, k:], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1, :n], ref, atol=1e-5, rtol=0)
    # and hidden_states is the final-layernorm output the logits come from
    hidden = model.hidden_states(torch.tensor([packed]))
    torch.testing.assert_close(model.showo.lm_head(hidden)[0], ref)


# ------------------------------------------------------------------------------------------------ images to understand


def test_fill_understanding_images(model):
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    ph = [LVG] * 64
    rows = torch.tensor([
        [MMU, SOI] + ph + [EOI, BOS, 5, PAD, PAD],
        [PAD, PAD, MMU, SOI] + ph + [EOI, BOS, 6],
    ])
    filled = model.fill_understanding_images(rows, pixels)
    with torch.no_grad():
        codes = model.vq_model.encode(pixels)
    assert torch.equal(filled[0, 2:66], codes[0] + OFF) and torch.equal(filled[1, 4:68], codes[1] + OFF)
    keep = torch.ones_like(rows, dtype=torch.bool)
    keep[0, 2:66] = keep[1, 4:68] = False
    assert torch.equal(filled[keep], rows[keep]) and not (filled == LVG).any()
    assert torch.equal(model(rows, pixel_values=pixels).logits, model(filled).logits)
    with pytest.raises(ValueError, match="run of 10 image placeholder"):
        model.fill_understanding_images(torch.tensor([[MMU, SOI] + [LVG] * 10 + [EOI]]), pixels[:1])
    with pytest.raises(ValueError, match="2 image"):
        model.fill_understanding_images(rows[:1], pixels)
    with pytest.raises(ValueError, match="no pixel_values"):
        model(rows)


def test_gradients_reach_the_llm_never_the_vq():
    torch.manual_seed(1)
    m = ShowoForConditionalGeneration(tiny_config())
    m.gradient_checkpointing_enable()
    m.train()
    assert not m.vq_model.training and not any(p.requires_grad for p in m.vq_model.parameters())
    ids = torch.tensor([[MMU, SOI] + [LVG] * 64 + [EOI, BOS, 5, 6]])
    m(ids, pixel_values=torch.zeros(1, 3, 32, 32)).logits[0, -2, 6].backward()
    assert m.showo.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ sampler


def test_prompt_ids_layout():
    cfg = tiny_config()
    assert t2i_prompt_ids(cfg, [5, 6]) == [PAD] * 11 + [T2I, BOS, 5, 6, BOS]
    assert t2i_prompt_ids(cfg, [BOS, 5, 6]) == t2i_prompt_ids(cfg, [5, 6])  # no second bos
    assert uncond_prompt_ids(cfg) == t2i_prompt_ids(cfg, []) == [PAD] * 13 + [T2I, BOS, BOS]
    long = t2i_prompt_ids(cfg, list(range(1, 40)))
    assert long == [T2I, BOS] + list(range(1, 14)) + [BOS] and len(long) == cfg.max_text_len


def test_temperature_plan():
    compound = [tau for _, tau in _plan(64, 4, 2.0, "cosine", True)]
    plain = [tau for _, tau in _plan(64, 4, 2.0, "cosine", False)]
    assert compound == pytest.approx([2 * 0.75, 2 * 0.75 * 0.5, 2 * 0.75 * 0.5 * 0.25, 0.0])
    assert plain == pytest.approx([2 * 0.75, 2 * 0.5, 2 * 0.25, 0.0])
    assert [n for n, _ in _plan(64, 4, 1.0, "cosine", True)] == [59, 45, 24, -1]  # floor(64 cos(pi/2 t))


def _prompts(cfg):
    return [t2i_prompt_ids(cfg, [5, 6, 7]), t2i_prompt_ids(cfg, list(range(1, 30))), t2i_prompt_ids(cfg, [9])]


def test_cached_sampler_equals_full_sequence_sampler(model):
    cfg = model.config
    ps = _prompts(cfg)
    for w in (1.5, 0.0):
        kw = dict(KW, guidance_scale=w)
        cached = maskgit_generate(model, ps, [1, 2, 3], **kw)
        assert torch.equal(cached, maskgit_generate_reference(model, ps, [1, 2, 3], **kw))
        assert cached.shape == (3, 64) and cached.dtype == torch.long
        assert int(cached.min()) >= 0 and int(cached.max()) < cfg.codebook_size
    # the logits themselves, at a half-decoded state
    known = torch.full((64,), -1)
    known[::3] = torch.arange(0, 64, 3) * 97
    kv, key_mask = _prefill(model, ps[0])
    ukv, umask = _prefill(model, uncond_prompt_ids(cfg))
    pair = [(torch.cat([k, uk]), torch.cat([v, uv])) for (k, v), (uk, uv) in zip(kv, ukv)]
    with torch.no_grad():
        cached = _PrefixCache(model, pair, torch.cat([key_mask, umask]))
        full = _FullSequenceLogits(model, ps[0], uncond_prompt_ids(cfg))
        a, b = cached(known, 1.5), full(known, 1.5)
        assert a.shape == (64, cfg.codebook_size)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cached(known, 1.5), a, atol=0, rtol=0)  # the cache was cropped back


def test_sampler_rows_do_not_depend_on_the_batch(model):
    cfg = model.config
    ps = _prompts(cfg)
    batch = maskgit_generate(model, ps, [11, 12, 13], **KW)
    for i in range(3):
        assert torch.equal(maskgit_generate(model, [ps[i]], [11 + i], **KW)[0], batch[i])
    swapped = maskgit_generate(model, [ps[2], ps[0], ps[1]], [13, 11, 12], **KW)
    assert torch.equal(swapped, batch[[2, 0, 1]])
    # self-play: candidates of one prompt differ by seed, repeat by seed
    same = maskgit_generate(model, [ps[0]] * 3, [11, 5, 11], **KW)
    assert torch.equal(same[0], batch[0]) and torch.equal(same[2], batch[0])
    assert (same[1] != same[0]).float().mean() > 0.2
    assert torch.equal(maskgit_generate(model, ps, [11, 12, 13], **KW), batch)
    # all rows in one forward per step (default) == one row at a time, bit for bit
    assert torch.equal(maskgit_generate(model, ps, [11, 12, 13], **KW, batched=False), batch)


def test_no_unconditional_pass_without_guidance(model):
    batches = []
    hook = model.showo.model.register_forward_hook(lambda mod, args, kw, out: batches.append(kw["input_ids"].shape[0]),
                                                   with_kwargs=True)
    try:
        ps = _prompts(model.config)[:2]
        maskgit_generate(model, ps, [1, 2], **dict(KW, guidance_scale=0.0), batched=False)
        assert batches and set(batches) == {1}
        assert len(batches) == 2 + 2 * KW["steps"]  # one prefill per prompt, one span pass per row and step
        batches.clear()
        maskgit_generate(model, ps, [1, 2], **KW, batched=False)
        # two prefills + the unconditional one, then cond and uncond spans together
        assert batches[:2] == [1, 1] and batches.count(2) == 2 * KW["steps"] and len(batches) == 3 + 2 * KW["steps"]
        batches.clear()
        maskgit_generate(model, ps, [1, 2], **dict(KW, guidance_scale=0.0))
        # batched: one prefill per prompt, then one span pass per step for both rows
        assert batches == [1, 1] + [2] * KW["steps"]
        batches.clear()
        maskgit_generate(model, ps, [1, 2], **KW)
        assert batches == [1, 1, 1] + [4] * KW["steps"]  # 2 rows and their 2 unconditional twins
    finally:
        hook.remove()


def test_sampler_restores_training_mode_and_checks_input(model):
    model.train()
    try:
        maskgit_generate(model, _prompts(model.config)[:1], [0], **KW)
        assert model.training and model.showo.training and not model.vq_model.training
    finally:
        model.eval()
    with pytest.raises(ValueError, match="seeds"):
        maskgit_generate(model, _prompts(model.config), [0], **KW)
    with pytest.raises(ValueError, match="max_text_len"):
        maskgit_generate(model, [[T2I, BOS, BOS]], [0], **KW)
    with pytest.raises(ValueError, match="schedule"):
        maskgit_generate(model, _prompts(model.config)[:1], [0], **dict(KW, schedule="nope"))
