"""``unigap build sft|dpo`` and ``unigap encode`` (registered into the main parser)."""

from __future__ import annotations

import argparse


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the data-builder subcommands to ``unigap``'s parser."""
