"""A tiny random Janus-architecture checkpoint, built offline in seconds.

It is a real ``JanusForConditionalGeneration`` (config, safetensors weights, a
byte-level BPE tokenizer trained offline by ``unigap.textbpe``, a processor, a generation config) that
loads with ``from_pretrained`` and exercises every path of unigap: the real
Janus-Pro checkpoints go through exactly the same code, only bigger.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...fsutil import atomic_directory
from ...textbpe import build_bpe_tokenizer
from ..base import FamilyError

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
IMAGE, BOI, EOI = "<image_placeholder>", "<begin_of_image>", "<end_of_image>"
USER, ASSISTANT = "<|User|>", "<|Assistant|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, USER, ASSISTANT, IMAGE, BOI, EOI]

# A chat template written for unigap that renders Janus-Pro's format:
# "<|User|>: {text}\n\n<|Assistant|>: {answer}<eos>", images as <image_placeholder>.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['content'] is string %}{% set parts = [{'type': 'text', 'text': m['content']}] %}"
    "{% else %}{% set parts = m['content'] %}{% endif %}"
    "{% if m['role'] == 'system' %}{% for p in parts %}{{ p['text'] }}{% endfor %}"
    "{% elif m['role'] == 'user' %}<|User|>: "
    "{% for p in parts %}{% if p['type'] == 'image' %}<image_placeholder>{% if not loop.last %}\n{% endif %}"
    "{% else %}{{ p['text'] }}{% endif %}{% endfor %}\n\n"
    "{% else %}<|Assistant|>: {% for p in parts %}{{ p['text'] }}{% endfor %}" + EOS + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
)

_WORDS = (
    "a an the one two three four of and or with on in left right above below next to behind front "
    "red green blue yellow purple orange black white gray pink brown cyan "
    "square circle triangle bar column star ring cross dot line shape object objects "
    "small big large tiny long short thin wide bright dark "
    "dog cat bird car house tree flower apple ball cup chair table sky sea sun moon "
    "image picture photo show shows showing does is are this that it there what which how many where "
    "yes no Yes No describe answer question color colour count number position relation scene "
    "draw drawing generate render painting of in the style simple plain background"
).split()


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model (defaults: 32 px images, 16 image tokens, 64 codes)."""

    seed: int = 0
    image_size: int = 32
    patch_size: int = 8
    codebook_size: int = 64
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    text_vocab: int = 600


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(3000):
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))))
    lines += [" ".join(p) for p in itertools.permutations(["Does", "this", "image", "show"], 4)]
    lines += ["Yes.", "No.", " Yes", " No", "0123456789", "!?.,:;'\"()-_/\n"]
    return lines


def janus_tokenizer_class() -> type:
    """The ``transformers`` class a Janus tokenizer is wrapped in.

    transformers 4.5x's JanusProcessor insists on a LlamaTokenizerFast; in 5.x that class rebuilds a
    sentencepiece-style pipeline on reload, so the generic class that keeps tokenizer.json is used.
    """
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        return transformers.LlamaTokenizerFast
    return transformers.PreTrainedTokenizerFast


def janus_bpe_tokenizer(
    corpus: Iterable[str], vocab_size: int, fixed_ids: dict[str, int] | None = None, total_size: int | None = None
) -> Any:
    """A Janus-Pro-style tokenizer (its special tokens; encoding prepends BOS) trained offline on ``corpus``.

    ``total_size`` / ``fixed_ids``: pad the vocabulary to that size, special tokens at those ids.
    """
    return build_bpe_tokenizer(
        corpus,
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        prepend_bos=True,  # like Janus-Pro's tokenizer
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI},
        model_max_length=4096,
        tokenizer_class=janus_tokenizer_class(),
        fixed_ids=fixed_ids,
        total_size=total_size,
    )


def build_tokenizer(spec: TinySpec):
    return janus_bpe_tokenizer(_corpus(spec.seed), spec.text_vocab)


def _image_processor(spec: TinySpec):
    try:  # transformers 5.x: the numpy/PIL variant needs no torchvision
        from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil as cls
    except ImportError:  # transformers 4.5x: the slow processor is the PIL one
        from transformers.models.janus.image_processing_janus import JanusImageProcessor as cls
    return cls(
        size={"height": spec.image_size, "width": spec.image_size},
        min_size=4,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def _rescale_image_paths(model) -> None:
    """Give the tiny model image paths that carry signal.

    With the default init (std 0.02 everywhere) the 8-dim code embeddings shrink
    ~10^4-fold through the two aligner MLPs, so a random tiny model cannot tell
    one code (or one image) from another and nothing image-related can be
    learnt in a few steps.  Real checkpoints are trained and unaffected; here
    the code embeddings get unit variance and the aligners a
    variance-preserving init.
    """
    import torch

    with torch.no_grad():
        model.model.generation_embeddings.weight.normal_(0.0, 1.0)
        for aligner in (model.model.aligner, model.model.generation_aligner):
            for layer in aligner.modules():
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.normal_(0.0, layer.in_features**-0.5)


def build_janus(
    tokenizer: Any,
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    max_positions: int,
    vision_hidden: int,
    vision_layers: int,
    vision_heads: int,
    image_size: int,
    patch_size: int,
    codebook_size: int,
    seed: int,
    intermediate_size: int | None = None,
    rms_norm_eps: float = 1e-6,
    vision_mlp_ratio: float = 2.0,
    vq: dict[str, Any] | None = None,
    dtype: str = "float32",
) -> tuple[Any, Any]:
    """(model, processor): a random Janus from transformers' own classes, one image code per patch.

    ``intermediate_size``: the text MLP's (default 2 x hidden); ``vq``: ``JanusVQVAEConfig`` values
    replacing the small defaults; ``dtype``: the parameters' (the model is built in it).
    """
    import torch
    from transformers import (
        GenerationConfig,
        JanusConfig,
        JanusForConditionalGeneration,
        JanusProcessor,
        JanusVisionConfig,
        JanusVQVAEConfig,
        LlamaConfig,
    )

    if image_size % patch_size:
        raise FamilyError("image_size must be a multiple of patch_size")
    side = image_size // patch_size
    downsample = patch_size.bit_length() - 1  # the VQ halves the size once per extra level
    if 2**downsample != patch_size:
        raise FamilyError("patch_size must be a power of two")
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=rms_norm_eps,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        tie_word_embeddings=False,
    )
    vision = JanusVisionConfig(
        hidden_size=vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        mlp_ratio=vision_mlp_ratio,
        projection_dim=hidden_size,
        depth=2,
        num_image_tokens=side * side,
    )
    vq_values = {
        "embed_dim": 8,
        "num_embeddings": codebook_size,
        "latent_channels": 32,
        "base_channels": 32,
        "channel_multiplier": [1] * (downsample + 1),
        "num_res_blocks": 1,
        "num_patches": side,
        "projection_dim": hidden_size,
        "image_token_embed_dim": hidden_size,
        "num_hidden_layers": 2,
    }
    vq_values.update(vq or {})
    if 2 ** (len(vq_values["channel_multiplier"]) - 1) != patch_size:
        raise FamilyError("the VQ must downsample by patch_size: len(channel_multiplier) - 1 halvings")
    config = JanusConfig(
        text_config=text, vision_config=vision, vq_config=JanusVQVAEConfig(**vq_values),
        image_token_id=ids[IMAGE], tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        model = JanusForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    config.dtype = dtype
    _rescale_image_paths(model)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        guidance_scale=5.0,
        generation_kwargs={"boi_token_id": ids[BOI], "num_image_tokens": side * side},
    )
    processor = JanusProcessor(
        image_processor=_image_processor(TinySpec(image_size=image_size, patch_size=patch_size)),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        use_default_system_prompt=True,
    )
    return model, processor


def build_tiny_janus(out_dir: str | Path, spec: TinySpec = TinySpec(), overwrite: bool = False) -> Path:
    """Write a tiny random Janus checkpoint to ``out_dir`` (atomically) and return its path."""
    tokenizer = build_tokenizer(spec)
    model, processor = build_janus(
        tokenizer, hidden_size=spec.hidden_size, num_layers=spec.num_layers, num_heads=spec.num_heads,
        max_positions=4096, vision_hidden=32, vision_layers=1, vision_heads=2, image_size=spec.image_size,
        patch_size=spec.patch_size, codebook_size=spec.codebook_size, seed=spec.seed,
    )
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "unigap_tiny.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return Path(out_dir)


# Janus-Pro-1B's sizes.  Sources: transformers' JanusConfig / JanusVisionConfig / JanusVQVAEConfig
# defaults (documented as deepseek-community/Janus-Pro-1B's) and that checkpoint's config.json
# (text model: hidden 2048, MLP 5632, 16 heads, 24 layers, vocabulary 102400, 16384 positions,
# RMSNorm eps 1e-6; BOS / EOS / pad 100000 / 100001 / 100002, image placeholder 100581).
PRO_1B_TEXT = {"hidden_size": 2048, "intermediate_size": 5632, "num_heads": 16, "max_positions": 16384,
               "rms_norm_eps": 1e-6}
PRO_1B_VOCAB = 102400
# SigLIP-L/16 at 384 px: 24 x 24 = 576 image tokens
PRO_1B_VISION = {"vision_hidden": 1024, "vision_layers": 24, "vision_heads": 16, "vision_mlp_ratio": 4.0,
                 "image_size": 384, "patch_size": 16}
PRO_1B_VQ = {"embed_dim": 8, "num_embeddings": 16384, "latent_channels": 256, "base_channels": 128,
             "channel_multiplier": [1, 1, 2, 2, 4], "num_res_blocks": 2, "projection_dim": 2048,
             "image_token_embed_dim": 2048, "num_hidden_layers": 2}
PRO_1B_IDS = {BOS: 100000, EOS: 100001, PAD: 100002, BOI: 100016, IMAGE: 100581, EOI: 100593}


def build_pro_shaped_janus(
    out_dir: str | Path, num_layers: int = 2, dtype: str = "bfloat16", seed: int = 0, overwrite: bool = False
) -> Path:
    """Write a random Janus with Janus-Pro-1B's exact shapes but ``num_layers`` text layers (of 24).

    Vision tower, aligners, VQ, generation head and embeddings, text width, heads, MLP and the
    102400-token vocabulary (an offline BPE padded with unused tokens, the special tokens at
    Janus-Pro-1B's ids) are the real ones; only the depth of the language model differs.  About
    0.9 B parameters with two layers: ``dtype`` bfloat16 (the real checkpoint's) halves memory and disk.
    """
    tokenizer = janus_bpe_tokenizer(_corpus(seed), 600, fixed_ids=PRO_1B_IDS, total_size=PRO_1B_VOCAB)
    if len(tokenizer) != PRO_1B_VOCAB:
        raise FamilyError(f"the padded tokenizer has {len(tokenizer)} tokens, not {PRO_1B_VOCAB}")
    model, processor = build_janus(
        tokenizer, num_layers=num_layers, codebook_size=PRO_1B_VQ["num_embeddings"], seed=seed, vq=PRO_1B_VQ,
        dtype=dtype, **PRO_1B_TEXT, **PRO_1B_VISION,
    )
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
