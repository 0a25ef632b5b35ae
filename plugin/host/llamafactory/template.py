"""``llamafactory.data.template``: one template per model family, built from the family's chat format.

Generated images travel from the plugin to here as a marker in the message
text; :class:`UnifiedTemplate` writes them into the ids the way the family lays
them out (:meth:`~unigap.models.base.UnifiedAdapter.gen_image_ids`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from llamafactory.data.data_utils import Role
from llamafactory.data.formatter import EmptyFormatter, StringFormatter
from llamafactory.data.template import Template

from ...models import adapter_classes
from .common import GEN_MARKER, GEN_PREFIX, plugin_name


@dataclass
class UnifiedTemplate(Template):
    """A family's chat format, with generated images written as code ids."""

    #: system prompt for rows that answer in text (image generation rows use none)
    understanding_system: str = ""
    #: what a text answer starts with (the family's chat format says)
    text_answer_prefix: str = ""
    #: the user formatter of rows that generate an image, when the family lays them out differently
    generation_user: Any = None

    def fix_special_tokens(self, tokenizer) -> None:
        super().fix_special_tokens(tokenizer)
        self.mm_plugin.bind(tokenizer)

    def _encode(self, tokenizer, messages, system, tools):
        assistant = Role.ASSISTANT.value
        generates = any(m["role"] == assistant and GEN_MARKER.search(m["content"]) for m in messages)
        if not system and not generates:
            system = self.understanding_system
        if generates and self.generation_user is not None:
            clone = self.__dict__.get("_generation_clone")
            if clone is None:
                clone = copy.copy(self)
                clone.format_user, clone.generation_user = self.generation_user, None
                self.__dict__["_generation_clone"] = clone
            return clone._encode(tokenizer, messages, system, tools)
        if self.text_answer_prefix:
            messages = [
                dict(m, content=self.text_answer_prefix + m["content"])
                if m["role"] == assistant and not GEN_MARKER.match(m["content"])
                else m
                for m in messages
            ]
        return super()._encode(tokenizer, messages, system, tools)

    def _convert_elements_to_ids(self, tokenizer, elements) -> list[int]:
        plugin = self.mm_plugin
        ids: list[int] = []
        for elem in elements:
            if not (isinstance(elem, str) and GEN_PREFIX in elem):
                ids += super()._convert_elements_to_ids(tokenizer, [elem])
                continue
            pos = 0
            for match in GEN_MARKER.finditer(elem):
                ids += super()._convert_elements_to_ids(tokenizer, [elem[pos : match.start()]])
                codes = [int(c) for c in match.group(1).split(",") if c]
                ids += plugin.family.gen_image_ids(plugin.spec, codes)
                pos = match.end()
            ids += super()._convert_elements_to_ids(tokenizer, [elem[pos:]])
        return ids


def _slots(fmt: str) -> str:
    return fmt.replace("{content}", "{{content}}")


def on_loaded(mod) -> None:
    for family in adapter_classes():
        if family.template in mod.TEMPLATES:
            continue
        chat = family.chat_format()
        mod.register_template(
            name=family.template,
            format_user=StringFormatter(slots=[_slots(chat.user)]),
            format_assistant=StringFormatter(slots=[_slots(chat.assistant)] + ([{"eos_token"}] if chat.eos_suffix else [])),
            format_system=StringFormatter(slots=[_slots(chat.system)]),
            format_prefix=EmptyFormatter(slots=[{"bos_token"}] if chat.bos_prefix else []),
            mm_plugin=mod.get_mm_plugin(plugin_name(family.family), image_token=chat.image_placeholder,
                                        adapter_family=family.family),
            template_class=UnifiedTemplate,
        )
        template = mod.TEMPLATES[family.template]
        template.understanding_system = chat.understanding_system
        template.text_answer_prefix = chat.text_answer_prefix
        if chat.generation_user is not None:
            template.generation_user = StringFormatter(slots=[_slots(chat.generation_user)])
