"""``llamafactory.model.model_utils.visual`` and ``llamafactory.model.loader``: freeze groups.

Each family's :meth:`~unigap.models.base.UnifiedAdapter.freeze_patterns` become
the host's composite-model entry (``freeze_vision_tower``,
``freeze_multi_modal_projector``, ``freeze_language_model`` and LoRA targets);
the image tokenizer (``always_frozen``) is frozen after the host set up training.
"""

from __future__ import annotations

from ...models import adapter_class_for, adapter_classes
from .common import logger


def _on_visual(mod) -> None:
    for cls in adapter_classes():
        if cls.family in mod.COMPOSITE_MODELS:
            continue
        groups = cls.freeze_patterns()
        mod._register_composite_model(
            model_type=cls.family,
            projector_keys=groups["projector"],
            vision_model_keys=groups["vision"],
            language_model_keys=groups["language"],
            lora_conflict_keys=groups["always_frozen"],
        )


def _on_loader(mod) -> None:
    init_adapter = mod.init_adapter

    def _init_adapter(config, model, model_args, finetuning_args, is_trainable):
        model = init_adapter(config, model, model_args, finetuning_args, is_trainable)
        cls = adapter_class_for(config)
        if cls is not None and is_trainable:
            frozen = cls.freeze_patterns()["always_frozen"]
            count = 0
            for name, param in model.named_parameters():
                if any(key in name for key in frozen) and param.requires_grad:
                    param.requires_grad_(False)
                    count += param.numel()
            if count:
                logger().info_rank0(f"unigap: froze {count} parameters of the image tokenizer ({', '.join(frozen)})")
        return model

    mod.init_adapter = _init_adapter


def on_loaded(mod) -> None:
    if mod.__name__.endswith("visual"):
        _on_visual(mod)
    else:
        _on_loader(mod)
