"""Link messages as input: :func:`unpack` refuses anything but what :func:`pack` makes with a
:class:`LinkError` (no other exception, no allocation a header asks for), and a sealed link
opens only the next frame of its own direction."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cctrain_enclave.cluster.links import LinkError, SecureLinks, derive_link_keys, pack, unpack


def _header(obj: object) -> bytes:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return struct.pack(">I", len(raw)) + raw


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_spec = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["float32", "int64", "uint8", "object", "<U3", "V8"]) | _json,
        "shape": st.lists(
            st.integers(-3, 5) | st.integers(2**31, 2**70) | st.floats() | st.text(max_size=3),
            max_size=4,
        )
        | _json,
    }
)


@settings(derandomize=True, max_examples=400, deadline=None)
@given(
    meta=_json,
    specs=st.lists(_spec, max_size=3) | _json,
    body=st.binary(max_size=64),
)
def test_unpack_refuses_any_header_with_a_link_error(
    meta: object, specs: object, body: bytes
) -> None:
    data = _header({"meta": meta, "arrays": specs}) + body
    _accepted_is_what_pack_makes(data)


def _accepted_is_what_pack_makes(data: bytes) -> None:
    try:
        meta, arrays = unpack(data)
    except LinkError:
        return
    # What it accepts has the arrays' bytes exactly, and packs again to what it reads.
    assert sum(a.nbytes for a in arrays) <= len(data)
    again = pack(meta, arrays)
    assert pack(*unpack(again)) == again


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.binary(max_size=96))
def test_unpack_refuses_any_bytes_with_a_link_error(data: bytes) -> None:
    _accepted_is_what_pack_makes(data)


@pytest.mark.parametrize(
    "specs",
    [
        [{"dtype": "float32", "shape": [2**62, 2**62]}],  # the product overflows int64
        [{"dtype": "float32", "shape": [10**30]}],  # not an int64 at all
        [{"dtype": "float32", "shape": [1e300]}],
        [{"dtype": "float32", "shape": "12"}],  # a string is not a shape
        [{"dtype": "float32", "shape": [True]}],
        [{"dtype": "float32", "shape": [1.5]}],
        [{"dtype": ["float32"], "shape": [1]}],
    ],
)
def test_unpack_refuses_a_shape_it_cannot_hold(specs: object) -> None:
    with pytest.raises(LinkError, match="malformed link message"):
        unpack(_header({"meta": {}, "arrays": specs}) + b"\0" * 8)


def test_unpack_refuses_json_nested_beyond_reason() -> None:
    with pytest.raises(LinkError, match="malformed link message"):
        unpack(struct.pack(">I", 100_000) + b"[" * 100_000)


def test_pack_unpack_round_trip() -> None:
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros(0, np.int64)]
    meta, got = unpack(pack({"op": "step", "step": 3}, arrays))
    assert meta == {"op": "step", "step": 3}
    assert [a.dtype for a in got] == [a.dtype for a in arrays]
    assert all(np.array_equal(a, b) for a, b in zip(got, arrays, strict=True))


class _Wire:
    """An in-memory network the test owns (the links under test are real)."""

    def __init__(self) -> None:
        self.frames: dict[tuple[int, int], list[bytes]] = {}
        self.me = 0

    def for_rank(self, rank: int) -> _Wire:
        view = _Wire()
        view.frames, view.me = self.frames, rank
        return view

    def send(self, peer: int, frame: bytes) -> None:
        self.frames.setdefault((self.me, peer), []).append(frame)

    def recv(self, peer: int, max_bytes: int) -> bytes:
        return self.frames[(peer, self.me)].pop(0)


def _pair() -> tuple[SecureLinks, SecureLinks, _Wire]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()

    def raw(k: X25519PrivateKey) -> bytes:
        return k.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    joint, digest = b"j" * 32, b"d" * 32
    ka = derive_link_keys(a, raw(b), me=0, peer=1, joint_nonce=joint, policy_digest=digest)
    kb = derive_link_keys(b, raw(a), me=1, peer=0, joint_nonce=joint, policy_digest=digest)
    wire = _Wire()
    return (
        SecureLinks(0, {1: ka}, wire.for_rank(0), context=digest + joint),
        SecureLinks(1, {0: kb}, wire.for_rank(1), context=digest + joint),
        wire,
    )


def test_a_frame_reflected_to_its_sender_fails_authentication() -> None:
    zero, one, wire = _pair()
    zero.send(1, "step", b"rows")
    wire.frames[(1, 0)] = [wire.frames[(0, 1)].pop()]  # the host sends it back to rank 0
    with pytest.raises(LinkError, match=r"message 0 \('step'\) from rank 1 failed authentication"):
        zero.recv(1, "step")


def test_a_frame_of_another_kind_fails_and_the_right_one_opens() -> None:
    zero, one, wire = _pair()
    zero.send(1, "rows", b"x")
    frame = wire.frames[(0, 1)][0]
    with pytest.raises(LinkError, match="failed authentication"):
        one.recv(0, "setup")
    wire.frames[(0, 1)].insert(0, frame)
    assert one.recv(0, "rows") == b"x"  # a failure does not advance the counter
