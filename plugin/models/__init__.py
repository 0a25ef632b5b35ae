"""Model families: one folder (sub-package) per family, found here.

Each sub-package of ``unigap.models`` (one folder per family) exports one concrete
:class:`~unigap.models.base.UnifiedAdapter` subclass; dropping a new folder
here is all it takes to add a family.  Families are imported lazily, the first
time one is looked up.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path
from typing import Any

from .base import ChatFormat, FamilyError, ModelSpec, SamplingParams, TargetNLL, UnifiedAdapter

__all__ = [
    "ChatFormat",
    "FamilyError",
    "ModelSpec",
    "SamplingParams",
    "TargetNLL",
    "UnifiedAdapter",
    "adapter_class_for",
    "adapter_classes",
    "family_for_checkpoint",
    "family_named",
    "supported_types",
    "sampling_keys",
]

_CLASSES: list[type[UnifiedAdapter]] | None = None


def adapter_classes() -> list[type[UnifiedAdapter]]:
    """Every registered family, in folder-name order."""
    global _CLASSES
    if _CLASSES is None:
        found: list[type[UnifiedAdapter]] = []
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if not info.ispkg or info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            for value in vars(module).values():
                if (
                    isinstance(value, type)
                    and issubclass(value, UnifiedAdapter)
                    and value is not UnifiedAdapter
                    and not getattr(value, "__abstractmethods__", None)
                    and value not in found
                ):
                    found.append(value)
        _CLASSES = found
    return _CLASSES


def supported_types() -> list[str]:
    return [cls.family for cls in adapter_classes()]


def family_named(name: str) -> type[UnifiedAdapter]:
    for cls in adapter_classes():
        if cls.family == name:
            return cls
    raise FamilyError(f"no model family {name!r} (unigap knows: {', '.join(supported_types())})")


def adapter_class_for(config: Any) -> type[UnifiedAdapter] | None:
    """The family that handles a checkpoint with ``config`` (a transformers config or a config.json dict)."""
    if config is None:
        return None
    for cls in adapter_classes():
        if cls.matches(config):
            return cls
    return None


def family_for_checkpoint(path: str) -> type[UnifiedAdapter]:
    """The family of the checkpoint at ``path`` (a local folder or a hub id), or a clear error."""
    local = Path(path) / "config.json"
    config: Any = None
    if local.is_file():
        try:
            config = json.loads(local.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise FamilyError(f"{local} is not readable JSON ({err})") from None
        if not isinstance(config, dict):
            raise FamilyError(f"{local} does not hold a JSON object")
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
    cls = adapter_class_for(config)
    if cls is None:
        model_type = config.get("model_type", "?") if isinstance(config, dict) else getattr(config, "model_type", "?")
        raise FamilyError(
            f"{path} is a '{model_type}' model without an image-generation branch unigap knows "
            f"(supported: {', '.join(supported_types())})"
        )
    return cls


def sampling_keys(selfplay_only: bool = False) -> dict[str, tuple[Any, str]]:
    """Every family's generation keys: name -> (a default, help) (the first family's default wins)."""
    out: dict[str, tuple[Any, str]] = {}
    for cls in adapter_classes():
        helps = cls.sampling.field_help()
        for key, value in cls.sampling.defaults(selfplay_only).items():
            out.setdefault(key, (value, helps.get(key, "")))
    return out
