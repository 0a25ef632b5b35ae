"""A tiny random Show-o checkpoint, built offline in seconds.

A real :class:`~unigap.models.showo.modeling.ShowoForConditionalGeneration` (transformers' Phi
with few, narrow layers; a small MAGVIT-v2 with the released 13-bit lookup-free quantiser) and
a byte-level BPE tokenizer trained offline, with ``[PAD]`` and Show-o's special tokens appended
exactly as in the released checkpoints.  The released checkpoints (after ``unigap convert
showo``) go through the same code, only bigger.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...fsutil import atomic_directory
from ...textbpe import build_bpe_tokenizer
from ..base import FamilyError

EOS = "<|endoftext|>"

_WORDS = (
    "a an the one two three four of and or with on in left right above below next to behind front "
    "red green blue yellow purple orange black white gray pink brown cyan "
    "square circle triangle bar column star ring cross dot line shape object objects "
    "small big large tiny long short thin wide bright dark "
    "dog cat bird car house tree flower apple ball cup chair table sky sea sun moon "
    "image picture photo show shows showing does is are this that it there what which how many where "
    "yes no Yes No USER ASSISTANT describe answer question color colour count number position relation scene"
).split()


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny Show-o (defaults: 32-px images, 8 x 8 = 64 codes of 8192)."""

    seed: int = 0
    image_size: int = 32
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    text_vocab: int = 600
    max_text_len: int = 32
    #: MAGVIT-v2 base channels (a multiple of 32: GroupNorm(32))
    vq_channels: int = 32


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) for _ in range(3000)]
    lines += [" ".join(p) for p in itertools.permutations(["Does", "this", "image", "show"], 4)]
    lines += ["USER: \n", " ASSISTANT:", " Yes", " No", "Yes.", "No.", "0123456789", "!?.,:;'\"()-_/\n"]
    return lines


def showo_text_tokenizer(text_vocab: int, seed: int = 0) -> Any:
    """A Phi-like text tokenizer (byte-level BPE, ``<|endoftext|>`` as BOS = EOS, no BOS added)."""
    return build_bpe_tokenizer(_corpus(seed), vocab_size=text_vocab, special_tokens=[EOS], bos_token=EOS,
                               eos_token=EOS, prepend_bos=False, model_max_length=2048)


def build_showo(spec: TinySpec, dtype: str = "float32", *, tokenizer: Any = None,
                vq_overrides: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """A random tiny Show-o model and its tokenizer, in memory.

    ``tokenizer``: a text tokenizer of one's own (e.g. trained on a world's texts; Show-o's special
    tokens are appended here); ``vq_overrides``: MagvitConfig fields to change (e.g. ``z_channels``
    for a smaller codebook, ``enc_ch_mult`` / ``dec_ch_mult`` for another downsampling factor)."""
    import torch
    from transformers import PhiConfig

    from .checkpoint import add_showo_tokens
    from .magvit import MagvitConfig
    from .modeling import ShowoConfig, ShowoForConditionalGeneration

    vq_fields: dict[str, Any] = dict(
        ch=spec.vq_channels, enc_ch_mult=(1, 1, 2), enc_num_res_blocks=(1, 1, 1), dec_ch_mult=(1, 1, 2),
        dec_num_res_blocks=(1, 1, 1), resolution=spec.image_size,
    )
    vq = MagvitConfig(**{**vq_fields, **(vq_overrides or {})})
    if spec.image_size % vq.downsample:
        raise FamilyError(f"image_size must be a multiple of {vq.downsample}, got {spec.image_size}")
    side = spec.image_size // vq.downsample
    if tokenizer is None:
        tokenizer = showo_text_tokenizer(spec.text_vocab, spec.seed)
    llm_vocab = len(tokenizer)
    add_showo_tokens(tokenizer, llm_vocab)
    phi = PhiConfig(
        hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size, partial_rotary_factor=0.5, rope_theta=10000.0,
        hidden_act="gelu_new", layer_norm_eps=1e-5, max_position_embeddings=1024, qk_layernorm=True,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    ).to_dict()
    config = ShowoConfig(
        llm_config=phi, vq_config=vq.to_dict(), llm_vocab_size=llm_vocab, codebook_size=vq.codebook_size,
        num_vq_tokens=side * side, image_size=spec.image_size, max_text_len=spec.max_text_len,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(spec.seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        model = ShowoForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    # Phi's final LayerNorm bounds the hidden state's norm (~sqrt(hidden)); with lm_head at the usual std 0.02
    # a 64-wide model's logits could only span ~2 nats, and a LoRA (which leaves lm_head frozen) could never
    # make a code or an answer likely.  A wider head lets the tiny model learn like a real one does.
    with torch.no_grad():
        model.showo.lm_head.weight.normal_(0.0, 2.0 / spec.hidden_size**0.5)
    return model, tokenizer


def build_tiny_showo(out_dir: str | Path, spec: TinySpec = TinySpec(), overwrite: bool = False) -> Path:
    """Write a tiny random Show-o checkpoint to ``out_dir`` (atomically) and return its path."""
    from .checkpoint import save_checkpoint

    model, tokenizer = build_showo(spec)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_checkpoint(tmp, model, tokenizer)
        (tmp / "unigap_tiny.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return Path(out_dir)
