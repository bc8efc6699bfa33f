"""The signed upload trailer (ShardHeader version 2), against a real TLS server on loopback.

The party's commitment comes after the last chunk, signed over the header's SHA-256, the
plaintext size, the chunk count and the salted commitment. Each fault below is refused with
its own message, and the enclave keeps nothing of the upload; a correct upload's receipt
carries a commitment that opens with the data key and is not the plain SHA-256.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import grpc
import pytest

from cctrain.client import DataOwner, SimulatedEvidenceWarning
from cctrain.protocol import commitment_key, opens_commitment, sha256, shard_commitment
from cctrain.v1 import enclave_pb2 as pb
from tests.consortium import Consortium
from tests.ingest.conftest import write_shard
from tests.ingest.test_bad_input import (
    assert_nothing_kept,
    assert_still_serving,
    build_upload,
    expect_rejection,
    send,
)

BAD = grpc.StatusCode.INVALID_ARGUMENT
UNSIGNED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture
def shard_bytes(tmp_path: Path) -> bytes:
    return write_shard(tmp_path / "shard.npz", rows=1000).read_bytes()  # several 4 KiB chunks


def test_a_correct_upload_with_its_trailer_is_accepted(
    owner: DataOwner, enclave: Any, shard_bytes: bytes
) -> None:
    header, messages = build_upload(owner, shard_bytes)
    assert messages[-1].WhichOneof("kind") == "trailer"
    responses = send(owner, [header, *messages])
    assert responses[-1].WhichOneof("kind") == "receipt"
    body = pb.ReceiptBody.FromString(responses[-1].receipt.body)
    assert body.commitment == messages[-1].trailer.commitment
    assert body.commitment != hashlib.sha256(shard_bytes).digest()
    entry = enclave[1].state.view.shard("hospital-a", "s1")
    assert entry is not None and entry.commitment == body.commitment


@pytest.mark.parametrize(
    "field", ["header_sha256", "plaintext_size", "chunk_count", "commitment", "signature"]
)
def test_a_trailer_field_changed_after_signing(
    owner: DataOwner, enclave: Any, shard_bytes: bytes, field: str
) -> None:
    header, messages = build_upload(owner, shard_bytes)
    t = messages[-1].trailer
    value = getattr(t, field)
    if isinstance(value, bytes):
        setattr(t, field, bytes([value[0] ^ 1]) + value[1:])
    else:
        setattr(t, field, value + 1)
    expect_rejection(owner, [header, *messages], UNSIGNED, "upload trailer is not signed")
    assert_nothing_kept(enclave[1])


@pytest.mark.parametrize("field", ["header_sha256", "plaintext_size", "chunk_count"])
def test_a_trailer_signed_for_another_upload(
    owner: DataOwner, enclave: Any, shard_bytes: bytes, field: str
) -> None:
    """Signed by the party, but over another header, size or chunk count."""
    other: Any = {"header_sha256": sha256(b"another header")}.get(field)
    if other is None:
        n = -(-len(shard_bytes) // 4096)
        other = len(shard_bytes) + 1 if field == "plaintext_size" else n + 1
    header, messages = build_upload(owner, shard_bytes, trailer_fields={field: other})
    expect_rejection(owner, [header, *messages], BAD, "upload trailer is for another upload")
    assert_nothing_kept(enclave[1])


def test_a_trailer_committing_to_other_bytes(
    owner: DataOwner, enclave: Any, shard_bytes: bytes, tmp_path: Path
) -> None:
    """Well signed, but its commitment is not that of what the enclave decrypted."""
    wrong = shard_commitment(b"\x00" * 32, hashlib.sha256(shard_bytes).digest())
    header, messages = build_upload(owner, shard_bytes, trailer_fields={"commitment": wrong})
    expect_rejection(
        owner, [header, *messages], BAD, "does not match the plaintext commitment in the trailer"
    )
    assert_nothing_kept(enclave[1])
    assert_still_serving(owner, tmp_path)


def test_a_trailer_signed_by_another_party(
    owner: DataOwner, enclave: Any, shard_bytes: bytes, consortium: Consortium
) -> None:
    header, messages = build_upload(
        owner, shard_bytes, trailer_signer=consortium.keys["hospital-b"]
    )
    expect_rejection(
        owner, [header, *messages], UNSIGNED, "not signed by the policy key of party 'hospital-a'"
    )
    assert_nothing_kept(enclave[1])


def test_no_trailer(owner: DataOwner, enclave: Any, shard_bytes: bytes) -> None:
    header, chunks = build_upload(owner, shard_bytes, trailer=False)
    expect_rejection(owner, [header, *chunks], BAD, "stream ended without the upload trailer")
    assert_nothing_kept(enclave[1])


def test_a_trailer_before_the_last_chunk(
    owner: DataOwner, enclave: Any, shard_bytes: bytes
) -> None:
    header, messages = build_upload(owner, shard_bytes)
    *chunks, trailer = messages
    early = [*chunks[:-1], trailer, chunks[-1]]
    expect_rejection(owner, [header, *early], BAD, "upload trailer before the final chunk")
    assert_nothing_kept(enclave[1])


def test_two_trailers(owner: DataOwner, enclave: Any, shard_bytes: bytes) -> None:
    header, messages = build_upload(owner, shard_bytes)
    expect_rejection(owner, [header, *messages, messages[-1]], BAD, "a second trailer")
    assert_nothing_kept(enclave[1])


def test_a_chunk_after_the_trailer(owner: DataOwner, enclave: Any, shard_bytes: bytes) -> None:
    header, messages = build_upload(owner, shard_bytes)
    expect_rejection(
        owner, [header, *messages, messages[0]], BAD, "a chunk arrived after the upload trailer"
    )
    assert_nothing_kept(enclave[1])


def test_a_version_1_header_is_refused_by_name(
    owner: DataOwner, enclave: Any, shard_bytes: bytes
) -> None:
    def v1(h: pb.ShardHeader) -> None:
        h.version = 1

    # As an old client signs it: version 1, with its plaintext_sha256 (field 11).
    sha = hashlib.sha256(shard_bytes).digest()
    field_11 = bytes([11 << 3 | 2, 32]) + sha
    header, messages = build_upload(owner, shard_bytes, header_edit=v1, header_suffix=field_11)
    expect_rejection(owner, [header, *messages], BAD, "ShardHeader version 1 is not supported")
    assert_nothing_kept(enclave[1])
    header, messages = build_upload(
        owner, shard_bytes, header_edit=lambda h: setattr(h, "version", 3)
    )
    expect_rejection(owner, [header, *messages], BAD, "ShardHeader version 3 is not supported")
    assert_nothing_kept(enclave[1])


class _KeyKeeper(DataOwner):
    """A data owner that remembers its data keys (as a party that opens its commitments)."""

    keys_used: list[bytes]

    def _new_header(self, *args: Any, **kw: Any) -> tuple[bytes, bytes, bytes]:
        header, signature, key = super()._new_header(*args, **kw)
        self.keys_used.append(key)
        return header, signature, key


def test_the_published_commitment_opens_with_the_data_key_only(
    enclave: Any, consortium: Consortium, tmp_path: Path
) -> None:
    """The SDK's single-pass upload: its receipt's commitment is the salted one, which the
    party opens with its data key; the plain SHA-256 appears nowhere the enclave publishes
    (receipt, journal), and a duplicate is still found by the enclave's own tag."""
    shard = write_shard(tmp_path / "shard.npz", rows=3000)
    plain = hashlib.sha256(shard.read_bytes()).digest()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulatedEvidenceWarning)
        owner = _KeyKeeper(
            enclave[0],
            policy=consortium.signed,
            key=consortium.keys["hospital-a"],
            allow_simulated=True,
        )
    owner.keys_used = []
    try:
        receipt = owner.upload(shard, chunk_size=4096, state_dir=tmp_path / "owner")
        (key,) = owner.keys_used
        assert receipt.commitment == shard_commitment(key, plain)
        assert receipt.commitment != plain
        assert opens_commitment(receipt.commitment, commitment_key(key), plain)
        assert not opens_commitment(receipt.commitment, commitment_key(key), sha256(b"a guess"))
        assert not opens_commitment(receipt.commitment, commitment_key(bytes(32)), plain)
        assert plain not in receipt.body
        owner.verified_journal()
        journal = b"".join(r.raw for r in owner.journal_records)
        assert receipt.commitment in journal and plain not in journal
        # The same bytes under another shard id: still a duplicate to the enclave.
        from cctrain.errors import UploadRejectedError

        with pytest.raises(UploadRejectedError, match="same content"):
            owner.upload(shard, shard_id="again", chunk_size=4096, state_dir=tmp_path / "owner")
        assert_nothing_kept(enclave[1], shard="again")
    finally:
        owner.close()
