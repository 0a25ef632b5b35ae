"""The one "did you mean" of unigap.

Every message about an unknown name builds its hint here, so that the wording
and the closeness rule are the same everywhere: a misspelt self-play key
(``unigap.selfplay.load_config``), a misspelt training YAML key caught by the
host's argument parser (``unigap.host.llamafactory.args``), an unknown
generation parameter of a model family (``unigap.models.base.SamplingParams``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

#: difflib's own default: a one-letter typo of a word of four letters or more passes
CUTOFF = 0.6


def closest(word: str, known: Iterable[str], cutoff: float = CUTOFF) -> str | None:
    """The known name most like ``word`` (difflib's similarity ratio, at least ``cutoff``), or None.

    Ties go to the alphabetically last name (difflib's order); the result does not
    depend on the order of ``known``.
    """
    candidates = sorted(set(known))
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=cutoff)
    return match[0] if match else None


def did_you_mean(word: str, known: Iterable[str], cutoff: float = CUTOFF) -> str:
    """``" (did you mean 'x'?)"`` for the closest known name, or ``""`` when none is close enough."""
    match = closest(word, known, cutoff)
    return f" (did you mean '{match}'?)" if match is not None else ""


def unknown_keys_message(
    unknown: Iterable[str], known: Iterable[str], where: str = "the arguments", cutoff: float = CUTOFF
) -> str:
    """One line naming every unknown key, each with its hint:
    ``unknown key(s) in WHERE: 'a' (did you mean 'b'?), 'c'`` (keys sorted)."""
    names = sorted(set(known))
    hints = [f"'{key}'{did_you_mean(key, names, cutoff)}" for key in sorted(set(unknown))]
    return f"unknown key(s) in {where}: {', '.join(hints)}"
