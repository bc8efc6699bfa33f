"""The CSV parser's verdict depends on where the plaintext is split (the client's chunk_size).

``CsvParser._text`` counts a pending line's characters *with* a trailing ``\\r`` whose
``\\n`` is in the next feed, while ``_lines`` measures a whole line after ``\\r\\n`` became
``\\n``. A row of exactly MAX_LINE characters ending in CRLF is accepted when ``\\r\\n``
arrive in one piece and refused when a chunk boundary falls between them. (Upload and
training use the same chunking, so the receipt still matches training; but the same bytes
get two verdicts, and the local pre-check with another block size disagrees with the
enclave.)
"""

from __future__ import annotations

import json

from cctrain.crypto.keys import PartyKeys
from cctrain.errors import ShardError
from cctrain.policy import parse_policy
from cctrain_enclave.csvstream import MAX_LINE, CsvParser
from tests.consortium import PROVIDERS, RECIPIENT, policy_document


def _schema():
    keys = {p: PartyKeys.generate(p) for p in (*PROVIDERS, RECIPIENT)}
    return parse_policy(json.dumps(policy_document(keys)).encode(), "json").data


def _verdict(data: bytes, cut: int | None) -> str:
    p = CsvParser(_schema())
    try:
        if cut is None:
            p.feed(data)
        else:
            p.feed(data[:cut])
            p.feed(data[cut:])
        return f"{p.finish().rows} rows"
    except ShardError as exc:
        return f"refused: {exc}"


def test_a_crlf_row_of_max_line_characters_gets_one_verdict() -> None:
    head = b"a,b,c,d,label\n"
    row = b"1,1,1,1," + b" " * (MAX_LINE - 9) + b"1"
    assert len(row) == MAX_LINE
    data = head + row + b"\r\n"
    whole = _verdict(data, None)
    split = _verdict(data, len(head) + len(row) + 1)  # between \r and \n
    assert whole == split, (whole, split)
