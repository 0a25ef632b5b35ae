"""``llamafactory.data.mm_plugin``: one ``unigap_<family>`` multimodal plugin per model family.

An ``<image>`` in a user turn is an image to *understand* (expanded to the
family's vision placeholders; its pixels go to the vision tower); an
``<image>`` in an assistant turn is an image to *generate*: its exact codes are
read from the PNG's ``.codes.npy`` sidecar and written into the token stream
the way the family lays them out.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

from llamafactory.data.data_utils import Role
from llamafactory.data.mm_plugin import BasePlugin
from llamafactory.extras.constants import IMAGE_PLACEHOLDER

from ...codes import GenImageError, load_gen_target
from ...models import adapter_class_for, adapter_classes, family_named, supported_types
from .common import HostDataError, PairImages, brief, count_images, gen_marker, plugin_name


@dataclass
class UnifiedImagePlugin(BasePlugin):
    """Images to understand (user turns) and images to generate (assistant turns), for one family."""

    adapter_family: str = ""
    spec: Any = field(default=None, repr=False)

    @property
    def family(self):
        return family_named(self.adapter_family)

    # -- binding to a checkpoint (done by the template when the tokenizer is fixed)
    def bind(self, tokenizer) -> None:
        from transformers import GenerationConfig

        path = tokenizer.name_or_path
        family = self.family
        config = family.load_config(path)
        cls = adapter_class_for(config)
        if cls is not family:
            raise HostDataError(
                f"the '{family.template}' template is unigap's template for unified {family.family} models, "
                f"but {path} is a '{getattr(config, 'model_type', '?')}' model (unigap supports: "
                f"{', '.join(supported_types())}). Use a template that matches the model."
            )
        try:
            generation_config = GenerationConfig.from_pretrained(path)
        except OSError:
            generation_config = None
        self.spec = family.read_spec(config, tokenizer, generation_config)

    def require_spec(self):
        if self.spec is None:
            raise RuntimeError(f"the '{self.family.template}' template was used before a tokenizer was bound to it")
        return self.spec

    # -- messages -> strings (before tokenization)
    def process_messages(self, messages, images, videos, audios, processor):
        self._validate_input(processor, images, videos, audios)
        spec, family = self.require_spec(), self.family
        if isinstance(images, PairImages):
            images = images.for_messages(messages)
        wanted = count_images(messages)
        if wanted != len(images):
            raise HostDataError(f"{len(images)} images for {wanted} {IMAGE_PLACEHOLDER} placeholders in {brief(messages)}")
        prompt = next((m["content"] for m in messages if m["role"] == Role.USER.value), "")
        und_text = family.und_image_text(spec)
        pending = iter(images)
        out = deepcopy(messages)
        for message in out:
            pieces = message["content"].split(IMAGE_PLACEHOLDER)
            text = [pieces[0]]
            for piece in pieces[1:]:
                image = next(pending)
                if message["role"] == Role.ASSISTANT.value:
                    try:
                        text.append(gen_marker(load_gen_target(image, spec)))
                    except GenImageError as err:
                        raise GenImageError(f"generation row with prompt {prompt[:80]!r}: {err}") from None
                else:
                    text.append(und_text)
                text.append(piece)
            message["content"] = "".join(text)
        return out

    # -- runs of image tokens in a tokenized row
    def image_runs(self, ids) -> list[tuple[str, int, int]]:
        """(kind, start, length) of each understanding ('und') / generated ('gen') image."""
        return self.family.image_runs(self.require_spec(), ids)

    def check_row(self, ids, tokenizer, cutoff_len: int) -> None:
        """Fail if ``cutoff_len`` cut an image of this row (the model would learn a broken image)."""
        spec, family = self.require_spec(), self.family
        runs = family.image_runs(spec, ids)
        for kind, start, length in runs:
            full = family.expected_run_length(spec, kind)
            if length != full:
                codes = {i for k, s, n in runs if k == "gen" for i in range(s, s + n)}
                text = [t for i, t in enumerate(ids[:80]) if i not in codes]
                head = tokenizer.decode(text, skip_special_tokens=True)
                raise HostDataError(
                    f"cutoff_len={cutoff_len} cut a{' generated' if kind == 'gen' else 'n input'} image of the "
                    f"row starting {head.strip()[:80]!r} to {length} of {full} tokens; raise cutoff_len to at "
                    f"least {start + full + 3}"
                )

    # -- batch -> model inputs (in the collator)
    def get_mm_inputs(self, images, videos, audios, imglens, vidlens, audlens, batch_ids, processor):
        self._validate_input(processor, images, videos, audios)
        und, start = [], 0
        for count, ids in zip(imglens, batch_ids):
            sample = images[start : start + count]
            start += count
            kinds = [kind for kind, _, _ in self.image_runs(ids)]
            if len(kinds) > len(sample):
                raise HostDataError(f"a row has {len(kinds)} image token runs but only {len(sample)} images")
            und += [image for image, kind in zip(sample, kinds) if kind == "und"]
        return self._get_mm_inputs(und, videos, audios, processor)


def on_loaded(mod) -> None:
    for family in adapter_classes():
        name = plugin_name(family.family)
        if name not in mod.PLUGINS:
            mod.register_mm_plugin(name, UnifiedImagePlugin)
