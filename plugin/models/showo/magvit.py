"""MAGVIT-v2, Show-o's image tokenizer (hub id ``showlab/magvitv2``), written from its description.

A taming-style convolutional VQGAN whose quantiser has no learned codebook
(lookup-free quantisation, LFQ): the encoder maps an image in [-1, 1] to
``z_channels`` (13) channels at 1/16 of its side, every channel is reduced to its
sign, and the 13 signs of a position are one code in ``[0, 2**13)``.  The
decoder maps the +-1 latents back to pixels.

Layout (the parameter names below are those of the released checkpoint file):

* ``encoder``: ``conv_in`` -> ``down.{level}`` (``block.{i}`` ResnetBlocks, a
  stride-2 ``downsample`` after every level but the last) -> ``mid`` (``block_1``,
  ``attn_1``, ``block_2``) -> ``norm_out``, swish, ``conv_out`` -> ``quant_conv``
  (1x1; part of the encoder, not of the top-level model);
* ``decoder``: ``post_quant_conv`` (1x1; part of the decoder) -> ``conv_in`` ->
  ``mid`` -> ``up.{level}`` run from the last level down to level 0, an
  ``upsample`` (nearest x2, then a 3x3 conv) closing every level but level 0 ->
  ``norm_out``, swish, ``conv_out``;
* ``quantize``: two constant buffers, ``embedding`` (``2**bits`` x ``bits``, the
  +-1 latent of every code) and ``power_vals`` (``2**(bits-1) .. 1``); a
  checkpoint file may or may not carry them.

LFQ conventions: bit ``k`` of a position is ``z[k] > 0`` (an exact zero is the
0 bit, whose latent value is -1), and channel 0 is the most significant bit:
``code = sum_k bit_k * 2**(bits - 1 - k)``.  Codes of an image are listed row by
row.  Pixels going in are normalised to [-1, 1] (``(x - 0.5) / 0.5``); what the
decoder returns is mapped back to [0, 1] by ``clamp((x + 1) / 2, 0, 1)``
(:func:`to_unit_interval`).

One deliberate difference: the original reads the bits off its straight-through estimate
``z + (sign(z) - z)``, which in bfloat16 rounds to 0 (the 0 bit) for some positive latents above
~256 (e.g. 300); here the bit is always ``z > 0``.  In float32 the two agree below 2**24.

Nothing here depends on the original code base; building the full-size model
on the ``meta`` device (``with torch.device("meta"): MagvitV2(MagvitConfig())``)
is instantaneous, which is how the tests check the released parameter layout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import FamilyError

__all__ = [
    "MagvitConfig",
    "MagvitV2",
    "from_unit_interval",
    "lfq_indices",
    "lfq_latents",
    "released_state_shapes",
    "to_unit_interval",
]


# ----------------------------------------------------------------------------------------------- config


@dataclass
class MagvitConfig:
    """Hyper-parameters of MAGVIT-v2; the defaults are those of the released ``showlab/magvitv2``."""

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    #: LFQ bits per position; codebook_size = 2 ** z_channels
    z_channels: int = 13
    enc_ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    #: residual blocks of each encoder level (one entry per level)
    enc_num_res_blocks: tuple[int, ...] = (4, 3, 4, 3, 4)
    dec_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    #: residual blocks of each decoder level, indexed by level (the last level runs first)
    dec_num_res_blocks: tuple[int, ...] = (4, 4, 3, 4, 3)
    #: feature-map sides at which the levels get attention blocks; (5,) matches no level of a
    #: 256-px model, so the released model has attention only in ``mid``
    attn_resolutions: tuple[int, ...] = (5,)
    #: nominal input side; only used to decide where ``attn_resolutions`` apply
    resolution: int = 256
    num_groups: int = 32
    norm_eps: float = 1e-6
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("enc_ch_mult", "enc_num_res_blocks", "dec_ch_mult", "dec_num_res_blocks", "attn_resolutions"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise FamilyError(f"MagvitConfig.{name} must be a sequence of integers, got {value!r}")
            setattr(self, name, tuple(int(v) for v in value))
        for name in ("in_channels", "out_channels", "ch", "z_channels", "resolution", "num_groups"):
            if int(getattr(self, name)) < 1:
                raise FamilyError(f"MagvitConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 1 <= self.z_channels <= 62:
            raise FamilyError(f"MagvitConfig.z_channels must be in 1..62 (codes are int64), got {self.z_channels}")
        if not self.enc_ch_mult or not self.dec_ch_mult:
            raise FamilyError("MagvitConfig.enc_ch_mult and dec_ch_mult must not be empty")
        if len(self.enc_num_res_blocks) != len(self.enc_ch_mult):
            raise FamilyError(
                f"MagvitConfig.enc_num_res_blocks has {len(self.enc_num_res_blocks)} entries, "
                f"enc_ch_mult {len(self.enc_ch_mult)}: one per level is needed"
            )
        if len(self.dec_num_res_blocks) != len(self.dec_ch_mult):
            raise FamilyError(
                f"MagvitConfig.dec_num_res_blocks has {len(self.dec_num_res_blocks)} entries, "
                f"dec_ch_mult {len(self.dec_ch_mult)}: one per level is needed"
            )
        if len(self.dec_ch_mult) != len(self.enc_ch_mult):
            raise FamilyError(
                f"MagvitConfig: the decoder has {len(self.dec_ch_mult)} levels, the encoder {len(self.enc_ch_mult)}; "
                "they must match for the decoder to restore the input size"
            )
        if min(self.enc_ch_mult + self.dec_ch_mult) < 1 or min(self.enc_num_res_blocks + self.dec_num_res_blocks) < 0:
            raise FamilyError("MagvitConfig: channel multipliers must be >= 1 and block counts >= 0")
        for mult in sorted(set(self.enc_ch_mult + self.dec_ch_mult + (1,))):
            if (self.ch * mult) % self.num_groups:
                raise FamilyError(
                    f"MagvitConfig: {self.ch * mult} channels (ch {self.ch} x {mult}) are not divisible by "
                    f"num_groups {self.num_groups} (GroupNorm)"
                )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise FamilyError(f"MagvitConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def codebook_size(self) -> int:
        return 2**self.z_channels

    @property
    def downsample(self) -> int:
        """Side of the pixel square one code covers (16 for the released model)."""
        return 2 ** (len(self.enc_ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples as lists) that :meth:`from_dict` reads back."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MagvitConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise FamilyError(
                f"MagvitConfig.from_dict: unknown key(s) {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**dict(d))

    @classmethod
    def tiny(cls) -> MagvitConfig:
        """A few-hundred-kB model for tests: factor 4 (a 32-px image is 8 x 8 = 64 codes), 13 bits."""
        return cls(
            ch=32,
            enc_ch_mult=(1, 1, 2),
            enc_num_res_blocks=(1, 1, 1),
            dec_ch_mult=(1, 1, 2),
            dec_num_res_blocks=(1, 1, 1),
            resolution=32,
        )


# ------------------------------------------------------------------------------------------------- LFQ


def _check_bits(bits: int) -> int:
    bits = int(bits)
    if not 1 <= bits <= 62:
        raise FamilyError(f"LFQ bits must be in 1..62, got {bits}")
    return bits


def _powers(bits: int, device: torch.device | str | None = None) -> Tensor:
    """``[2**(bits-1), ..., 2, 1]`` as int64: channel 0 is the most significant bit."""
    return torch.bitwise_left_shift(
        torch.ones((), dtype=torch.long, device=device), torch.arange(bits - 1, -1, -1, dtype=torch.long, device=device)
    )


def lfq_indices(z: Tensor) -> Tensor:
    """Codes of encoder latents: ``(B, C, h, w)`` -> ``(B, h*w)`` int64, positions row by row.

    Bit ``k`` is ``z[:, k] > 0`` (zero and NaN give the 0 bit); channel 0 is the most significant.
    """
    if z.dim() != 4:
        raise FamilyError(f"lfq_indices expects latents of shape (B, C, h, w), got {tuple(z.shape)}")
    bits = _check_bits(z.shape[1])
    positive = (z > 0).to(torch.long)
    codes = (positive * _powers(bits, z.device).view(1, bits, 1, 1)).sum(dim=1)
    return codes.reshape(z.shape[0], -1)


def _grid(n: int, shape: tuple[int, int] | None) -> tuple[int, int]:
    if shape is None:
        side = math.isqrt(n)
        if side * side != n:
            raise FamilyError(f"{n} codes per image is not a square number: pass shape=(h, w)")
        return side, side
    h, w = (int(s) for s in shape)
    if h * w != n:
        raise FamilyError(f"shape {(h, w)} holds {h * w} codes, but each image has {n}")
    return h, w


def lfq_latents(
    indices: Tensor, bits: int, shape: tuple[int, int] | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The inverse of :func:`lfq_indices`: ``(B, N)`` codes -> ``(B, bits, h, w)`` latents of +-1.

    Bit ``k`` (channel ``k``, most significant first) is +1 when set and -1 when not.  ``shape`` is
    ``(h, w)``; by default the grid is square (``h = w = sqrt(N)``).
    """
    bits = _check_bits(bits)
    if indices.dim() != 2:
        raise FamilyError(f"lfq_latents expects codes of shape (B, N), got {tuple(indices.shape)}")
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise FamilyError(f"lfq_latents expects integer codes, got {indices.dtype}")
    b, n = indices.shape
    h, w = _grid(n, shape)
    codes = indices.to(torch.long)
    if codes.numel() and not codes.is_meta and (int(codes.min()) < 0 or int(codes.max()) >= 2**bits):
        raise FamilyError(
            f"codes must lie in [0, {2**bits}) for {bits} bits; got values in [{int(codes.min())}, {int(codes.max())}]"
        )
    set_bits = torch.bitwise_and(codes.unsqueeze(1), _powers(bits, codes.device).view(1, bits, 1)) != 0
    latents = set_bits.to(dtype) * 2 - 1
    return latents.reshape(b, bits, h, w)


def to_unit_interval(decoded: Tensor) -> Tensor:
    """Decoder output -> pixels in [0, 1]: ``clamp((x + 1) / 2, 0, 1)`` (as Show-o does)."""
    return torch.clamp((decoded + 1.0) / 2.0, min=0.0, max=1.0)


def from_unit_interval(pixels: Tensor) -> Tensor:
    """Pixels in [0, 1] -> the encoder's [-1, 1] input (``Normalize(mean=0.5, std=0.5)``)."""
    return (pixels - 0.5) / 0.5


# ---------------------------------------------------------------------------------------------- layers


def _swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def _norm(channels: int, cfg: MagvitConfig) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.num_groups, channels, eps=cfg.norm_eps, affine=True)


def _conv3(cin: int, cout: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=padding)


def _conv1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1)


class ResnetBlock(nn.Module):
    """norm1, swish, conv1, norm2, swish, dropout, conv2, plus a 1x1 ``nin_shortcut`` when the width changes."""

    def __init__(self, cin: int, cout: int, cfg: MagvitConfig) -> None:
        super().__init__()
        self.norm1 = _norm(cin, cfg)
        self.conv1 = _conv3(cin, cout)
        self.norm2 = _norm(cout, cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = _conv3(cout, cout)
        self.nin_shortcut = _conv1(cin, cout) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, 1x1 convolutions for q, k, v and the output."""

    def __init__(self, channels: int, cfg: MagvitConfig) -> None:
        super().__init__()
        self.norm = _norm(channels, cfg)
        self.q = _conv1(channels, channels)
        self.k = _conv1(channels, channels)
        self.v = _conv1(channels, channels)
        self.proj_out = _conv1(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        q = self.q(normed).reshape(b, c, h * w).transpose(1, 2)  # b, hw, c
        k = self.k(normed).reshape(b, c, h * w)  # b, c, hw
        v = self.v(normed).reshape(b, c, h * w)  # b, c, hw
        weights = torch.softmax(torch.bmm(q, k) * (c**-0.5), dim=2)  # b, query, key
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad one column right and one row below, then a 3x3 stride-2 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3(channels, channels, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (often empty), optional ``downsample``/``upsample``."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()

    def run_blocks(self, h: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, channels: int, cfg: MagvitConfig) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, cfg)
        self.attn_1 = AttnBlock(channels, cfg)
        self.block_2 = ResnetBlock(channels, channels, cfg)

    def forward(self, h: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: MagvitConfig) -> None:
        super().__init__()
        self.conv_in = _conv3(cfg.in_channels, cfg.ch)
        self.down = nn.ModuleList()
        levels = len(cfg.enc_ch_mult)
        width, side = cfg.ch, cfg.resolution
        for level, (mult, blocks) in enumerate(zip(cfg.enc_ch_mult, cfg.enc_num_res_blocks)):
            stage = _Level()
            out = cfg.ch * mult
            for _ in range(blocks):
                stage.block.append(ResnetBlock(width, out, cfg))
                width = out
                if side in cfg.attn_resolutions:
                    stage.attn.append(AttnBlock(width, cfg))
            if level != levels - 1:
                stage.downsample = Downsample(width)
                side //= 2
            self.down.append(stage)
        self.mid = _Mid(width, cfg)
        self.norm_out = _norm(width, cfg)
        self.conv_out = _conv3(width, cfg.z_channels)
        self.quant_conv = _conv1(cfg.z_channels, cfg.z_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = stage.run_blocks(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        h = self.conv_out(_swish(self.norm_out(h)))
        return self.quant_conv(h)


class Decoder(nn.Module):
    def __init__(self, cfg: MagvitConfig) -> None:
        super().__init__()
        levels = len(cfg.dec_ch_mult)
        width = cfg.ch * cfg.dec_ch_mult[-1]
        side = cfg.resolution // 2 ** (levels - 1)
        self.conv_in = _conv3(cfg.z_channels, width)
        self.mid = _Mid(width, cfg)
        stages: list[_Level] = []
        for level in reversed(range(levels)):  # built (and run) from the coarsest level down
            stage = _Level()
            out = cfg.ch * cfg.dec_ch_mult[level]
            for _ in range(cfg.dec_num_res_blocks[level]):
                stage.block.append(ResnetBlock(width, out, cfg))
                width = out
                if side in cfg.attn_resolutions:
                    stage.attn.append(AttnBlock(width, cfg))
            if level != 0:
                stage.upsample = Upsample(width)
                side *= 2
            stages.append(stage)
        self.up = nn.ModuleList(reversed(stages))  # up[level], as in the checkpoint
        self.norm_out = _norm(width, cfg)
        self.conv_out = _conv3(width, cfg.out_channels)
        # runs first, but is registered last (the released file lists it last)
        self.post_quant_conv = _conv1(cfg.z_channels, cfg.z_channels)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            h = stage.run_blocks(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class LFQuantizer(nn.Module):
    """No parameters: ``embedding`` (the +-1 latent of every code) and ``power_vals`` are constants.

    Both are ordinary (persistent) buffers, as in the released file; :meth:`MagvitV2.load_checkpoint_state`
    accepts a file without them.  The computations go through :func:`lfq_indices` / :func:`lfq_latents`.
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("embedding", self.canonical_embedding(bits))
        self.register_buffer("power_vals", _powers(bits))

    @staticmethod
    def canonical_embedding(bits: int, device: torch.device | str | None = None) -> Tensor:
        codes = torch.arange(2**bits, dtype=torch.long, device=device).unsqueeze(1)
        set_bits = torch.bitwise_and(codes, _powers(bits, device).unsqueeze(0)) != 0
        return set_bits.to(torch.float32) * 2 - 1


# ----------------------------------------------------------------------------------------------- model


class MagvitV2(nn.Module):
    """MAGVIT-v2 tokenizer: :meth:`encode` pixels to codes, :meth:`decode_codes` codes to pixels.

    Built in eval mode; neither method disables autograd (wrap calls in ``torch.no_grad()``).
    """

    def __init__(self, config: MagvitConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else MagvitConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.quantize = LFQuantizer(self.config.z_channels)
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    def latents(self, pixels: Tensor) -> Tensor:
        """Continuous encoder output (before the sign): ``(B, 3, H, W)`` -> ``(B, z_channels, h, w)``."""
        if pixels.dim() != 4 or pixels.shape[1] != self.config.in_channels:
            raise FamilyError(
                f"MagvitV2.encode expects pixels of shape (B, {self.config.in_channels}, H, W) in [-1, 1], "
                f"got {tuple(pixels.shape)}"
            )
        return self.encoder(pixels.to(self.encoder.conv_in.weight.dtype))

    def encode(self, pixels: Tensor, *, per_image: bool = True) -> Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> ``(B, h*w)`` int64 codes, row by row (``h = ceil(H / 16)``).

        ``per_image`` (default) runs the encoder on one image at a time, so an image's codes never
        depend on the batch it came in, bit for bit (batched convolutions are not batch-invariant on
        every backend, and a latent within rounding of 0 would flip a bit); ``False`` runs the batch
        in one pass.
        """
        if not per_image or pixels.dim() != 4 or pixels.shape[0] <= 1:
            return lfq_indices(self.latents(pixels))
        return torch.cat([lfq_indices(self.latents(pixels[i : i + 1])) for i in range(pixels.shape[0])])

    def decode_codes(self, codes: Tensor, shape: tuple[int, int] | None = None, *, per_image: bool = True) -> Tensor:
        """``(B, N)`` codes -> ``(B, 3, 16h, 16w)`` raw decoder output (about [-1, 1], not clamped).

        ``shape`` is the code grid ``(h, w)``; by default it is square.  ``per_image`` (default)
        decodes one image at a time, so an image's pixels never depend on its batch, bit for bit;
        ``False`` decodes the batch in one pass.
        """
        weight = self.decoder.conv_in.weight
        latents = lfq_latents(codes, self.config.z_channels, shape, dtype=weight.dtype).to(weight.device)
        if not per_image or latents.shape[0] <= 1:
            return self.decoder(latents)
        return torch.cat([self.decoder(latents[i : i + 1]) for i in range(latents.shape[0])])

    def load_checkpoint_state(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load a released state dict (``encoder.*``, ``decoder.*``, optionally ``quantize.*``).

        Every encoder and decoder tensor must be present with its exact shape and nothing else may
        be; the ``quantize`` buffers may be absent, and when present must hold the fixed LFQ values.
        Anything else is a :class:`~unigap.models.base.FamilyError` (a ``ValueError``) naming the keys.
        """
        own = self.state_dict()
        given = dict(state_dict)
        optional = {k for k in own if k.startswith("quantize.")}
        missing = sorted(k for k in own if k not in given and k not in optional)
        unexpected = sorted(k for k in given if k not in own)
        problems = []
        if missing:
            problems.append(f"missing key(s) {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected key(s) {_listing(unexpected)}")
        wrong = [
            f"{k} {tuple(given[k].shape)} (expected {tuple(own[k].shape)})"
            for k in own
            if k in given and tuple(given[k].shape) != tuple(own[k].shape)
        ]
        if wrong:
            problems.append(f"mis-shaped {_listing(wrong)}")
        if problems:
            raise FamilyError("MAGVIT-v2 checkpoint does not fit: " + "; ".join(problems))
        bits = self.config.z_channels
        canonical = {
            "quantize.embedding": LFQuantizer.canonical_embedding(bits, "cpu"),
            "quantize.power_vals": _powers(bits, "cpu"),
        }
        for key in sorted(optional):
            value = given.get(key)
            if (
                value is not None
                and key in canonical
                and not torch.equal(value.detach().cpu().to(torch.float64), canonical[key].to(torch.float64))
            ):
                raise FamilyError(f"MAGVIT-v2 checkpoint: {key} does not hold the fixed LFQ values")
        full = {k: given.get(k, own[k]) for k in own}
        self.load_state_dict(full, strict=True)


def _listing(keys: list[str], most: int = 8) -> str:
    shown = ", ".join(keys[:most])
    return shown + (f" and {len(keys) - most} more" if len(keys) > most else "")


def released_state_shapes(config: MagvitConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of a checkpoint of ``config`` (default: the released one) -> its shape.

    Derived from the config alone (not from :class:`MagvitV2`), so tests can hold the two against
    each other.  Includes the two ``quantize`` buffers.
    """
    cfg = config if config is not None else MagvitConfig()
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int, k: int) -> None:
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)

    def norm(name: str, c: int) -> None:
        shapes[f"{name}.weight"] = (c,)
        shapes[f"{name}.bias"] = (c,)

    def resblock(name: str, cin: int, cout: int) -> None:
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name: str, c: int) -> None:
        norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    def mid(name: str, c: int) -> None:
        resblock(f"{name}.block_1", c, c)
        attn(f"{name}.attn_1", c)
        resblock(f"{name}.block_2", c, c)

    levels = len(cfg.enc_ch_mult)
    conv("encoder.conv_in", cfg.in_channels, cfg.ch, 3)
    width, side = cfg.ch, cfg.resolution
    for level in range(levels):
        out = cfg.ch * cfg.enc_ch_mult[level]
        for i in range(cfg.enc_num_res_blocks[level]):
            resblock(f"encoder.down.{level}.block.{i}", width, out)
            width = out
            if side in cfg.attn_resolutions:
                attn(f"encoder.down.{level}.attn.{i}", width)
        if level != levels - 1:
            conv(f"encoder.down.{level}.downsample.conv", width, width, 3)
            side //= 2
    mid("encoder.mid", width)
    norm("encoder.norm_out", width)
    conv("encoder.conv_out", width, cfg.z_channels, 3)
    conv("encoder.quant_conv", cfg.z_channels, cfg.z_channels, 1)

    width = cfg.ch * cfg.dec_ch_mult[-1]
    side = cfg.resolution // 2 ** (levels - 1)
    conv("decoder.conv_in", cfg.z_channels, width, 3)
    mid("decoder.mid", width)
    outer = shapes
    per_level: dict[int, dict[str, tuple[int, ...]]] = {}
    for level in reversed(range(levels)):  # widths flow from the last level down; keys are listed by level
        shapes = per_level[level] = {}
        out = cfg.ch * cfg.dec_ch_mult[level]
        for i in range(cfg.dec_num_res_blocks[level]):
            resblock(f"decoder.up.{level}.block.{i}", width, out)
            width = out
            if side in cfg.attn_resolutions:
                attn(f"decoder.up.{level}.attn.{i}", width)
        if level != 0:
            conv(f"decoder.up.{level}.upsample.conv", width, width, 3)
            side *= 2
    shapes = outer
    for level in range(levels):
        shapes.update(per_level[level])
    norm("decoder.norm_out", width)
    conv("decoder.conv_out", width, cfg.out_channels, 3)
    conv("decoder.post_quant_conv", cfg.z_channels, cfg.z_channels, 1)

    shapes["quantize.embedding"] = (2**cfg.z_channels, cfg.z_channels)
    shapes["quantize.power_vals"] = (cfg.z_channels,)
    return shapes
