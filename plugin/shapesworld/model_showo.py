"""The ShapesWorld Show-o: a small ``ShowoForConditionalGeneration`` built for this world.

- a byte-level BPE tokenizer trained offline on the world's own texts (Show-o's
  special tokens appended as in the released checkpoints);
- transformers' Phi as the LLM (4 layers of 128, like the ShapesWorld Janus);
- a MAGVIT-v2 whose downsampling factor is one cell (a 32-px image is 4 x 4 = 16
  codes) and whose lookup-free quantiser has 2 bits, so its 4 codes are the
  palette's 4 colours (code k = palette colour k, bit 0 the most significant);
  trained by the supervised shortcut the known world allows: the encoder is
  taught the sign pattern of each cell's colour, the decoder to draw each code.

Show-o understands an image through the same codes it generates (no separate
vision tower), so an exact VQ means the LLM sees the exact cell colours.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..models.showo.tiny import EOS, TinySpec, build_showo
from ..textbpe import build_bpe_tokenizer
from .model import _to_pixels, random_grids
from .model import world_corpus as shared_corpus
from .model import check_vq as world_check_vq
from .world import CELL, GRID, PALETTE, SIZE, grid_to_image

#: the MAGVIT-v2 of the world: 4 levels (factor 8 = one cell), 2 LFQ bits (4 codes = the palette)
VQ_OVERRIDES: dict[str, Any] = {
    "z_channels": 2,
    "enc_ch_mult": (1, 1, 2, 2),
    "enc_num_res_blocks": (1, 1, 1, 1),
    "dec_ch_mult": (1, 1, 2, 2),
    "dec_num_res_blocks": (1, 1, 1, 1),
}


@dataclass(frozen=True)
class ShowoShapesSpec:
    """Sizes of the ShapesWorld Show-o."""

    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    text_vocab: int = 512
    #: the left-padded text part of a T2I row (the world's longest prompt is about 10 tokens)
    max_text_len: int = 24
    vq_channels: int = 32


def world_corpus() -> list[str]:
    """Every text the Show-o will read or write (its understanding turn: ``USER: \n{q} ASSISTANT:``)."""
    return shared_corpus(["USER: \n", " ASSISTANT:"] * 200)


def build_world_tokenizer(spec: ShowoShapesSpec) -> Any:
    return build_bpe_tokenizer(world_corpus(), vocab_size=spec.text_vocab, special_tokens=[EOS], bos_token=EOS,
                               eos_token=EOS, prepend_bos=False, model_max_length=2048)


def build_model(spec: ShowoShapesSpec) -> tuple[Any, Any]:
    """(model, tokenizer): a fresh Show-o for ShapesWorld (its VQ still untrained)."""
    tiny = TinySpec(seed=spec.seed, image_size=SIZE, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
                    num_heads=spec.num_heads, intermediate_size=spec.intermediate_size, text_vocab=spec.text_vocab,
                    max_text_len=spec.max_text_len, vq_channels=spec.vq_channels)
    model, tokenizer = build_showo(tiny, tokenizer=build_world_tokenizer(spec), vq_overrides=VQ_OVERRIDES)
    vq = model.vq_model.config
    if vq.downsample != CELL or vq.codebook_size != len(PALETTE):
        raise AssertionError(f"the world's VQ must be one code per cell of {len(PALETTE)} colours, got {vq}")
    return model, tokenizer


def train_vq(model: Any, seconds: float = 240.0, seed: int = 0, batch: int = 32, log=print) -> dict[str, float]:
    """Supervised VQ shortcut: the encoder's latent signs -> the cell colour's bits, decoder(code) -> the colour.

    Half of each batch is the world's scenes, half random cell grids (any colour
    anywhere), so that whatever codes the generator draws decode faithfully.
    """
    import torch
    import torch.nn.functional as F

    from ..models.showo.magvit import lfq_latents
    from .world import cell_grid, random_scene

    vq = model.vq_model
    bits = vq.config.z_channels
    params = [p for n, p in vq.named_parameters() if not n.startswith("quantize.")]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    gen = np.random.default_rng(seed)
    scene_rng = random.Random(f"shapesworld-vq-{seed}")
    torch.manual_seed(seed)
    vq.train()
    start, step = time.time(), 0
    while time.time() - start < seconds:
        scenes = [cell_grid(random_scene(scene_rng)) for _ in range(batch // 2)]
        grids = np.concatenate([random_grids(gen, batch - len(scenes)), np.stack(scenes)])
        pixels = _to_pixels(np.stack([grid_to_image(g) for g in grids]))
        codes = torch.from_numpy(grids).reshape(batch, -1).long()
        target = lfq_latents(codes, bits)  # (B, bits, GRID, GRID) of +-1
        z = vq.latents(pixels)
        enc_loss = F.softplus(-4.0 * z * target).mean()  # logistic: each latent's sign, with a margin
        dec_loss = F.mse_loss(vq.decoder(target), pixels)
        loss = enc_loss + 10.0 * dec_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:  # cosine decay over the time budget, to 5% of the start rate
            frac = min(1.0, (time.time() - start) / seconds)
            group["lr"] = 2e-3 * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * frac)))
        opt.step()
        step += 1
        if step % 50 == 0:
            log(f"vq step {step} ({time.time() - start:.0f}s): enc {enc_loss.item():.4f} dec {dec_loss.item():.5f}")
    vq.eval()
    for p in vq.parameters():
        p.requires_grad_(False)
    figures = check_vq(model, seed=seed + 1)
    figures["steps"] = step
    return figures


def check_vq(model: Any, n: int = 512, seed: int = 1) -> dict[str, float]:
    """Exactness of the VQ on the world's scenes and on random cell grids (any colour anywhere)."""
    return world_check_vq(model, n=n, seed=seed, roundtrip=_roundtrip)


def _roundtrip(model: Any, grids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from ..models.showo.magvit import to_unit_interval

    vq = model.vq_model
    n = len(grids)
    pixels = _to_pixels(np.stack([grid_to_image(g) for g in grids]))
    with torch.no_grad():
        codes = vq.encode(pixels, per_image=False).reshape(n, GRID, GRID).numpy()
        dec = to_unit_interval(vq.decode_codes(torch.from_numpy(grids).reshape(n, -1), per_image=False))
    return codes, (dec.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def save_model(model: Any, tokenizer: Any, out_dir: Any, extra: dict[str, Any]) -> Any:
    """Write a loadable checkpoint atomically (plus ``shapesworld.json`` describing how it was made)."""
    import json
    from pathlib import Path

    from ..fsutil import atomic_directory
    from ..models.showo.checkpoint import save_checkpoint

    with atomic_directory(out_dir, overwrite=True) as tmp:
        save_checkpoint(tmp, model, tokenizer)
        (tmp / "shapesworld.json").write_text(json.dumps(extra, indent=2) + "\n")
    return Path(out_dir)


def spec_dict(spec: ShowoShapesSpec) -> dict[str, Any]:
    return {"family": "showo", **asdict(spec)}
