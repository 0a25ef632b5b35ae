"""Load a unified checkpoint (optionally with a LoRA adapter from ``llamafactory-cli train``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_unified(
    model_name_or_path: str,
    adapter_name_or_path: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Any:
    """Return an adapter (e.g. :class:`unigap.models.janus.JanusAdapter`) around the loaded model.

    A LoRA adapter is merged into the weights in memory (generation runs at full speed).
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    from .models import adapter_class_for, supported_types

    config = AutoConfig.from_pretrained(model_name_or_path)
    cls = adapter_class_for(config)
    if cls is None:
        raise ValueError(
            f"{model_name_or_path} is a '{getattr(config, 'model_type', '?')}' model without an image-generation "
            f"branch unigap knows (supported: {', '.join(supported_types())})"
        )
    device = device or default_device()
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    model = AutoModelForImageTextToText.from_pretrained(model_name_or_path, dtype=torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    if adapter_name_or_path:
        model = _merge_adapter(model, adapter_name_or_path)
    model.to(device).eval()
    try:
        processor = AutoProcessor.from_pretrained(model_name_or_path)
        image_processor = processor.image_processor
        mean, std = getattr(image_processor, "image_mean", None), getattr(image_processor, "image_std", None)
    except (OSError, ValueError):
        mean = std = None
    return cls(model, tokenizer, image_mean=mean, image_std=std)


def _merge_adapter(model: Any, adapter_dir: str) -> Any:
    from peft import PeftModel

    config_file = Path(adapter_dir) / "adapter_config.json"
    if not config_file.is_file():
        raise ValueError(f"{adapter_dir} is not a LoRA adapter directory (no adapter_config.json)")
    try:
        peft_model = PeftModel.from_pretrained(model, adapter_dir)
    except (RuntimeError, ValueError, KeyError) as err:
        base = json.loads(config_file.read_text()).get("base_model_name_or_path")
        raise ValueError(
            f"the adapter in {adapter_dir} does not fit this model (it was trained on {base!r}): {str(err)[:300]}"
        ) from None
    return peft_model.merge_and_unload()
