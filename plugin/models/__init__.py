"""Model-family adapters.

Each module in this package (other than ``base``) defines one adapter class
with a ``family`` name and a ``matches(config)`` class method; dropping a new
module here is all it takes to add a family.  Modules are imported lazily, the
first time an adapter is looked up.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from .base import ModelSpec, TargetNLL, UnifiedAdapter

__all__ = ["ModelSpec", "TargetNLL", "UnifiedAdapter", "adapter_classes", "adapter_class_for", "supported_types"]

_CLASSES: list[type] | None = None


def adapter_classes() -> list[type]:
    global _CLASSES
    if _CLASSES is None:
        found = []
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if info.name == "base" or info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            for value in vars(module).values():
                if (
                    isinstance(value, type)
                    and value.__module__ == module.__name__
                    and isinstance(getattr(value, "family", None), str)
                    and callable(getattr(value, "matches", None))
                ):
                    found.append(value)
        _CLASSES = found
    return _CLASSES


def supported_types() -> list[str]:
    return [cls.family for cls in adapter_classes()]


def adapter_class_for(config: Any) -> type | None:
    """The adapter class that handles a checkpoint with ``config``, or None."""
    for cls in adapter_classes():
        if cls.matches(config):
            return cls
    return None
