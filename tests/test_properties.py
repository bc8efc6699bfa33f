"""Property tests: bad input of any shape gets a cctrain error, never a crash."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cctrain.attestation.base import get_platform
from cctrain.attestation.pipeline import read_evidence_bytes
from cctrain.crypto.stream import StreamOpener, StreamSealer
from cctrain.errors import CctrainError, EvidenceParseError, PolicyError, ShardError
from cctrain.policy import parse_policy

KEY = bytes(range(32))
PREFIX = b"\x01" * 7
AD = b"header digest"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.binary(min_size=1, max_size=4096), st.integers(min_value=0, max_value=1000), st.booleans()
)
def test_stream_roundtrip(plaintext: bytes, index: int, last: bool) -> None:
    ct = StreamSealer(KEY, PREFIX, AD).seal(index, plaintext, last=last)
    assert StreamOpener(KEY, PREFIX, AD).open(index, ct, last=last) == plaintext


@given(st.binary(min_size=1, max_size=512), st.data())
def test_stream_any_bit_flip_or_position_change_fails(
    plaintext: bytes, data: st.DataObject
) -> None:
    ct = StreamSealer(KEY, PREFIX, AD).seal(3, plaintext, last=False)
    opener = StreamOpener(KEY, PREFIX, AD)
    bit = data.draw(st.integers(min_value=0, max_value=len(ct) * 8 - 1))
    flipped = bytearray(ct)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert opener.open(3, bytes(flipped), last=False) is None
    assert opener.open(4, ct, last=False) is None  # reordered
    assert opener.open(3, ct, last=True) is None  # truncation marker forged
    assert StreamOpener(KEY, PREFIX, b"other header").open(3, ct, last=False) is None


@settings(max_examples=200)
@given(json_values)
def test_policy_parser_only_raises_policy_error(doc: Any) -> None:
    try:
        parse_policy(json.dumps(doc).encode(), "json")
    except PolicyError:
        pass


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_policy_parser_on_raw_bytes(raw: bytes) -> None:
    for fmt in ("json", "toml"):
        try:
            parse_policy(raw, fmt)
        except PolicyError:
            pass


@settings(max_examples=300)
@given(
    st.binary(max_size=1400), st.sampled_from(["simulated", "sev-snp", "tdx", "sgx", "nvidia-gpu"])
)
def test_evidence_parsers_only_raise_parse_errors(raw: bytes, platform: str) -> None:
    try:
        get_platform(platform).parse(raw)
    except EvidenceParseError:
        pass


@settings(max_examples=200)
@given(st.binary(max_size=2000))
@example(b"\r\x00")  # once made the csv module raise its own error
def test_shard_parsers_only_raise_shard_errors(raw: bytes) -> None:
    from cctrain_enclave.shards import parse_shard

    schema = {
        "formats": ("npz", "csv"),
        "features": {"shape": (4,), "dtype": "float32"},
        "labels": {"num_classes": 2},
        "max_rows": 100,
        "min_rows": 1,
        "max_bytes": 1 << 20,
        "csv": {"header": True, "label_column": "label"},
    }
    for fmt in ("npz", "csv"):
        try:
            parse_shard(fmt, raw, schema)
        except ShardError:
            pass


@given(st.binary(max_size=64))
def test_read_evidence_bytes_never_raises(raw: bytes) -> None:
    read_evidence_bytes(raw)
    read_evidence_bytes(raw.hex().encode())


def test_errors_share_one_root() -> None:
    import cctrain.errors as errors

    for name in dir(errors):
        obj = getattr(errors, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, Exception)
            and obj.__module__ == errors.__name__
        ):
            assert issubclass(obj, CctrainError), name
    _ = os
