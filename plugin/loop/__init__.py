"""``unigap loop``: the whole self-improvement loop as one resumable command, over several rounds.

``config`` (the YAML and the user's training YAML as a template), ``commands`` (the command lines
and launchers, a live line), ``journal`` (finished stages, the kill test hook), ``evaluate``
(held-out figures: own judge, oracle, independent judge), ``report`` (across rounds), ``run``
(the driver).  The loop orchestrates commands like a user would: training runs through the host's
unmodified ``llamafactory-cli`` in a subprocess, never imported here.
"""

from __future__ import annotations

from .config import LoopConfig, LoopConfigError, load_loop_config, round_train_config
from .run import run_loop

__all__ = ["LoopConfig", "LoopConfigError", "load_loop_config", "round_train_config", "run_loop"]
