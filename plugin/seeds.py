"""The one seed scheme: every random draw of unigap is seeded from named parts, never from a batch or a rank.

:func:`derive` hashes a namespace and the parts that identify a draw (a run
seed, a prompt id, a candidate index, ...) into a 63-bit seed, so a draw does
not depend on the batch or the process that makes it, and two namespaces never
share seeds.  Self-play and replay draw candidate ``k`` of prompt ``id`` with
:func:`candidate_seed`; ``unigap generate`` draws image ``k`` of its ``i``-th
prompt with :func:`image_seed`.
"""

from __future__ import annotations

import hashlib

_MASK = (1 << 63) - 1


def derive(namespace: str, *parts: object) -> int:
    """A 63-bit seed from ``namespace`` and ``parts`` (their ``str``), stable across runs and machines."""
    text = "\0".join([namespace, *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & _MASK


def candidate_seed(run_seed: int, prompt_id: str, candidate: int) -> int:
    """Self-play / replay: candidate ``candidate`` of prompt ``prompt_id`` in a run seeded ``run_seed``."""
    return derive("unigap-selfplay", run_seed, prompt_id, candidate)


def image_seed(seed: int, prompt_index: int, image: int) -> int:
    """``unigap generate``: image ``image`` of the ``prompt_index``-th prompt given."""
    return derive("unigap-generate", seed, prompt_index, image)
