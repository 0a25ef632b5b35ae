"""Load a unified checkpoint (optionally with a LoRA adapter from ``llamafactory-cli train``)."""

from __future__ import annotations

from typing import Any

from .errors import UnigapError

#: the ``dtype`` choices of ``unigap generate`` / ``unigap encode`` and self-play's ``dtype`` key
DTYPES = ("auto", "float32", "bfloat16", "float16")
_HALF = ("bfloat16", "float16")


class LoadingError(UnigapError):
    """A dtype or device that cannot be used to load a checkpoint."""


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def checkpoint_dtype(model_name_or_path: str) -> str | None:
    """The dtype the checkpoint's weights are stored in (its config's ``dtype`` / ``torch_dtype``), if it says."""
    from .models import family_for_checkpoint

    config = family_for_checkpoint(model_name_or_path).load_config(model_name_or_path)
    for key in ("dtype", "torch_dtype"):
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if value is not None:
            return str(value).replace("torch.", "")
    return None


def resolve_dtype(dtype: str | None, device: str, model_name_or_path: str) -> str:
    """The one definition of ``dtype: auto`` (self-play, ``unigap generate``, ``unigap encode``).

    ``auto`` (or None): bfloat16 on CUDA; on CPU the checkpoint's own stored dtype when it is a
    16-bit type (a bf16 checkpoint is not upcast: half the memory, and faster), else float32.
    """
    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return "bfloat16"
        stored = checkpoint_dtype(model_name_or_path)
        return stored if stored in _HALF else "float32"
    if dtype not in DTYPES:
        raise LoadingError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return dtype


def load_unified(
    model_name_or_path: str,
    adapter_name_or_path: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Any:
    """The family's adapter (:class:`unigap.models.base.UnifiedAdapter`) around the loaded model.

    The family is read from the checkpoint's config; a LoRA adapter is merged
    into the weights in memory (generation runs at full speed).  ``dtype``: see
    :func:`resolve_dtype` (None = ``auto``).
    """
    import torch

    from .models import family_for_checkpoint

    cls = family_for_checkpoint(model_name_or_path)
    device = device or default_device()
    torch_dtype = getattr(torch, resolve_dtype(dtype, device, model_name_or_path))
    adapter = cls.load(model_name_or_path, dtype=torch_dtype, adapter_path=adapter_name_or_path)
    adapter.model.to(device).eval()
    return adapter


def load_image_tokenizer(model_name_or_path: str, device: str | None = None, dtype: str | None = None) -> Any:
    """Only what encoding images to codes needs (the family's image tokenizer and preprocessing).

    An object with ``encode_images``, ``decode_codes``, ``pixels``, ``spec``, ``image_mean`` and
    ``image_std`` (:meth:`unigap.models.base.UnifiedAdapter.load_image_tokenizer`); a LoRA adapter
    never changes the image tokenizer (it is always frozen), so none is taken here.
    """
    import torch

    from .models import family_for_checkpoint

    cls = family_for_checkpoint(model_name_or_path)
    device = device or default_device()
    torch_dtype = getattr(torch, resolve_dtype(dtype, device, model_name_or_path))
    adapter = cls.load_image_tokenizer(model_name_or_path, dtype=torch_dtype)
    adapter.model.to(device).eval()
    return adapter


def add_dtype_option(parser: Any) -> None:
    """``--dtype`` of ``unigap generate`` / ``unigap encode`` (an argparse parser)."""
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto",
        help="weights' dtype; auto (default): bfloat16 on cuda, on cpu the checkpoint's own dtype when it is "
             "16-bit (a bf16 checkpoint is not upcast), else float32",
    )
