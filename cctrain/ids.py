"""The identifiers that reach a file name, a log line or an error message: one validator each.

A party id comes from the policy (which every party signed); a shard id from a party's
request. Both become path components in the enclave's state directory and appear in its
log, so both are checked here, whole-string (``re.fullmatch``: a ``$`` anchor would also
accept a trailing newline), before anything uses them. Paths are built only from ids that
passed :func:`path_component`.
"""

from __future__ import annotations

import re

PARTY_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
SHARD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def is_party_id(value: object) -> bool:
    return isinstance(value, str) and PARTY_ID.fullmatch(value) is not None


def is_shard_id(value: object) -> bool:
    return isinstance(value, str) and SHARD_ID.fullmatch(value) is not None


def path_component(kind: str, value: str) -> str:
    """``value`` if it is a valid ``kind`` ("party" or "shard") id, else ValueError.

    A guard at the place paths are built: the RPC layer refuses bad ids with a clear
    message long before; reaching this with one is a bug, never a path."""
    ok = is_party_id(value) if kind == "party" else is_shard_id(value)
    if not ok:
        raise ValueError(f"not a valid {kind} id")
    return value
