"""One JSON-lines helper shared by every reader of user or run files: errors name ``file:line``."""

from __future__ import annotations

import json
from typing import Any


def parse_object(line: str, where: str, error: type[ValueError], what: str = "a JSON object") -> dict[str, Any]:
    """``line`` parsed as a JSON object, or ``error`` naming ``where`` (``file:line``)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise error(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(row, dict):
        raise error(f"{where}: each line must be {what}, got {type(row).__name__}")
    return row
