"""MAGVIT-v2 (Show-o's image tokenizer): LFQ conventions, the released parameter layout, and the tiny model.

The key names, shapes and conventions checked here were read from the original sources
(showlab/Show-o, ``models/modeling_magvitv2.py`` and ``models/common_modules.py``).
"""

from __future__ import annotations

import json
import re
import time

import pytest
import torch
import torch.nn.functional as F
from unigap.models.showo.magvit import (
    MagvitConfig,
    MagvitV2,
    from_unit_interval,
    lfq_indices,
    lfq_latents,
    released_state_shapes,
    to_unit_interval,
)

BITS = 13


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _tiny(seed: int = 0, **changes) -> MagvitV2:
    torch.manual_seed(seed)
    config = MagvitConfig.tiny()
    for key, value in changes.items():
        setattr(config, key, value)
    if changes:
        config = MagvitConfig.from_dict(config.to_dict())
    return MagvitV2(config)


@pytest.fixture(scope="module")
def full_meta() -> MagvitV2:
    with torch.device("meta"):
        return MagvitV2(MagvitConfig())


# --------------------------------------------------------------------------------------------- LFQ


def _one_hot_z(channel: int | None, value: float = 1.0) -> torch.Tensor:
    z = -torch.ones(1, BITS, 1, 1)
    if channel is not None:
        z[0, channel] = value
    return z


def test_lfq_channel_0_is_the_most_significant_bit():
    assert lfq_indices(_one_hot_z(0)).tolist() == [[4096]]
    assert lfq_indices(_one_hot_z(12)).tolist() == [[1]]
    assert lfq_indices(_one_hot_z(1)).tolist() == [[2048]]
    assert lfq_indices(_one_hot_z(None)).tolist() == [[0]]
    assert lfq_indices(torch.ones(1, BITS, 1, 1)).tolist() == [[8191]]
    # bits of 5 = 0b0000000000101: channels 10 and 12
    z = _one_hot_z(10)
    z[0, 12] = 0.25
    assert lfq_indices(z).tolist() == [[5]]
    assert lfq_indices(z).dtype == torch.long


def test_lfq_exact_zero_is_the_zero_bit():
    assert lfq_indices(torch.zeros(1, BITS, 1, 1)).tolist() == [[0]]
    z = torch.ones(1, BITS, 1, 1)
    z[0, 0] = 0.0
    assert lfq_indices(z).tolist() == [[8191 - 4096]]
    z[0, 0] = -0.0
    assert lfq_indices(z).tolist() == [[8191 - 4096]]
    z[0, 0] = 1e-30
    assert lfq_indices(z).tolist() == [[8191]]


def test_lfq_codes_are_listed_row_by_row():
    z = -torch.ones(2, BITS, 2, 3)
    z[0, 12, 1, 0] = 1.0  # image 0, row 1, column 0 -> flat position 3
    z[1, 0, 0, 2] = 1.0  # image 1, row 0, column 2 -> flat position 2
    codes = lfq_indices(z)
    assert codes.shape == (2, 6)
    assert codes.tolist() == [[0, 0, 0, 1, 0, 0], [0, 0, 4096, 0, 0, 0]]
    latents = lfq_latents(codes, BITS, (2, 3))
    assert torch.equal(latents, torch.where(z > 0, 1.0, -1.0))


def test_lfq_latents_are_the_signs_of_random_latents():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(3, BITS, 4, 5, generator=gen)
    z[0, :, 0, 0] = 0.0  # exact zeros count as the -1 / 0 bit
    z[1, 3, 2, 1] = 0.0
    codes = lfq_indices(z)
    assert codes.shape == (3, 20)
    latents = lfq_latents(codes, BITS, (4, 5))
    assert latents.dtype == torch.float32
    assert torch.equal(latents, torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z)))
    assert torch.equal(lfq_indices(latents), codes)


def test_lfq_round_trip_of_every_code_and_binary_layout():
    codes = torch.arange(2**BITS).reshape(1, -1)
    latents = lfq_latents(codes, BITS, (64, 128))
    assert latents.shape == (1, BITS, 64, 128)
    assert set(latents.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(lfq_indices(latents), codes)
    # independent check against Python's binary formatting, MSB first, 0 -> -1, 1 -> +1
    flat = latents.reshape(BITS, -1)
    for code in (0, 1, 5, 4096, 4097, 6000, 8191):
        expected = [1.0 if b == "1" else -1.0 for b in format(code, "013b")]
        assert flat[:, code].tolist() == expected
    # square grid by default; bfloat16 holds +-1 exactly
    with pytest.raises(ValueError, match="square"):  # 8192 is not a square: a grid must be given
        lfq_latents(codes, BITS)
    square = torch.arange(64).reshape(1, 64)
    assert lfq_latents(square, BITS).shape == (1, BITS, 8, 8)
    assert torch.equal(lfq_indices(lfq_latents(square, BITS, dtype=torch.bfloat16)), square)


def test_lfq_latents_rejects_bad_codes():
    with pytest.raises(ValueError, match="8192"):
        lfq_latents(torch.tensor([[0, 8192, 1, 2]]), BITS)
    with pytest.raises(ValueError, match=r"\[-1"):
        lfq_latents(torch.tensor([[0, -1, 1, 2]]), BITS)
    with pytest.raises(ValueError, match="square"):
        lfq_latents(torch.zeros(1, 6, dtype=torch.long), BITS)
    with pytest.raises(ValueError, match="holds 8 codes"):
        lfq_latents(torch.zeros(1, 6, dtype=torch.long), BITS, (2, 4))
    with pytest.raises(ValueError, match="integer"):
        lfq_latents(torch.zeros(1, 4), BITS)


def test_quantize_buffers_hold_the_original_values():
    model = _tiny()
    powers = model.quantize.power_vals
    assert powers.dtype == torch.long
    assert powers.tolist() == [2**k for k in range(12, -1, -1)]
    emb = model.quantize.embedding
    assert emb.shape == (8192, 13) and emb.dtype == torch.float32
    # the original: ((arange[:, None] >> arange(12..0)) & 1) * 2 - 1
    ref = ((torch.arange(8192)[:, None] >> torch.arange(12, -1, -1)) & 1).float() * 2 - 1
    assert torch.equal(emb, ref)


# ------------------------------------------------------------------------------- released layout


def test_config_defaults_and_dict_round_trip():
    cfg = MagvitConfig()
    assert cfg.codebook_size == 8192 and cfg.downsample == 16
    assert MagvitConfig.tiny().downsample == 4 and MagvitConfig.tiny().codebook_size == 8192
    d = cfg.to_dict()
    assert d["enc_num_res_blocks"] == [4, 3, 4, 3, 4] and d["dec_num_res_blocks"] == [4, 4, 3, 4, 3]
    back = MagvitConfig.from_dict(json.loads(json.dumps(d)))
    assert back == cfg and isinstance(back.enc_ch_mult, tuple)
    with pytest.raises(ValueError, match="'bogus'"):
        MagvitConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError, match="num_groups"):
        MagvitConfig(ch=20)
    with pytest.raises(ValueError, match="enc_num_res_blocks"):
        MagvitConfig(enc_num_res_blocks=(1, 2))


def test_full_size_parameter_count_matches_the_released_file(full_meta):
    params = dict(full_meta.named_parameters())
    count = sum(p.numel() for p in params.values())
    nbytes = sum(p.numel() * 4 for p in params.values())
    # the released pytorch_model.bin is ~382 MB of float32 (shapes -> ~381.5 MB of parameters)
    assert abs(nbytes - 381.5e6) < 0.1e6, nbytes
    assert count == 95_387_004
    assert len(params) == 380
    buffers = dict(full_meta.named_buffers())
    assert {k: tuple(v.shape) for k, v in buffers.items()} == {
        "quantize.embedding": (8192, 13),
        "quantize.power_vals": (13,),
    }


def test_full_size_state_dict_is_the_released_layout(full_meta):
    state = full_meta.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    expected = released_state_shapes()
    assert shapes == expected
    assert list(shapes) == list(expected)  # same order as the original modules register them
    assert len(state) == 382

    names = {n for n, _ in full_meta.named_children()}
    assert names == {"encoder", "decoder", "quantize"}
    assert [n for n, _ in full_meta.encoder.named_children()] == [
        "conv_in",
        "down",
        "mid",
        "norm_out",
        "conv_out",
        "quant_conv",
    ]
    assert [n for n, _ in full_meta.decoder.named_children()] == [
        "conv_in",
        "mid",
        "up",
        "norm_out",
        "conv_out",
        "post_quant_conv",
    ]
    assert not any(k.startswith(("quant_conv", "post_quant_conv")) for k in state)
    assert not any("temb_proj" in k or "conv_shortcut" in k for k in state)
    # attention only in mid: attn_resolutions (5,) matches no level
    assert {k.split(".attn_1.")[0] for k in state if "attn" in k} == {"encoder.mid", "decoder.mid"}

    for side, per_level in (("encoder.down", (4, 3, 4, 3, 4)), ("decoder.up", (4, 4, 3, 4, 3))):
        for level, blocks in enumerate(per_level):
            found = {int(m.group(1)) for k in state if (m := re.match(rf"{side}\.{level}\.block\.(\d+)\.", k))}
            assert found == set(range(blocks)), (side, level)
    assert [k for k in state if "downsample" in k and k.endswith("weight")] == [
        f"encoder.down.{i}.downsample.conv.weight" for i in range(4)
    ]
    assert [k for k in state if "upsample" in k and k.endswith("weight")] == [
        f"decoder.up.{i}.upsample.conv.weight" for i in range(1, 5)
    ]

    spot = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.block.0.norm1.weight": (128,),
        "encoder.down.0.block.3.conv2.weight": (128, 128, 3, 3),
        "encoder.down.1.block.0.conv1.weight": (256, 128, 3, 3),
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.3.block.0.nin_shortcut.weight": (512, 256, 1, 1),
        "encoder.down.3.downsample.conv.weight": (512, 512, 3, 3),
        "encoder.down.4.block.3.conv2.weight": (512, 512, 3, 3),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.mid.attn_1.proj_out.bias": (512,),
        "encoder.norm_out.weight": (512,),
        "encoder.conv_out.weight": (13, 512, 3, 3),
        "encoder.quant_conv.weight": (13, 13, 1, 1),
        "decoder.post_quant_conv.weight": (13, 13, 1, 1),
        "decoder.conv_in.weight": (512, 13, 3, 3),
        "decoder.mid.block_2.conv2.weight": (512, 512, 3, 3),
        "decoder.up.4.block.2.conv2.weight": (512, 512, 3, 3),
        "decoder.up.4.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.up.3.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.3.block.3.conv1.weight": (256, 256, 3, 3),
        "decoder.up.1.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "decoder.up.0.block.3.conv2.weight": (128, 128, 3, 3),
        "decoder.norm_out.bias": (128,),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    for key, shape in spot.items():
        assert shapes[key] == shape, key
    for absent in (
        "encoder.down.4.downsample.conv.weight",
        "decoder.up.0.upsample.conv.weight",
        "encoder.down.0.block.0.nin_shortcut.weight",
        "decoder.up.4.block.0.nin_shortcut.weight",
        "decoder.up.0.block.4.conv1.weight",
        "encoder.down.1.block.3.conv1.weight",
    ):
        assert absent not in shapes, absent


def test_full_size_shapes_through_encode_and_decode(full_meta):
    # on the meta device: no arithmetic, only shapes (256 px -> 16x16 codes, 512 px -> 32x32)
    for side in (256, 512):
        codes = full_meta.encode(torch.empty(2, 3, side, side, device="meta"))
        assert codes.shape == (2, (side // 16) ** 2) and codes.dtype == torch.long
        out = full_meta.decode_codes(codes)
        assert out.shape == (2, 3, side, side)
    out = full_meta.decode_codes(torch.empty(1, 16 * 32, dtype=torch.long, device="meta"), shape=(16, 32))
    assert out.shape == (1, 3, 256, 512)


# ------------------------------------------------------------------------------------ tiny model


def test_tiny_builds_fast_and_is_deterministic():
    start = time.perf_counter()
    model = _tiny()
    assert time.perf_counter() - start < 1.0
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    gen = torch.Generator().manual_seed(2)
    pixels = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    with torch.no_grad():
        a, b = model.encode(pixels), model.encode(pixels)
        assert torch.equal(a, b)
        assert torch.equal(model.decode_codes(a), model.decode_codes(a))


def test_tiny_encode_decode_shapes_and_batch_invariance():
    model = _tiny()
    gen = torch.Generator().manual_seed(3)
    pixels = torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1
    with torch.no_grad():
        codes = model.encode(pixels)
        assert codes.shape == (3, 64) and codes.dtype == torch.long
        assert int(codes.min()) >= 0 and int(codes.max()) < 8192
        assert len(codes.unique()) > 3  # random weights still spread over the codebook
        rows = torch.cat([model.encode(pixels[i : i + 1]) for i in range(3)])
        assert torch.equal(codes, rows)
        assert torch.equal(model.encode(pixels[1:]), codes[1:])

        out = model.decode_codes(codes)
        assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        rows = torch.cat([model.decode_codes(codes[i : i + 1]) for i in range(3)])
        assert torch.equal(out, rows)
        assert torch.equal(model.decode_codes(codes[[2, 0]]), out[[2, 0]])
        # one batched pass: the same up to the backend's rounding
        torch.testing.assert_close(model.decode_codes(codes, per_image=False), out, rtol=1e-4, atol=1e-4)
        assert model.encode(pixels, per_image=False).shape == (3, 64)

        # a non-square grid: 4 x 8 codes -> 16 x 32 pixels; non-square inputs encode row by row
        wide = model.decode_codes(codes[:, :32], shape=(4, 8))
        assert wide.shape == (3, 3, 16, 32)
        assert model.encode(torch.zeros(1, 3, 16, 32)).shape == (1, 32)
    with pytest.raises(ValueError, match="square"):
        model.decode_codes(codes[:, :32])
    with pytest.raises(ValueError, match="shape"):
        model.encode(torch.zeros(1, 4, 32, 32))


def test_pixel_range_helpers():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert to_unit_interval(x).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert from_unit_interval(torch.tensor([0.0, 0.5, 1.0])).tolist() == [-1.0, 0.0, 1.0]


def test_bfloat16_and_float32():
    model = _tiny()
    gen = torch.Generator().manual_seed(4)
    pixels = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    half = _tiny()
    half.load_checkpoint_state(model.state_dict())
    half.to(torch.bfloat16)
    assert half.quantize.power_vals.dtype == torch.long
    with torch.no_grad():
        codes32 = model.encode(pixels)
        codes16 = half.encode(pixels)  # float32 pixels are cast to the model's dtype
        assert codes16.dtype == torch.long and codes16.shape == (2, 64)
        assert int(codes16.max()) < 8192
        out16 = half.decode_codes(codes32)
        out32 = model.decode_codes(codes32)
    assert out16.dtype == torch.bfloat16 and out16.shape == (2, 3, 32, 32)
    assert torch.isfinite(out16.float()).all()
    assert (out16.float() - out32).abs().max() < 0.1 * out32.abs().max() + 0.05


def test_load_checkpoint_state_with_and_without_quantize_buffers():
    source = _tiny(seed=0)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    codes = torch.arange(64).reshape(1, 64) * 127
    with torch.no_grad():
        want = source.decode_codes(codes)
        for drop_buffers in (False, True):
            target = _tiny(seed=1)
            assert not torch.equal(target.decode_codes(codes), want)
            given = {k: v for k, v in state.items() if not (drop_buffers and k.startswith("quantize."))}
            assert ("quantize.embedding" in given) is not drop_buffers
            target.load_checkpoint_state(given)
            assert torch.equal(target.decode_codes(codes), want)
            assert torch.equal(target.quantize.embedding, source.quantize.embedding)


def test_load_checkpoint_state_rejects_a_file_that_does_not_fit():
    model = _tiny()
    state = dict(model.state_dict())

    missing = {k: v for k, v in state.items() if k != "decoder.post_quant_conv.weight"}
    with pytest.raises(ValueError, match=r"missing.*decoder\.post_quant_conv\.weight"):
        model.load_checkpoint_state(missing)

    renamed = dict(missing)
    renamed["post_quant_conv.weight"] = state["decoder.post_quant_conv.weight"]
    with pytest.raises(ValueError, match=r"unexpected.*'?post_quant_conv\.weight"):
        model.load_checkpoint_state(renamed)

    extra = {**state, "encoder.down.2.downsample.conv.weight": torch.zeros(64, 64, 3, 3)}
    with pytest.raises(ValueError, match=r"encoder\.down\.2\.downsample\.conv\.weight"):
        model.load_checkpoint_state(extra)

    wrong = {**state, "encoder.conv_out.weight": torch.zeros(12, 64, 3, 3)}
    with pytest.raises(ValueError, match=r"encoder\.conv_out\.weight \(12, 64, 3, 3\)"):
        model.load_checkpoint_state(wrong)

    bad_buffer = {**state, "quantize.power_vals": torch.arange(13)}
    with pytest.raises(ValueError, match=r"quantize\.power_vals"):
        model.load_checkpoint_state(bad_buffer)
    bad_shape = {**state, "quantize.embedding": torch.zeros(8192, 12)}
    with pytest.raises(ValueError, match=r"quantize\.embedding"):
        model.load_checkpoint_state(bad_shape)


# ------------------------------------------------------- forward wiring against a functional reference


def _gn(x, sd, p):
    return F.group_norm(x, 32, sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)


def _conv(x, sd, p, stride=1, padding=None):
    w = sd[p + ".weight"]
    return F.conv2d(x, w, sd[p + ".bias"], stride=stride, padding=w.shape[-1] // 2 if padding is None else padding)


def _res(x, sd, p):
    h = _conv(F.silu(_gn(x, sd, p + ".norm1")), sd, p + ".conv1")
    h = _conv(F.silu(_gn(h, sd, p + ".norm2")), sd, p + ".conv2")
    skip = _conv(x, sd, p + ".nin_shortcut") if p + ".nin_shortcut.weight" in sd else x
    return skip + h


def _attn(x, sd, p):
    b, c, hh, ww = x.shape
    n = _gn(x, sd, p + ".norm")
    q, k, v = (_conv(n, sd, f"{p}.{t}").flatten(2).transpose(1, 2) for t in "qkv")  # b, hw, c
    out = torch.softmax(q @ k.transpose(1, 2) / c**0.5, dim=-1) @ v
    return x + _conv(out.transpose(1, 2).reshape(b, c, hh, ww), sd, p + ".proj_out")


def _blocks(h, sd, p):
    i = 0
    while f"{p}.block.{i}.conv1.weight" in sd:
        h = _res(h, sd, f"{p}.block.{i}")
        if f"{p}.attn.{i}.q.weight" in sd:
            h = _attn(h, sd, f"{p}.attn.{i}")
        i += 1
    return h


def _reference_encoder(x, sd, levels):
    h = _conv(x, sd, "encoder.conv_in")
    for level in range(levels):
        h = _blocks(h, sd, f"encoder.down.{level}")
        if level != levels - 1:
            h = _conv(F.pad(h, (0, 1, 0, 1)), sd, f"encoder.down.{level}.downsample.conv", stride=2, padding=0)
    h = _res(_attn(_res(h, sd, "encoder.mid.block_1"), sd, "encoder.mid.attn_1"), sd, "encoder.mid.block_2")
    h = _conv(F.silu(_gn(h, sd, "encoder.norm_out")), sd, "encoder.conv_out")
    return _conv(h, sd, "encoder.quant_conv")


def _reference_decoder(z, sd, levels):
    h = _conv(_conv(z, sd, "decoder.post_quant_conv"), sd, "decoder.conv_in")
    h = _res(_attn(_res(h, sd, "decoder.mid.block_1"), sd, "decoder.mid.attn_1"), sd, "decoder.mid.block_2")
    for level in reversed(range(levels)):
        h = _blocks(h, sd, f"decoder.up.{level}")
        if level != 0:
            h = _conv(F.interpolate(h, scale_factor=2, mode="nearest"), sd, f"decoder.up.{level}.upsample.conv")
    return _conv(F.silu(_gn(h, sd, "decoder.norm_out")), sd, "decoder.conv_out")


@pytest.mark.parametrize("attn_resolutions", [(5,), (16,)], ids=["mid-only", "level-attention"])
def test_forward_matches_a_functional_reference(attn_resolutions):
    model = _tiny(seed=5, attn_resolutions=attn_resolutions)
    sd = {k: v.double() for k, v in model.state_dict().items()}
    if attn_resolutions == (16,):  # 32 px: level 1 runs at 16 px in the encoder, level 1 in the decoder too
        assert "encoder.down.1.attn.0.q.weight" in sd and "decoder.up.1.attn.0.q.weight" in sd
        assert "encoder.down.0.attn.0.q.weight" not in sd
    else:
        assert not any(".attn." in k for k in sd)
    model.double()
    gen = torch.Generator().manual_seed(6)
    pixels = torch.rand(2, 3, 32, 32, generator=gen, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        z = model.latents(pixels)
        ref_z = _reference_encoder(pixels, sd, 3)
        torch.testing.assert_close(z, ref_z, rtol=1e-9, atol=1e-9)
        assert torch.equal(model.encode(pixels), lfq_indices(ref_z))
        codes = lfq_indices(ref_z)
        out = model.decode_codes(codes)
        ref_out = _reference_decoder(torch.where(ref_z > 0, 1.0, -1.0).double(), sd, 3)
        torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-9)
