"""The ShapesWorld Janus: a small ``JanusForConditionalGeneration`` built for this world.

- a byte-level BPE tokenizer trained offline on the world's own texts (so the
  judge's system prompt, the prompts and the captions are a few tokens each);
- a vision tower whose patch is one cell (one vision token per cell);
- a VQ tokenizer whose codes are the palette colours (code k = palette colour k),
  trained by the supervised shortcut the known world allows: the encoder is
  taught the cell colours against a fixed unit-norm codebook, the decoder to draw
  each code's colour. Unit-norm codes sidestep a trap of Janus's VQ: ``encode``
  picks codes by unnormalised distance while ``decode`` L2-normalises them.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..fsutil import atomic_directory
from ..models.janus import DEFAULT_SYSTEM
from ..models.janus.tiny import build_janus, janus_bpe_tokenizer
from .data import CAPTION_QUESTION, NO, QUESTION, YES
from .world import CELL, COLOURS, GRID, PALETTE, PALETTE_ARRAY, RELATIONS, SHAPES, SIZE, all_queries, grid_to_image


@dataclass(frozen=True)
class ShapesSpec:
    """Sizes of the ShapesWorld Janus."""

    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    vision_hidden: int = 128
    vision_layers: int = 2
    text_vocab: int = 512


def world_corpus(chat_lines: list[str] | None = None) -> list[str]:
    """Every text the model will read or write, for the BPE tokenizer; ``chat_lines``: the family's own
    chat texts (default: the Janus judge's system prompt, 100 times)."""
    # repeated so that BPE merges them into whole words (" Yes" and " No" must be one token each)
    chat = [DEFAULT_SYSTEM] * 100 if chat_lines is None else list(chat_lines)
    lines = chat + [CAPTION_QUESTION] * 100 + [f" {YES}", f" {NO}"] * 500
    for q in all_queries():
        lines += [q.text, QUESTION.format(prompt=q.text)]
    for colour in COLOURS:
        for shape in SHAPES:
            for r in range(GRID):
                for c in range(GRID):
                    lines.append(f"{colour} {shape} at {r} {c}; ")
    lines += [YES, NO, "nothing.", " ".join(RELATIONS), "0123456789", "!?.,:;'\"()-_/\n"]
    return lines


def build_world_tokenizer(spec: ShapesSpec) -> Any:
    """Janus-Pro's special tokens, a byte-level BPE trained offline on :func:`world_corpus`."""
    return janus_bpe_tokenizer(world_corpus(), spec.text_vocab)


def build_model(spec: ShapesSpec) -> tuple[Any, Any, Any]:
    """(model, tokenizer, processor): a fresh model for ShapesWorld (its VQ still untrained)."""
    import torch

    tokenizer = build_world_tokenizer(spec)
    model, processor = build_janus(
        tokenizer, hidden_size=spec.hidden_size, num_layers=spec.num_layers, num_heads=spec.num_heads,
        max_positions=512, vision_hidden=spec.vision_hidden, vision_layers=spec.vision_layers, vision_heads=4,
        image_size=SIZE, patch_size=CELL, codebook_size=len(PALETTE), seed=spec.seed,
    )  # patch = cell: one vision token and one image code per cell
    with torch.no_grad():  # code k = palette colour k, as unit vectors (decode normalises them anyway)
        codebook = model.model.vqmodel.quantize.embedding.weight
        codebook.zero_()
        codebook[torch.arange(len(PALETTE)), torch.arange(len(PALETTE))] = 1.0
    return model, tokenizer, processor


def _to_pixels(images: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def random_grids(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, GRID, GRID) random cell colours, background-heavy like the world's images."""
    probs = np.array([0.55] + [0.45 / (len(PALETTE) - 1)] * (len(PALETTE) - 1))
    return rng.choice(len(PALETTE), size=(n, GRID, GRID), p=probs)


def train_vq(model: Any, seconds: float = 240.0, seed: int = 0, batch: int = 32, log=print) -> dict[str, float]:
    """Supervised VQ shortcut: encoder -> the cell's colour code, decoder(code) -> the cell's colour.

    Returns the final exactness figures on fresh grids (see :func:`supervised_vq_training`).
    """
    import torch
    import torch.nn.functional as F

    vq = model.model.vqmodel
    vq.quantize.embedding.weight.requires_grad_(False)
    codebook = vq.quantize.embedding.weight

    def losses(grids: np.ndarray, pixels: Any) -> tuple[Any, Any]:
        n = len(grids)
        target = torch.from_numpy(grids).reshape(n, -1)
        z = vq.quant_conv(vq.encoder(pixels)).permute(0, 2, 3, 1).reshape(n, GRID * GRID, -1)
        logits = -((z.unsqueeze(-2) - codebook) ** 2).sum(-1) * 4.0
        enc_loss = F.cross_entropy(logits.reshape(-1, codebook.shape[0]), target.reshape(-1))
        return enc_loss, F.mse_loss(vq.decode(target), pixels)

    steps = supervised_vq_training(vq, losses, seconds=seconds, seed=seed, batch=batch, log=log)
    figures = check_vq(model, seed=seed + 1)
    figures["steps"] = steps
    return figures


def supervised_vq_training(vq: Any, losses: Any, seconds: float, seed: int, batch: int = 32, log=print) -> int:
    """Train a VQ tokenizer's encoder and decoder for ``seconds`` (the quantiser's own parameters stay as they
    are); returns the number of steps.

    Half of each batch is the world's scenes, half random cell grids (any colour anywhere) so that whatever
    codes the generator draws decode faithfully.  ``losses(grids, pixels) -> (encoder loss, decoder loss)`` is
    the family's: the encoder taught each cell's colour code, the decoder to draw it; the step minimises
    ``enc + 10 dec`` with AdamW and a cosine decay over the time budget.
    """
    import torch

    from .world import cell_grid, random_scene

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
        enc_loss, dec_loss = losses(grids, _to_pixels(np.stack([grid_to_image(g) for g in grids])))
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
    return step


def check_vq(model: Any, n: int = 512, seed: int = 1, roundtrip: Any = None) -> dict[str, float]:
    """Exactness of the VQ on the world's scenes and on random cell grids (any colour anywhere).

    ``roundtrip(model, grids) -> (codes, images)``: the family's encode of the grids' images and decode of
    the grids as codes (default: the ShapesWorld Janus's)."""
    from .world import cell_grid, random_scene

    roundtrip = roundtrip or _janus_roundtrip
    rng = random.Random(seed)
    scenes = np.stack([cell_grid(random_scene(rng)) for _ in range(n)])
    out = {f"scenes_{k}": v for k, v in _vq_exactness(*roundtrip(model, scenes), scenes).items()}
    grids = random_grids(np.random.default_rng(seed), n)
    out.update({f"random_grids_{k}": v for k, v in _vq_exactness(*roundtrip(model, grids), grids).items()})
    return out


def _janus_roundtrip(model: Any, grids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    vq = model.model.vqmodel
    n = len(grids)
    pixels = _to_pixels(np.stack([grid_to_image(g) for g in grids]))
    with torch.no_grad():
        codes = vq.encode(pixels).image_tokens.reshape(n, GRID, GRID).numpy()
        dec = vq.decode(torch.from_numpy(grids).reshape(n, -1))
    return codes, ((dec.permute(0, 2, 3, 1).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def _vq_exactness(codes: np.ndarray, images: np.ndarray, grids: np.ndarray) -> dict[str, float]:
    """Share of grids whose codes are exactly the cell colours, and whose decode reads back exactly."""
    from .world import read_cells

    exact_codes = float(np.mean([(c == g).all() for c, g in zip(codes, grids)]))
    read = [read_cells(img) for img in images]
    exact_decode = float(np.mean([r is not None and (r == g).all() for r, g in zip(read, grids)]))
    error = float(np.abs(images.astype(np.float32) - PALETTE_ARRAY[grids].repeat(CELL, 1).repeat(CELL, 2)).mean())
    return {"exact_codes": exact_codes, "exact_decodes": exact_decode, "mean_abs_pixel_error": error}


def save_model(model: Any, tokenizer: Any, processor: Any, out_dir: str | Path, extra: dict[str, Any]) -> Path:
    """Write a loadable checkpoint atomically (plus ``shapesworld.json`` describing how it was made)."""
    with atomic_directory(out_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "shapesworld.json").write_text(json.dumps(extra, indent=2) + "\n")
    return Path(out_dir)


def spec_dict(spec: ShapesSpec) -> dict[str, Any]:
    return asdict(spec)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
