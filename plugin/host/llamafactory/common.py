"""What several of this folder's files share: the log, the marker of a generated image, DPO image lists."""

from __future__ import annotations

import re
from typing import Any

from ...errors import UnigapError

SUPPORTED_HOST = ("0.9.5",)

#: A generated image inside a message, between the plugin and the template (never in user text).
GEN_PREFIX = "\x00unigap-gen:"
GEN_MARKER = re.compile(re.escape(GEN_PREFIX) + "([0-9,]*)\x00")


class HostDataError(UnigapError):
    """A training row or option that does not fit the model or the template (the message names it)."""


def gen_marker(codes) -> str:
    return GEN_PREFIX + ",".join(str(int(c)) for c in codes) + "\x00"


def plugin_name(family: str) -> str:
    return f"unigap_{family}"


def logger():
    from llamafactory.extras import logging as host_logging

    return host_logging.get_logger("llamafactory.unigap")


def count_images(messages) -> int:
    from llamafactory.extras.constants import IMAGE_PLACEHOLDER

    return sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)


def brief(messages) -> str:
    text = " | ".join(f"{m['role']}: {m['content'][:60]!r}" for m in messages)
    return text[:300]


class PairImages(list):
    """The ``images`` of one DPO row, plus which of them belong to each answer."""

    def __init__(self, images, by_message: dict[int, list]):
        super().__init__(images)
        self.by_message = by_message

    def for_messages(self, messages) -> list:
        return self.by_message.get(id(messages[-1]), list(self))


#: the training set's processor and data arguments, captured while the host tokenizes it (replay reuses them)
TRAIN_DATA: dict[str, Any] = {}
