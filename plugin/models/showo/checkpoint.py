"""A Show-o checkpoint folder: tokenizer layout, processor, reading and writing (tiny models and converter).

The folder is what ``save_pretrained`` writes for
:class:`~unigap.models.showo.modeling.ShowoForConditionalGeneration` (``config.json`` with the
embedded Phi and MAGVIT-v2 configs, ``model.safetensors`` with ``showo.*`` and ``vq_model.*``),
plus the text tokenizer (Phi's, with ``[PAD]`` and Show-o's 9 special tokens appended) and a
processor whose image processor does Show-o's transform (short side resized bicubic, centre
crop, values in [-1, 1]).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..base import FamilyError

#: [PAD] then Show-o's special tokens, appended to the text vocabulary in this order
SHOWO_TOKENS = ("[PAD]", "<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>")


def add_showo_tokens(tokenizer: Any, llm_vocab_size: int, where: str = "the tokenizer") -> Any:
    """Append ``[PAD]`` (the pad token) and the 9 special tokens at ids ``llm_vocab_size`` .. ``+9``."""
    if len(tokenizer) != llm_vocab_size:
        raise FamilyError(f"{where} has {len(tokenizer)} tokens but Show-o's text vocabulary has {llm_vocab_size} "
                          "(llm_vocab_size): it is not the tokenizer this checkpoint was trained with")
    tokenizer.add_special_tokens({"pad_token": SHOWO_TOKENS[0]})
    tokenizer.add_tokens(list(SHOWO_TOKENS[1:]), special_tokens=True)
    for offset, token in enumerate(SHOWO_TOKENS):
        got = tokenizer.convert_tokens_to_ids(token)
        if got != llm_vocab_size + offset:
            raise FamilyError(f"{where}: {token!r} got id {got}, Show-o needs {llm_vocab_size + offset} "
                              "(does the tokenizer already define it?)")
    return tokenizer


def image_processor(image_size: int) -> Any:
    """Show-o's image transform as a transformers image processor (what the host feeds the model)."""
    try:  # the PIL backend (what transformers falls back to without torchvision), named to avoid its warning
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": image_size}, resample=3,  # bicubic
        do_center_crop=True, crop_size={"height": image_size, "width": image_size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=True,
    )


def processor_class() -> type:
    """``ShowoProcessor`` (an image processor and the tokenizer), registered with ``AutoProcessor``."""
    global _PROCESSOR
    if _PROCESSOR is None:
        from transformers import AutoProcessor, ProcessorMixin

        from .modeling import ShowoConfig

        class ShowoProcessor(ProcessorMixin):
            """Show-o's processor: the image transform and the text tokenizer (nothing else)."""

            attributes = ["image_processor", "tokenizer"]
            image_processor_class = "CLIPImageProcessor"
            tokenizer_class = "AutoTokenizer"

            def __init__(self, image_processor=None, tokenizer=None, **kwargs):
                super().__init__(image_processor, tokenizer, **kwargs)

        ShowoProcessor.__module__ = __name__
        globals()["ShowoProcessor"] = ShowoProcessor
        try:
            AutoProcessor.register(ShowoConfig, ShowoProcessor, exist_ok=True)
        except TypeError:  # older transformers without exist_ok
            AutoProcessor.register(ShowoConfig, ShowoProcessor)
        _PROCESSOR = ShowoProcessor
    return _PROCESSOR


_PROCESSOR: Any = None


def save_checkpoint(tmp: Path, model: Any, tokenizer: Any) -> None:
    """Write model, tokenizer and processor into ``tmp`` (inside an atomic directory)."""
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    processor_class()(image_processor(int(model.config.image_size)), tokenizer).save_pretrained(tmp)


def read_prefixed(path: str, prefix: str) -> dict[str, Any]:
    """The tensors of a local checkpoint folder whose names start with ``prefix`` (prefix removed),
    read lazily from its safetensors file(s); empty when the folder has none."""
    from safetensors import safe_open

    folder = Path(path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = sorted({folder / f for key, f in weight_map.items() if key.startswith(prefix)})
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        return {}
    out = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith(prefix):
                    out[key[len(prefix):]] = handle.get_tensor(key)
    return out
