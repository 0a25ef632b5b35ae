"""Load a unified checkpoint (optionally with a LoRA adapter from ``llamafactory-cli train``)."""

from __future__ import annotations

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
    """The family's adapter (:class:`unigap.models.base.UnifiedAdapter`) around the loaded model.

    The family is read from the checkpoint's config; a LoRA adapter is merged
    into the weights in memory (generation runs at full speed).
    """
    import torch

    from .models import family_for_checkpoint

    cls = family_for_checkpoint(model_name_or_path)
    device = device or default_device()
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    adapter = cls.load(model_name_or_path, dtype=torch_dtype, adapter_path=adapter_name_or_path)
    adapter.model.to(device).eval()
    return adapter
