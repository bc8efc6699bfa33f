"""Every bad input of the ingest issue, against a real TLS server on a loopback port.

Each test asserts the specific refusal (status code and message), that the
enclave kept nothing of the rejected upload, and that it still serves.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from cctrain.client import DataOwner
from cctrain.crypto import hpke
from cctrain.crypto.keys import PartyKeys
from cctrain.crypto.stream import StreamSealer
from cctrain.protocol import (
    MD_PARTY,
    MD_TIME,
    sha256,
    shard_commitment,
    shard_key_info,
    sign_header,
    sign_trailer,
)
from cctrain.v1 import enclave_pb2 as pb
from tests.consortium import Consortium
from tests.ingest.conftest import write_shard

CHUNK = 4096


def build_upload(
    owner: DataOwner,
    data: bytes,
    *,
    shard_id: str = "s1",
    fmt: str = "npz",
    signer: PartyKeys | None = None,
    policy_digest: bytes | None = None,
    chunk_size: int = CHUNK,
    header_edit: Callable[[pb.ShardHeader], None] | None = None,
    header_suffix: bytes = b"",
    trailer: bool = True,
    trailer_signer: PartyKeys | None = None,
    trailer_fields: dict[str, Any] | None = None,
) -> tuple[pb.UploadRequest, list[pb.UploadRequest]]:
    """A correct header message and chunk messages, then the signed trailer (the last
    message, unless ``trailer`` is False), with optional deliberate faults:
    ``trailer_fields`` replaces fields before the trailer is signed."""
    digest = policy_digest or owner.policy.digest
    party = owner.keys.party_id
    key = os.urandom(32)
    header = pb.ShardHeader(
        version=2,
        policy_digest=digest,
        party_id=party,
        shard_id=shard_id,
        format=fmt,
        encapsulated_key=hpke.seal(
            _x25519(owner.enclave.hpke_public_key),
            key,
            info=shard_key_info(digest, party, shard_id),
        ),
        nonce_prefix=os.urandom(7),
        chunk_size=chunk_size,
        plaintext_size=len(data),
        chunk_count=max(1, -(-len(data) // chunk_size)),
        created_unix_ms=int(time.time() * 1000),
    )
    if header_edit:
        header_edit(header)
    hb = header.SerializeToString() + header_suffix  # suffix: raw (e.g. unknown) fields
    sig = sign_header((signer or owner.keys).signing_key, hb)
    sealer = StreamSealer(key, header.nonce_prefix, sha256(hb))
    chunks = []
    n = header.chunk_count
    for i in range(n):
        block = data[i * chunk_size : (i + 1) * chunk_size]
        last = i == n - 1
        chunks.append(
            pb.UploadRequest(
                chunk=pb.Chunk(index=i, last=last, ciphertext=sealer.seal(i, block, last=last))
            )
        )
    if trailer:
        fields: dict[str, Any] = {
            "header_sha256": sha256(hb),
            "plaintext_size": len(data),
            "chunk_count": n,
            "commitment": shard_commitment(key, hashlib.sha256(data).digest()),
        }
        fields |= trailer_fields or {}
        signed = sign_trailer((trailer_signer or signer or owner.keys).signing_key, **fields)
        chunks.append(pb.UploadRequest(trailer=signed))
    return pb.UploadRequest(header=pb.UploadHeader(header=hb, signature=sig)), chunks


def _x25519(raw: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    return X25519PublicKey.from_public_bytes(raw)


def send(owner: DataOwner, messages: list[pb.UploadRequest]) -> list[pb.UploadResponse]:
    return list(owner.stub.Upload(iter(messages), metadata=owner.metadata("Upload", b"")))


def expect_rejection(
    owner: DataOwner, messages: list[pb.UploadRequest], code: grpc.StatusCode, text: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        send(owner, messages)
    assert info.value.code() == code, info.value.details()
    assert text in info.value.details()


def assert_nothing_kept(app: Any, party: str = "hospital-a", shard: str = "s1") -> None:
    assert not app.store.partial_dir(party, shard).exists()
    assert app.state.view.shard(party, shard) is None  # not journaled, so not accepted
    paths = app.state.paths
    accepted = {paths.shard_ciphertext(s.header_sha256).name for s in app.state.view.shards}
    assert {p.name for p in paths.shards.iterdir()} == accepted  # no ciphertext left behind
    leftovers = (
        [p for p in (app.store.uploads / party).rglob("*")]
        if (app.store.uploads / party).exists()
        else []
    )
    assert leftovers == []


def assert_still_serving(owner: DataOwner, tmp_path: Path) -> None:
    receipt = owner.upload(write_shard(tmp_path / "good.npz"), state_dir=tmp_path / "owner-state")
    assert receipt.rows == 200


@pytest.fixture
def shard_bytes(tmp_path: Path) -> bytes:
    return write_shard(tmp_path / "shard.npz", rows=1000).read_bytes()  # ~20 KiB: several chunks


def test_flipped_ciphertext_byte(
    owner: DataOwner, enclave: Any, shard_bytes: bytes, tmp_path: Path
) -> None:
    header, chunks = build_upload(owner, shard_bytes)
    ct = bytearray(chunks[2].chunk.ciphertext)
    ct[100] ^= 0x01
    chunks[2].chunk.ciphertext = bytes(ct)
    expect_rejection(
        owner, [header, *chunks], grpc.StatusCode.INVALID_ARGUMENT, "chunk 2 failed authentication"
    )
    assert_nothing_kept(enclave[1])
    assert_still_serving(owner, tmp_path)


def test_reordered_chunks(owner: DataOwner, enclave: Any, shard_bytes: bytes) -> None:
    header, chunks = build_upload(owner, shard_bytes)
    chunks[1], chunks[2] = chunks[2], chunks[1]
    expect_rejection(
        owner, [header, *chunks], grpc.StatusCode.INVALID_ARGUMENT, "got index 2, want 1"
    )
    assert_nothing_kept(enclave[1])


def test_duplicated_chunk(owner: DataOwner, enclave: Any, shard_bytes: bytes) -> None:
    header, chunks = build_upload(owner, shard_bytes)
    chunks.insert(2, chunks[1])
    expect_rejection(
        owner, [header, *chunks], grpc.StatusCode.INVALID_ARGUMENT, "got index 1, want 2"
    )
    assert_nothing_kept(enclave[1])


def test_dropped_chunk(owner: DataOwner, enclave: Any, shard_bytes: bytes) -> None:
    header, chunks = build_upload(owner, shard_bytes)
    del chunks[3]
    expect_rejection(
        owner, [header, *chunks], grpc.StatusCode.INVALID_ARGUMENT, "got index 4, want 3"
    )
    assert_nothing_kept(enclave[1])


def test_stream_ends_without_final_chunk(
    owner: DataOwner, enclave: Any, shard_bytes: bytes
) -> None:
    header, chunks = build_upload(owner, shard_bytes, trailer=False)
    expect_rejection(
        owner,
        [header, *chunks[:-1]],
        grpc.StatusCode.INVALID_ARGUMENT,
        "stream ended before the final chunk",
    )
    assert_nothing_kept(enclave[1])


def test_chunk_after_final(owner: DataOwner, enclave: Any, shard_bytes: bytes) -> None:
    header, chunks = build_upload(owner, shard_bytes, trailer=False)
    extra = pb.UploadRequest(chunk=pb.Chunk(index=len(chunks), last=False, ciphertext=b"\0" * 32))
    expect_rejection(
        owner, [header, *chunks, extra], grpc.StatusCode.INVALID_ARGUMENT, "after the final chunk"
    )
    assert_nothing_kept(enclave[1])


def test_last_flag_on_an_early_chunk(owner: DataOwner, enclave: Any, shard_bytes: bytes) -> None:
    """Truncation by marking an early chunk final: the flag must match the header's count."""
    header, chunks = build_upload(owner, shard_bytes)
    chunks[1].chunk.last = True
    expect_rejection(
        owner, [header, *chunks[:2]], grpc.StatusCode.INVALID_ARGUMENT, "last flag is True"
    )
    assert_nothing_kept(enclave[1])


def test_header_signed_by_key_not_in_policy(
    owner: DataOwner, enclave: Any, shard_bytes: bytes
) -> None:
    outsider = PartyKeys.generate("hospital-a")  # same name, different key
    header, chunks = build_upload(owner, shard_bytes, signer=outsider)
    expect_rejection(
        owner, [header, *chunks], grpc.StatusCode.UNAUTHENTICATED, "not signed by the policy key"
    )
    assert_nothing_kept(enclave[1])


def test_header_for_another_policy_digest(
    owner: DataOwner, enclave: Any, shard_bytes: bytes
) -> None:
    header, chunks = build_upload(
        owner, shard_bytes, policy_digest=hashlib.sha256(b"other policy").digest()
    )
    expect_rejection(owner, [header, *chunks], grpc.StatusCode.FAILED_PRECONDITION, "is for policy")
    assert_nothing_kept(enclave[1])


def test_header_naming_another_party(owner: DataOwner, enclave: Any, shard_bytes: bytes) -> None:
    header, chunks = build_upload(
        owner, shard_bytes, header_edit=lambda h: setattr(h, "party_id", "hospital-b")
    )
    expect_rejection(
        owner, [header, *chunks], grpc.StatusCode.PERMISSION_DENIED, "names party 'hospital-b'"
    )
    assert_nothing_kept(enclave[1])
    assert_nothing_kept(enclave[1], party="hospital-b")


@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        ({"features": np.zeros((50, 5), np.float32)}, "features.shape"),
        ({"labels": np.full(200, 7, np.int64)}, "labels: values in [7, 7]"),
        ({"features": np.full((200, 4), np.nan, np.float32)}, "NaN"),
        ({"features": np.zeros((200, 4), np.float64)}, "features.dtype"),
    ],
    ids=["shape", "label-range", "nan", "dtype"],
)
def test_shard_violating_schema(
    owner: DataOwner, enclave: Any, tmp_path: Path, overrides: dict[str, Any], text: str
) -> None:
    data = write_shard(tmp_path / "bad.npz", **overrides).read_bytes()
    header, chunks = build_upload(owner, data)
    expect_rejection(owner, [header, *chunks], grpc.StatusCode.INVALID_ARGUMENT, text)
    assert_nothing_kept(enclave[1])


def test_pickled_npz_refused(owner: DataOwner, enclave: Any, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    np.savez(
        tmp_path / "evil.npz",
        features=np.array([_Evil(str(marker))], dtype=object),
        labels=np.zeros(1),
    )
    data = (tmp_path / "evil.npz").read_bytes()
    header, chunks = build_upload(owner, data)
    expect_rejection(owner, [header, *chunks], grpc.StatusCode.INVALID_ARGUMENT, "pickle")
    assert not marker.exists()
    assert_nothing_kept(enclave[1])


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


def test_csv_shard_violating_schema(owner: DataOwner, enclave: Any) -> None:
    data = b"a,b,c,d,label\n1,2,3,4,0\n1,2,3,x,1\n"
    header, chunks = build_upload(owner, data, fmt="csv")
    expect_rejection(owner, [header, *chunks], grpc.StatusCode.INVALID_ARGUMENT, "csv line 3")
    assert_nothing_kept(enclave[1])


def test_oversized_shard(owner: DataOwner, enclave: Any, consortium: Consortium) -> None:
    limit = consortium.signed.policy.data["max_bytes"]
    header2, chunks = build_upload(
        owner,
        b"x" * 10,
        header_edit=lambda h: (
            setattr(h, "plaintext_size", limit + 1),
            setattr(h, "chunk_count", -(-(limit + 1) // CHUNK)),
        ),
    )
    expect_rejection(
        owner, [header2, *chunks[:1]], grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds data.max_bytes"
    )
    assert_nothing_kept(enclave[1])


def unknown_field(number: int, size: int) -> bytes:
    """A length-delimited protobuf field the schema does not know: parsers keep it."""
    from google.protobuf.internal.encoder import _VarintBytes

    return _VarintBytes(number << 3 | 2) + _VarintBytes(size) + b"\x00" * size


def test_oversized_signed_header(
    owner: DataOwner, enclave: Any, shard_bytes: bytes, tmp_path: Path
) -> None:
    """A provider signs a header padded with 3 MiB of unknown fields: journaled as signed, it
    would be an entry too long to serve or read back, and the enclave would not start again.
    It is refused before anything is kept."""
    header, chunks = build_upload(owner, shard_bytes, header_suffix=unknown_field(999, 3 << 20))
    expect_rejection(owner, [header, *chunks], grpc.StatusCode.INVALID_ARGUMENT, "more than 2048")
    assert_nothing_kept(enclave[1])
    # A few unknown bytes are within the bound: the header is journaled exactly as signed.
    header, chunks = build_upload(owner, shard_bytes, header_suffix=unknown_field(999, 16))
    responses = send(owner, [header, *chunks])
    assert responses[-1].WhichOneof("kind") == "receipt"
    assert enclave[1].state.view.shard("hospital-a", "s1").header_raw == header.header.header
    assert_still_serving(owner, tmp_path)


def test_malformed_header_bytes(owner: DataOwner, enclave: Any) -> None:
    junk = b"\xff\xff\xff\xff not a protobuf"
    msg = pb.UploadRequest(
        header=pb.UploadHeader(header=junk, signature=sign_header(owner.keys.signing_key, junk))
    )
    expect_rejection(owner, [msg], grpc.StatusCode.INVALID_ARGUMENT, "malformed ShardHeader")
    assert_nothing_kept(enclave[1])


def test_missing_header_fields(owner: DataOwner, enclave: Any, shard_bytes: bytes) -> None:
    header, _ = build_upload(owner, shard_bytes)
    fields = pb.ShardHeader()
    fields.ParseFromString(header.header.header)
    fields.ClearField("nonce_prefix")
    hb = fields.SerializeToString()
    header = pb.UploadRequest(
        header=pb.UploadHeader(header=hb, signature=sign_header(owner.keys.signing_key, hb))
    )
    expect_rejection(
        owner, [header], grpc.StatusCode.INVALID_ARGUMENT, "nonce_prefix must be 7 bytes"
    )
    no_sig = pb.UploadRequest(header=pb.UploadHeader(header=header.header.header))
    expect_rejection(
        owner, [no_sig], grpc.StatusCode.INVALID_ARGUMENT, "header and signature are required"
    )
    assert_nothing_kept(enclave[1])


def test_stream_starting_with_a_chunk(owner: DataOwner, enclave: Any, shard_bytes: bytes) -> None:
    _, chunks = build_upload(owner, shard_bytes)
    expect_rejection(
        owner, chunks, grpc.StatusCode.INVALID_ARGUMENT, "first upload message must be the header"
    )
    empty = pb.UploadRequest()
    header, chunks = build_upload(owner, shard_bytes)
    expect_rejection(owner, [header, empty], grpc.StatusCode.INVALID_ARGUMENT, "expected a chunk")
    assert_nothing_kept(enclave[1])


def _raw_unary(owner: DataOwner, method: str, body: bytes, metadata: Any) -> bytes:
    call = owner._channel.unary_unary(f"/cctrain.v1.Enclave/{method}")  # raw bytes in and out
    return call(body, metadata=metadata, timeout=10)  # type: ignore[no-any-return]


def test_malformed_unary_request(owner: DataOwner) -> None:
    junk = b"\x0a\xff\xff\xff\xff"  # a length-delimited field that runs past the end
    with pytest.raises(grpc.RpcError) as info:
        _raw_unary(owner, "UploadStatus", junk, owner.metadata("UploadStatus", junk))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request" in info.value.details()


def test_unauthenticated_request(owner: DataOwner) -> None:
    body = pb.ListReceiptsRequest().SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        _raw_unary(owner, "ListReceipts", body, None)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "missing or malformed authentication" in info.value.details()


def test_request_by_non_party(owner: DataOwner) -> None:
    body = pb.ListReceiptsRequest().SerializeToString()
    md = dict(owner.metadata("ListReceipts", body))
    md[MD_PARTY] = "mallory"
    with pytest.raises(grpc.RpcError) as info:
        _raw_unary(owner, "ListReceipts", body, list(md.items()))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "'mallory' is not in the policy" in info.value.details()


def test_replayed_request(owner: DataOwner) -> None:
    body = pb.ListReceiptsRequest().SerializeToString()
    md = owner.metadata("ListReceipts", body)
    _raw_unary(owner, "ListReceipts", body, md)
    with pytest.raises(grpc.RpcError) as info:
        _raw_unary(owner, "ListReceipts", body, md)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "replayed" in info.value.details()


def test_stale_request(owner: DataOwner) -> None:
    body = pb.ListReceiptsRequest().SerializeToString()
    md = dict(owner.metadata("ListReceipts", body))
    md[MD_TIME] = str(int(time.time() * 1000) - 10 * 60_000)
    with pytest.raises(grpc.RpcError) as info:
        _raw_unary(owner, "ListReceipts", body, list(md.items()))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "stale" in info.value.details()


def test_signature_over_other_request_body(owner: DataOwner) -> None:
    signed_for = pb.UploadStatusRequest(shard_id="a").SerializeToString()
    sent = pb.UploadStatusRequest(shard_id="b").SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        _raw_unary(owner, "UploadStatus", sent, owner.metadata("UploadStatus", signed_for))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not the one its signature covers" in info.value.details()


def test_health_and_reflection_need_no_auth(enclave: Any, owner: DataOwner) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(owner._channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service="cctrain.v1.Enclave"), timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_npz_with_an_extra_member(owner: DataOwner, enclave: Any, tmp_path: Path) -> None:
    data = write_shard(tmp_path / "extra.npz", other=np.zeros(3)).read_bytes()
    header, chunks = build_upload(owner, data)
    expect_rejection(
        owner,
        [header, *chunks],
        grpc.StatusCode.INVALID_ARGUMENT,
        "exactly 'features' and 'labels'",
    )
    assert_nothing_kept(enclave[1])


def test_npz_whose_central_directory_disagrees(
    owner: DataOwner, enclave: Any, tmp_path: Path
) -> None:
    """What a zip reader would read (the central directory) must be what is validated."""
    data = bytearray(write_shard(tmp_path / "cd.npz").read_bytes())
    data[data.rfind(b"labels.npy")] ^= 0x01  # the directory now names another member
    header, chunks = build_upload(owner, bytes(data))
    expect_rejection(owner, [header, *chunks], grpc.StatusCode.INVALID_ARGUMENT, "'mabels.npy'")
    assert_nothing_kept(enclave[1])


def _npz_with_zip_flags(tmp_path: Path, *, method: int | None = None, flag: int = 0) -> bytes:
    """A valid stored NPZ whose local and central headers claim another compression method
    or set flag bits (zipfile refuses such members with NotImplementedError/RuntimeError)."""
    raw = bytearray(write_shard(tmp_path / "z.npz", rows=20).read_bytes())
    for sig, method_at, flags_at in ((b"PK\x03\x04", 8, 6), (b"PK\x01\x02", 10, 8)):
        i = raw.find(sig)
        while i >= 0:
            if method is not None:
                raw[i + method_at : i + method_at + 2] = method.to_bytes(2, "little")
            flags = int.from_bytes(raw[i + flags_at : i + flags_at + 2], "little") | flag
            raw[i + flags_at : i + flags_at + 2] = flags.to_bytes(2, "little")
            i = raw.find(sig, i + 4)
    return bytes(raw)


@pytest.mark.parametrize(
    ("what", "method", "flag"),
    [("an unknown compression method", 98, 0), ("the encrypted flag", None, 0x1)],
)
def test_npz_zipfile_cannot_read(
    owner: DataOwner, enclave: Any, tmp_path: Path, what: str, method: int | None, flag: int
) -> None:
    data = _npz_with_zip_flags(tmp_path, method=method, flag=flag)
    header, chunks = build_upload(owner, data)
    expect_rejection(owner, [header, *chunks], grpc.StatusCode.INVALID_ARGUMENT, "not a valid npz")
    assert_nothing_kept(enclave[1])
    assert_still_serving(owner, tmp_path)


def test_csv_label_beyond_64_bits(owner: DataOwner, enclave: Any, tmp_path: Path) -> None:
    data = b"a,b,c,d,label\n" + b"0,0,0,0,1\n" * 5 + b"0,0,0,0,99999999999999999999999\n"
    header, chunks = build_upload(owner, data, fmt="csv")
    expect_rejection(
        owner, [header, *chunks], grpc.StatusCode.INVALID_ARGUMENT, "outside the 64-bit integer"
    )
    assert_nothing_kept(enclave[1])
    assert_still_serving(owner, tmp_path)
