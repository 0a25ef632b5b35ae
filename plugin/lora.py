"""Merge a LoRA adapter written by the host's trainer into a loaded model (family-neutral, PEFT)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UnigapError


class AdapterError(UnigapError):
    """A LoRA adapter directory that is missing or does not fit the model."""


def merge_lora(model: Any, adapter_dir: str) -> Any:
    """``model`` with the LoRA adapter in ``adapter_dir`` merged into its weights."""
    from peft import PeftModel

    config_file = Path(adapter_dir) / "adapter_config.json"
    if not config_file.is_file():
        raise AdapterError(f"{adapter_dir} is not a LoRA adapter directory (no adapter_config.json)")
    try:
        peft_model = PeftModel.from_pretrained(model, adapter_dir)
    except (RuntimeError, ValueError, KeyError) as err:
        base = json.loads(config_file.read_text()).get("base_model_name_or_path")
        raise AdapterError(
            f"the adapter in {adapter_dir} does not fit this model (it was trained on {base!r}): {str(err)[:300]}"
        ) from None
    return peft_model.merge_and_unload()
