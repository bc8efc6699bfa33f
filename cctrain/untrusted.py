"""Parsing bytes that came from someone else: errors a caller can catch, never a crash."""

from __future__ import annotations

import json
from typing import Any


def loads_json(data: str | bytes | bytearray) -> Any:
    """``json.loads``, with every way it fails on hostile input raised as ValueError.

    The standard decoder recurses per nesting level: a document nested some ten thousand
    levels deep (a few kilobytes) raises RecursionError, which no caller expects. Integers
    longer than Python's digit limit already raise ValueError.
    """
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
