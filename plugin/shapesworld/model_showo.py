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

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..fsutil import atomic_directory
from ..models.showo.tiny import EOS, TinySpec, build_showo
from ..textbpe import build_bpe_tokenizer
from .model import _to_pixels, supervised_vq_training
from .model import check_vq as world_check_vq
from .model import world_corpus as shared_corpus
from .world import CELL, GRID, PALETTE, SIZE, grid_to_image

#: the MAGVIT-v2 of the world: 4 levels (factor 8 = one cell), 2 LFQ bits (4 codes = the palette)
VQ_OVERRIDES: dict[str, Any] = {
    "z_channels": 2,
    "enc_ch_mult": (1, 1, 2, 2),
    "enc_num_res_blocks": (1, 1, 1, 1),
    "dec_ch_mult": (1, 1, 2, 2),
    "dec_num_res_blocks": (1, 1, 1, 1),
}


def world_spec(seed: int = 0, **sizes: Any) -> TinySpec:
    """Sizes of the ShapesWorld Show-o (the tiny Show-o's spec): Phi with 4 layers of 128, like the ShapesWorld
    Janus; a 24-token T2I text part (the world's longest prompt is about 10 tokens).  ``sizes`` override."""
    values: dict[str, Any] = dict(seed=seed, image_size=SIZE, hidden_size=128, num_layers=4, num_heads=4,
                                  intermediate_size=512, text_vocab=512, max_text_len=24, vq_channels=32)
    return TinySpec(**{**values, **sizes})


def world_corpus() -> list[str]:
    """Every text the Show-o will read or write (its understanding turn: ``USER: \n{q} ASSISTANT:``)."""
    return shared_corpus(["USER: \n", " ASSISTANT:"] * 200)


def build_world_tokenizer(spec: TinySpec) -> Any:
    return build_bpe_tokenizer(world_corpus(), vocab_size=spec.text_vocab, special_tokens=[EOS], bos_token=EOS,
                               eos_token=EOS, prepend_bos=False, model_max_length=2048)


def build_model(spec: TinySpec) -> tuple[Any, Any]:
    """(model, tokenizer): a fresh Show-o for ShapesWorld (its VQ still untrained); ``spec``: :func:`world_spec`."""
    model, tokenizer = build_showo(spec, tokenizer=build_world_tokenizer(spec), vq_overrides=VQ_OVERRIDES)
    vq = model.vq_model.config
    if vq.downsample != CELL or vq.codebook_size != len(PALETTE):
        raise AssertionError(f"the world's VQ must be one code per cell of {len(PALETTE)} colours, got {vq}")
    return model, tokenizer


def train_vq(model: Any, seconds: float = 240.0, seed: int = 0, batch: int = 32, log=print) -> dict[str, float]:
    """Supervised VQ shortcut: the encoder's latent signs -> the cell colour's bits, decoder(code) -> the colour
    (the loop: :func:`~unigap.shapesworld.model.supervised_vq_training`)."""
    import torch
    import torch.nn.functional as F

    from ..models.showo.magvit import lfq_latents

    vq = model.vq_model

    def losses(grids: np.ndarray, pixels: Any) -> tuple[Any, Any]:
        codes = torch.from_numpy(grids).reshape(len(grids), -1).long()
        target = lfq_latents(codes, vq.config.z_channels)  # (B, bits, GRID, GRID) of +-1
        enc_loss = F.softplus(-4.0 * vq.latents(pixels) * target).mean()  # logistic: each sign, with a margin
        return enc_loss, F.mse_loss(vq.decoder(target), pixels)

    steps = supervised_vq_training(vq, losses, seconds=seconds, seed=seed, batch=batch, log=log)
    figures = check_vq(model, seed=seed + 1)
    figures["steps"] = steps
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


def save_model(model: Any, tokenizer: Any, out_dir: str | Path, extra: dict[str, Any]) -> Path:
    """Write a loadable checkpoint atomically (plus ``shapesworld.json`` describing how it was made)."""
    from ..models.showo.checkpoint import save_checkpoint

    with atomic_directory(out_dir, overwrite=True) as tmp:
        save_checkpoint(tmp, model, tokenizer)
        (tmp / "shapesworld.json").write_text(json.dumps(extra, indent=2) + "\n")
    return Path(out_dir)


def spec_dict(spec: TinySpec) -> dict[str, Any]:
    return {"family": "showo", **asdict(spec)}
