"""Campaign 1: fuzz every RPC of one real loopback enclave with hypothesis.

Every method of the Enclave service, and the health check, gets structure-aware requests
(protobuf messages whose fields come from strategies: random bytes and strings, huge and
negative integers, long strings, ids with ``../`` and NULs; signed upload headers and
approvals with random fields; real encrypted uploads with one thing wrong: chunks
reordered, dropped, duplicated or flipped, headers twice, streams cut short) and raw
random bytes as request bodies, sent

* signed by a real party key (so the handlers see them, not only the auth layer), and
* by a stranger, with random or one-field-malformed authentication metadata.

The campaign runs in two phases of one enclave: while it collects shards, and once a real
run awaits its release approval (so approvals and fetches reach the handlers' deeper
checks). For every input: the status is one the enclave answers on purpose (never
INTERNAL or UNKNOWN), no call blocks until its deadline, no error details name the state
directory or the temporary directory, and gRPC logs no unhandled exception. Afterwards
the enclave answers a health check and a party's status, a normal upload (and, at the
end, a normal approval and fetch) still works, and no identifier reached a file name.
"""

from __future__ import annotations

import io
import os
import re
import string
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, Phase, example, given, seed, settings
from hypothesis import strategies as st

from cctrain.client import DataOwner, EnclaveSession, Recipient
from cctrain.crypto.stream import StreamSealer
from cctrain.protocol import (
    APPROVAL_SIG_TAG,
    MD_NONCE,
    MD_PARTY,
    MD_SIG,
    MD_TIME,
    sha256,
    shard_commitment,
    sign_header,
    sign_trailer,
)
from cctrain.v1 import enclave_pb2 as pb
from tests.campaigns._common import DELIBERATE, FULL, Figures, LogWatch, report
from tests.consortium import PROVIDERS, RECIPIENT, Consortium, make_consortium, running_enclave
from tests.hostile.helpers import HEALTH_DEADLINE_S, health_check, tls_channel
from tests.state.conftest import session, upload, wait_phase

SERVICE = "/cctrain.v1.Enclave/"
HEALTH = "/grpc.health.v1.Health/Check"
ENCLAVE = pb.DESCRIPTOR.services_by_name["Enclave"]
METHODS = [m.name for m in ENCLAVE.methods]
REQUEST_TYPES = {m.name: m.input_type for m in ENCLAVE.methods}
SERVING = health_pb2.HealthCheckResponse.SERVING

#: How many inputs each phase sends: (collecting, awaiting approval).
SMALL = (170, 80)
FULL_SIZE = (3500, 1500)
SEED = 20_241_010
#: A watch of a run that has not ended is meant to stay open: it is closed by the client
#: after this long (DEADLINE_EXCEEDED on purpose), every other call must answer well before.
OPEN_WATCH_S = 0.4
#: Upload shard ids that complete real uploads may take: bounds what the campaign stores
#: (each provider may hold 8 shards), so the liveness checks can still upload.
PLAN_IDS = ("fz-0", "fz-1", "fz-2")
#: What the SDK and the journal accept as a shard id, exactly (no trailing newline).
SAFE_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
SAFE_NAME = set(string.ascii_letters + string.digits + "._-")

POLICY = {
    "training": {
        "model": {"name": "logreg"},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "epochs": 1,
        "batch_size": 16,
    },
    "release": {
        "recipients": [RECIPIENT],
        "metrics": ["train_loss"],
        "approvals_required_from": ["hospital-a"],
    },
}


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Auth:
    """How a call authenticates.

    ``party``: signed by that party over the exact body (``digest="exact"``) or over
    another body (``"other"``); ``stranger``: the metadata as given; ``mutated``: signed
    by ``party``, then one field replaced (``field``/``value``; value None drops it), or
    the same signed metadata sent twice (``field="replay"``)."""

    kind: str
    party: str = ""
    digest: str = "exact"
    metadata: tuple[tuple[str, Any], ...] = ()
    field: str = ""
    value: Any = None


@dataclass(frozen=True)
class Case:
    method: str  # an Enclave method name, or "Health"
    requests: tuple[bytes, ...]
    auth: Auth
    kind: str  # what sort of input: structured, raw, plan:<mutation>, upload-stream, ...

    def __repr__(self) -> str:  # for assertion messages (hypothesis prints the whole case)
        sizes = [len(r) for r in self.requests]
        return f"Case({self.method}, {self.kind}, auth={self.auth}, request sizes={sizes})"


@dataclass
class Context:
    """The live enclave the strategies build inputs for."""

    consortium: Consortium
    address: str
    state_dir: Path
    tmp: Path
    sessions: dict[str, EnclaveSession]
    stranger: grpc.Channel
    phase: str = "collecting"
    manifest_sha256: bytes = b""
    counts: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    inputs: int = 0
    refused_streams: int = 0

    @property
    def policy_digest(self) -> bytes:
        return self.consortium.signed.policy.digest


def _nasty_texts(ctx: Context) -> list[str]:
    return [
        "",
        ".",
        "..",
        "../",
        "../hospital-b/fz-0",
        "../../uploads/hospital-a/fz-0",
        "/etc/passwd",
        "a/b",
        "a\\b",
        "mine\x00",
        "\x00",
        "fz-0\n",
        "fz-0\r\n",
        "\n",
        " fz-0",
        "x" * 64,
        "x" * 65,
        "x" * 300,
        "hospital-a",
        "hospital-b",
        RECIPIENT,
        "fz-0",
        "é" * 20,
        "\u202efz",
        "%s%s%n",
        "{0}",
        str(ctx.state_dir),
        str(ctx.state_dir / "uploads"),
        str(ctx.tmp),
    ]


def texts(ctx: Context) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(_nasty_texts(ctx)),
        st.text(max_size=40),
        st.text(alphabet=string.ascii_letters + string.digits + "._-/\x00\n", max_size=70),
        st.text(min_size=500, max_size=3000),
    )


def blobs(max_size: int = 80) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=max_size),
        st.sampled_from([b"", b"\x00" * 32, b"\xff" * 64, bytes(range(256))]),
        st.binary(min_size=1000, max_size=6000),
    )


def uints(bits: int) -> st.SearchStrategy[int]:
    top = (1 << bits) - 1
    return st.one_of(
        st.integers(0, 20),
        st.sampled_from(
            [top, top - 1, 1 << (bits - 1), (1 << 31) - 1, 1 << 32 if bits > 32 else 7]
        ),
        st.integers(0, top),
    )


def sints(bits: int) -> st.SearchStrategy[int]:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return st.one_of(st.integers(-5, 20), st.sampled_from([lo, hi, -1]), st.integers(lo, hi))


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


@st.composite
def unknown_fields(draw: st.DrawFn) -> bytes:
    """Validly encoded fields the message does not define (protobuf keeps them), and
    negative numbers in fields that are unsigned (a ten-byte varint)."""
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        number = draw(st.integers(1, (1 << 29) - 1))
        if draw(st.booleans()):
            out += _varint(number << 3) + _varint(draw(sints(64)))
        else:
            value = draw(blobs(40))
            out += _varint(number << 3 | 2) + _varint(len(value)) + value
    return out


def field_values(ctx: Context, fd: Any, depth: int) -> st.SearchStrategy[Any]:
    t = fd.type
    if t == fd.TYPE_BYTES:
        return blobs()
    if t == fd.TYPE_STRING:
        return texts(ctx)
    if t in (fd.TYPE_UINT64, fd.TYPE_FIXED64):
        return uints(64)
    if t in (fd.TYPE_UINT32, fd.TYPE_FIXED32):
        return uints(32)
    if t in (fd.TYPE_INT64, fd.TYPE_SINT64, fd.TYPE_SFIXED64):
        return sints(64)
    if t in (fd.TYPE_INT32, fd.TYPE_SINT32, fd.TYPE_SFIXED32, fd.TYPE_ENUM):
        return sints(32)
    if t == fd.TYPE_BOOL:
        return st.booleans()
    if t in (fd.TYPE_DOUBLE, fd.TYPE_FLOAT):
        return st.floats(
            allow_nan=True, allow_infinity=True, width=32 if t == fd.TYPE_FLOAT else 64
        )
    if t == fd.TYPE_MESSAGE:
        return messages(ctx, fd.message_type, depth + 1)
    raise AssertionError(f"no strategy for field type {t} of {fd.full_name}")


def messages(ctx: Context, desc: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """A message of type ``desc`` with any subset of its fields set to strategy values."""
    cls = _message_class(desc)
    if depth > 2:
        return st.just(cls())
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for fd in desc.fields:
        values = field_values(ctx, fd, depth)
        if fd.is_repeated:
            values = st.lists(values, max_size=3)
        fields[fd.name] = st.none() | values

    def build(chosen: dict[str, Any]) -> Any:
        msg = cls()
        for name, value in chosen.items():
            if value is None:
                continue
            fd = desc.fields_by_name[name]
            if fd.is_repeated and fd.type == fd.TYPE_MESSAGE:
                for v in value:
                    getattr(msg, name).add().CopyFrom(v)
            elif fd.is_repeated:
                getattr(msg, name).extend(value)
            elif fd.type == fd.TYPE_MESSAGE:
                getattr(msg, name).CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg

    return st.fixed_dictionaries(fields).map(build)


def _message_class(desc: Any) -> Any:
    return getattr(pb, desc.name)


# -- requests with signed parts


def callers(ctx: Context) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(ctx.sessions))


@st.composite
def shard_headers(draw: st.DrawFn, ctx: Context, party: str) -> bytes:
    """A ShardHeader close to a valid one, some fields replaced by strategy values."""
    owner = ctx.sessions[party]
    shard_id = draw(st.sampled_from(PLAN_IDS) | texts(ctx))
    size = draw(st.sampled_from([1, 4096, 5000, 8 << 20, (8 << 20) + 1]) | uints(64))
    chunk = draw(st.sampled_from([4096, 4095, 1 << 20, 4 << 20, (4 << 20) + 1, 0]) | uints(32))
    base: dict[str, Any] = {
        "version": 2,
        "policy_digest": ctx.policy_digest,
        "party_id": party,
        "shard_id": shard_id,
        "format": "npz",
        "nonce_prefix": os.urandom(7),
        "chunk_size": chunk,
        "plaintext_size": size,
        "chunk_count": max(1, -(-size // chunk)) if chunk else 1,
        "created_unix_ms": int(time.time() * 1000),
        "commitment_key_sealed": draw(blobs()),
    }
    if draw(st.booleans()):
        from cctrain.client import x25519_public_raw
        from cctrain.crypto import hpke
        from cctrain.protocol import shard_key_info

        base["encapsulated_key"] = hpke.seal(
            x25519_public_raw(owner.enclave.hpke_public_key),
            draw(st.sampled_from([os.urandom(32), b"", os.urandom(31), os.urandom(64)])),
            info=shard_key_info(ctx.policy_digest, party, shard_id),
        )
    else:
        base["encapsulated_key"] = draw(blobs())
    header = pb.ShardHeader()
    for fd in pb.ShardHeader.DESCRIPTOR.fields:
        value = base[fd.name]
        if draw(st.integers(0, 4)) == 0:  # each field replaced one time in five
            value = draw(field_values(ctx, fd, 1))
        setattr(header, fd.name, value)
    return bytes(header.SerializeToString())


@st.composite
def upload_headers(draw: st.DrawFn, ctx: Context, party: str) -> pb.UploadRequest:
    raw = draw(shard_headers(ctx, party) | blobs())
    signer = draw(st.sampled_from([party, party, "hospital-b", "none"]))
    if signer == "none" or signer not in ctx.consortium.keys:
        signature = draw(blobs(64))
    else:
        signature = sign_header(ctx.consortium.keys[signer].signing_key, raw)
    resume = draw(st.sampled_from([0, 0, 0, 1]) | uints(64))
    return pb.UploadRequest(
        header=pb.UploadHeader(header=raw, signature=signature, resume_from=resume)
    )


@st.composite
def random_chunks(draw: st.DrawFn) -> pb.UploadRequest:
    req = pb.UploadRequest()
    req.chunk.index = draw(st.integers(0, 4) | uints(64))
    req.chunk.last = draw(st.booleans())
    req.chunk.ciphertext = draw(
        st.sampled_from([b"", os.urandom(4096 + 16), os.urandom(5000 - 4096 + 16)]) | blobs()
    )
    return req


@st.composite
def upload_streams(draw: st.DrawFn, ctx: Context) -> Case:
    """An upload stream in any order: headers (signed, random fields), chunks (random
    index, flag and ciphertext), empty messages, in any number (none, too)."""
    auth = draw(auths(ctx))
    party = auth.party or draw(st.sampled_from(["hospital-a", "hospital-b"]))
    items = draw(
        st.lists(
            st.one_of(upload_headers(ctx, party), random_chunks(), st.just(pb.UploadRequest())),
            max_size=5,
        )
    )
    return Case("Upload", tuple(m.SerializeToString() for m in items), auth, "upload-stream")


MUTATIONS = (
    "none",
    "drop",
    "swap",
    "duplicate",
    "truncate",
    "flip",
    "last-flag",
    "header-twice",
    "header-last",
    "extra-chunk",
    "resume-from",
    "index",
    "other-party-key",
    "resized",
)


def shard_bytes(rows: int, data_seed: int, classes: int = 2) -> bytes:
    rng = np.random.default_rng(data_seed)
    buf = io.BytesIO()
    np.savez(
        buf,
        features=rng.normal(size=(rows, 4)).astype(np.float32),
        labels=rng.integers(0, classes, size=rows),
    )
    return buf.getvalue()


def sealed_upload(
    ctx: Context, party: str, data: bytes, shard_id: str, chunk_size: int = 4096
) -> tuple[bytes, pb.UploadRequest, list[pb.UploadRequest]]:
    """(header bytes, header message, chunk messages then the signed trailer) of a real
    upload of ``data``."""
    header_bytes, signature, data_key = DataOwner._new_header(
        ctx.sessions[party],  # type: ignore[arg-type]
        "npz",
        shard_id,
        chunk_size,
        len(data),
    )
    header = pb.ShardHeader.FromString(header_bytes)
    sealer = StreamSealer(data_key, header.nonce_prefix, sha256(header_bytes))
    n = int(header.chunk_count)
    chunks = []
    for i in range(n):
        req = pb.UploadRequest()
        req.chunk.index = i
        req.chunk.last = i == n - 1
        req.chunk.ciphertext = sealer.seal(
            i, data[i * chunk_size : (i + 1) * chunk_size], last=i == n - 1
        )
        chunks.append(req)
    trailer = sign_trailer(
        ctx.consortium.keys[party].signing_key,
        header_sha256=sha256(header_bytes),
        plaintext_size=len(data),
        chunk_count=n,
        commitment=shard_commitment(data_key, sha256(data)),
    )
    chunks.append(pb.UploadRequest(trailer=trailer))
    head = pb.UploadRequest(header=pb.UploadHeader(header=header_bytes, signature=signature))
    return header_bytes, head, chunks


def plan_case(ctx: Context, party: str, shard_id: str, rows: int = 50, data_seed: int = 0) -> Case:
    """A real, correct upload (for explicit examples)."""
    _raw, head, chunks = sealed_upload(ctx, party, shard_bytes(rows, data_seed), shard_id)
    msgs = tuple(m.SerializeToString() for m in (head, *chunks))
    return Case("Upload", msgs, Auth("party", party), "plan:none")


#: Shard ids a planned upload takes: mostly ones that may be accepted, sometimes one
#: that a checker must refuse before it becomes a path or a receipt.
PLAN_ID_CHOICES = PLAN_IDS * 4 + ("fz-0\n", "fz-0\x00", "../fz-0", "fz/0", ".fz", "x" * 65)


@st.composite
def planned_uploads(draw: st.DrawFn, ctx: Context) -> Case:
    """A real encrypted upload of a valid shard, with one thing wrong (or nothing)."""
    party = draw(st.sampled_from(["hospital-a", "hospital-a", "hospital-b", RECIPIENT]))
    data = shard_bytes(
        draw(st.integers(1, 400)), draw(st.integers(0, 1 << 32)), draw(st.sampled_from([2, 2, 3]))
    )
    chunk_size = 4096
    shard_id = draw(st.sampled_from(PLAN_ID_CHOICES))
    header_bytes, head, chunks = sealed_upload(ctx, party, data, shard_id, chunk_size)
    n = len(chunks) - 1  # the chunks (the signed trailer comes last)
    mutation = draw(st.sampled_from(MUTATIONS))
    i = draw(st.integers(0, n - 1))
    j = draw(st.integers(0, n - 1))
    msgs: list[Any] = [head, *chunks]
    if mutation == "drop":
        del msgs[1 + i]
    elif mutation == "swap" and n > 1:
        a, b = sorted({i, j} if i != j else {i, (i + 1) % n})
        msgs[1 + a], msgs[1 + b] = msgs[1 + b], msgs[1 + a]
    elif mutation == "duplicate":
        msgs.insert(1 + i, msgs[1 + i])
    elif mutation == "truncate":
        msgs = msgs[: 1 + i]
    elif mutation == "flip":
        c = pb.UploadRequest()
        c.CopyFrom(msgs[1 + i])
        ct = bytearray(c.chunk.ciphertext)
        ct[draw(st.integers(0, len(ct) - 1))] ^= 1 << draw(st.integers(0, 7))
        c.chunk.ciphertext = bytes(ct)
        msgs[1 + i] = c
    elif mutation == "last-flag":
        c = pb.UploadRequest()
        c.CopyFrom(msgs[1 + i])
        c.chunk.last = not c.chunk.last
        msgs[1 + i] = c
    elif mutation == "header-twice":
        msgs.insert(1 + i, head)
    elif mutation == "header-last":
        msgs = [*chunks, head]
    elif mutation == "extra-chunk":
        extra = pb.UploadRequest()
        extra.chunk.index = n
        extra.chunk.last = True
        extra.chunk.ciphertext = os.urandom(chunk_size + 16)
        msgs.append(extra)
    elif mutation == "resume-from":
        head2 = pb.UploadRequest()
        head2.CopyFrom(head)
        head2.header.resume_from = draw(st.integers(1, n + 2))
        msgs = [head2, *chunks[head2.header.resume_from :]]
    elif mutation == "index":
        c = pb.UploadRequest()
        c.CopyFrom(msgs[1 + i])
        c.chunk.index = draw(uints(64).filter(lambda v: v != i))
        msgs[1 + i] = c
    elif mutation == "other-party-key":
        head2 = pb.UploadRequest()
        head2.CopyFrom(head)
        other = "hospital-b" if party != "hospital-b" else "hospital-a"
        head2.header.signature = sign_header(ctx.consortium.keys[other].signing_key, header_bytes)
        msgs[0] = head2
    elif mutation == "resized":
        c = pb.UploadRequest()
        c.CopyFrom(msgs[1 + i])
        c.chunk.ciphertext = c.chunk.ciphertext + b"\x00" * draw(st.integers(1, 64))
        msgs[1 + i] = c
    return Case(
        "Upload",
        tuple(m.SerializeToString() for m in msgs),
        Auth("party", party),
        f"plan:{mutation}",
    )


@st.composite
def approvals(draw: st.DrawFn, ctx: Context) -> bytes:
    """An ApproveReleaseRequest whose body is an ApprovalBody with random fields, signed
    by a party key (or not)."""
    party = draw(st.sampled_from(["hospital-a", "hospital-b", RECIPIENT, "x"]))
    base = {
        "version": 2,
        "policy_digest": ctx.policy_digest,
        "party_id": party,
        "manifest_sha256": ctx.manifest_sha256 or os.urandom(32),
        "created_unix_ms": int(time.time() * 1000),
        "release_index": 1,
    }
    body = pb.ApprovalBody()
    for fd in pb.ApprovalBody.DESCRIPTOR.fields:
        value = base[fd.name]
        if draw(st.integers(0, 3)) == 0:
            value = draw(field_values(ctx, fd, 1))
        setattr(body, fd.name, value)
    raw = body.SerializeToString()
    if draw(st.booleans()):
        raw = draw(blobs())
    signer = draw(st.sampled_from(["hospital-a", "hospital-b", "none"]))
    sig = (
        ctx.consortium.keys[signer].signing_key.sign(APPROVAL_SIG_TAG + raw)
        if signer != "none"
        else draw(blobs(64))
    )
    req = pb.ApproveReleaseRequest(approval=pb.SignedApproval(body=raw, signature=sig))
    return bytes(req.SerializeToString())


# -- authentication


MD_KEYS = (MD_PARTY, MD_TIME, MD_NONCE, MD_SIG)
PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))


@st.composite
def metadata_pairs(draw: st.DrawFn) -> tuple[str, Any]:
    key = draw(
        st.sampled_from(MD_KEYS) | st.from_regex(r"x-[a-z0-9_.-]{0,20}(-bin)?", fullmatch=True)
    )
    if key.endswith("-bin"):
        return key, draw(blobs(100))
    return key, draw(
        st.text(alphabet=PRINTABLE, max_size=60)
        | st.sampled_from(["hospital-a", RECIPIENT, "0", "-1", "9" * 30, "zz", "00" * 16])
        | st.text(alphabet=PRINTABLE, min_size=1000, max_size=4000)
    )


#: How calls authenticate, with weights: mostly signed (so the handlers see the input).
AUTH_KINDS = ("exact",) * 16 + ("other",) + ("stranger",) * 2 + ("mutated",) * 3


@st.composite
def auths(draw: st.DrawFn, ctx: Context) -> Auth:
    parties = sorted(ctx.sessions)
    kind = draw(st.sampled_from(AUTH_KINDS))
    if kind in ("exact", "other"):
        return Auth("party", party=draw(st.sampled_from(parties)), digest=kind)
    if kind == "stranger":
        return Auth("stranger", metadata=tuple(draw(st.lists(metadata_pairs(), max_size=6))))
    value = draw(
        st.none()
        | st.text(alphabet=PRINTABLE, max_size=40)
        | st.sampled_from(["hospital-b", "research-lab", "0", str(2**63), "-5", "ab" * 16])
        | blobs(80)
    )
    return Auth(
        "mutated",
        party=draw(st.sampled_from(parties)),
        field=draw(st.sampled_from([*MD_KEYS, "replay"])),
        value=value,
    )


# -- one case per family


UNARY_REQUEST = [m for m in METHODS if m != "Upload"]  # WatchTraining: one request
#: (what sort of input, which RPC), with weights: every RPC about as often as the others.
FAMILIES = (
    [("structured", m) for m in UNARY_REQUEST] * 2
    + [("raw", m) for m in UNARY_REQUEST]
    + [("upload-stream", "Upload")] * 3
    + [("plan", "Upload")] * 6
    + [("raw-stream", "Upload")] * 2
    + [("structured", "Health"), ("raw", "Health")]
)


@st.composite
def cases(draw: st.DrawFn, ctx: Context) -> Case:
    kind, method = draw(st.sampled_from(FAMILIES))
    if kind == "plan":
        return draw(planned_uploads(ctx))
    if kind == "upload-stream":
        return draw(upload_streams(ctx))
    if kind == "raw-stream":
        items = draw(st.lists(blobs(200), max_size=4))
        return Case("Upload", tuple(items), draw(auths(ctx)), kind)
    if method == "Health":
        if kind == "structured":
            body = health_pb2.HealthCheckRequest(
                service=draw(st.sampled_from(["", "cctrain.v1.Enclave"]) | texts(ctx))
            ).SerializeToString()
        else:
            body = draw(blobs(200))
        metadata = tuple(draw(st.lists(metadata_pairs(), max_size=3)))
        return Case("Health", (bytes(body),), Auth("stranger", metadata=metadata), kind)
    if kind == "raw":
        return Case(method, (draw(blobs(200)),), draw(auths(ctx)), kind)
    if method == "ApproveRelease" and draw(st.booleans()):
        body = draw(approvals(ctx))
    elif method == "Attest" and draw(st.booleans()):
        body = pb.AttestRequest(nonce=draw(st.binary(min_size=30, max_size=34))).SerializeToString()
    else:
        body = draw(messages(ctx, REQUEST_TYPES[method])).SerializeToString()
    body += draw(st.just(b"") | unknown_fields())
    return Case(method, (bytes(body),), draw(auths(ctx)), kind)


# --------------------------------------------------------------------------- sending


def _metadata(ctx: Context, case: Case) -> list[list[tuple[str, Any]]]:
    """The metadata of each send (two for a replay)."""
    auth = case.auth
    if auth.kind == "stranger":
        return [list(auth.metadata)]
    owner = ctx.sessions[auth.party]
    body = b"" if case.method == "Upload" else case.requests[0]
    if auth.digest == "other":
        body = body + b"\x00"
    md = owner.metadata(case.method, body)
    if auth.kind == "party":
        return [md]
    if auth.field == "replay":
        return [md, md]
    out = [(k, v) for k, v in md if k != auth.field]
    if auth.value is not None:
        value = auth.value
        if auth.field == MD_SIG and isinstance(value, str):
            value = value.encode()
        if auth.field != MD_SIG and isinstance(value, bytes):
            value = value.hex()
        out.append((auth.field, value))
    return [out]


@dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    details: str
    blocked: bool  # the call ran into the client's deadline


def _send_once(ctx: Context, case: Case, md: list[tuple[str, Any]]) -> Answer:
    channel = (
        ctx.stranger if case.auth.kind == "stranger" else ctx.sessions[case.auth.party]._channel  # noqa: SLF001 - the attested, pinned channel
    )
    deadline = HEALTH_DEADLINE_S
    open_watch = case.method == "WatchTraining" and ctx.phase == "collecting"
    if open_watch:
        deadline = OPEN_WATCH_S
    t0 = time.monotonic()
    try:
        if case.method == "Health":
            channel.unary_unary(HEALTH)(case.requests[0], metadata=md, timeout=deadline)
        elif case.method == "Upload":
            call = channel.stream_stream(SERVICE + "Upload")
            for _ in call(iter(case.requests), metadata=md, timeout=deadline):
                pass
        elif case.method == "WatchTraining":
            call = channel.unary_stream(SERVICE + "WatchTraining")
            for _ in call(case.requests[0], metadata=md, timeout=deadline):
                pass
        else:
            channel.unary_unary(SERVICE + case.method)(
                case.requests[0], metadata=md, timeout=deadline
            )
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
    else:
        code, details = grpc.StatusCode.OK, ""
    blocked = (
        code == grpc.StatusCode.DEADLINE_EXCEEDED
        and time.monotonic() - t0 >= deadline * 0.9
        and not open_watch
    )
    return Answer(code, details, blocked)


def refused_stream(a: Answer) -> bool:
    """HTTP/2 REFUSED_STREAM: the connection already has ``streams_per_connection``
    streams open (the enclave's per-connection bound; see limits.py). A stranger's denied
    streams linger on its connection for a moment after their answer, so a stranger that
    sends them back to back meets it: it is told to retry, as gRPC tells every client."""
    return (
        a.code == grpc.StatusCode.UNAVAILABLE
        and "RST_STREAM" in a.details
        and "error code 7" in a.details
    )


def _answered(ctx: Context, case: Case, md: list[tuple[str, Any]]) -> Answer:
    """The enclave's answer, retrying (as a client would) while the stream is refused."""
    for attempt in range(50):
        a = _send_once(ctx, case, md)
        if not refused_stream(a):
            return a
        ctx.refused_streams += 1
        time.sleep(0.05 * (attempt + 1))
        if case.auth.kind != "stranger":
            md = _metadata(ctx, case)[0]  # a fresh nonce: the refused stream was never seen
    return a


def send(ctx: Context, case: Case, watch: LogWatch) -> None:
    """Send one input and check what every input must satisfy."""
    before = watch.count()
    answers = [_answered(ctx, case, md) for md in _metadata(ctx, case)]
    ctx.inputs += 1
    ctx.counts[case.method] += 1
    ctx.kinds[case.kind] += 1
    for a in answers:
        ctx.codes[a.code.name] += 1
        # A non-cctrain error: INTERNAL, UNKNOWN, or any status nobody chose.
        assert a.code in DELIBERATE, f"{case!r}: {a.code.name} {a.details!r}"
        # A hang: the call ran into its deadline instead of being answered.
        assert not a.blocked, f"{case!r} blocked until the client's deadline"
        # The host's paths never reach a caller.
        for path in (str(ctx.state_dir), str(ctx.tmp)):
            assert path not in a.details, f"{case!r}: details name {path}: {a.details!r}"
        assert "Traceback" not in a.details, f"{case!r}: {a.details!r}"
    # gRPC logged an unhandled exception, or the enclave an error, for this input.
    assert watch.lines(before) == [], (case, watch.lines(before))


# --------------------------------------------------------------------------- campaign


def fuzz(ctx: Context, watch: LogWatch, examples: int, phase_seed: int) -> None:
    @seed(phase_seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=False,
        phases=(Phase.explicit, Phase.generate),  # no shrinking against a live server: slow
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=cases(ctx))
    def one_input(case: Case) -> None:
        send(ctx, case, watch)

    # Inputs every run tries, whatever the generator draws: a correct upload whose shard
    # id ends in a newline (a regex anchored with "$" lets it through to a path and a
    # receipt), and one that is plainly correct.
    for example_case in (
        plan_case(ctx, "hospital-a", "fz-0\n", data_seed=phase_seed),
        plan_case(ctx, "hospital-b", PLAN_IDS[0], data_seed=phase_seed + 1),
    ):
        one_input = example(case=example_case)(one_input)

    one_input()


def _state_names(state: Path) -> list[str]:
    """Names in the state directory outside the identifier alphabet (a NUL, a newline, a
    slash never reach a file name: ids are checked before they become paths)."""
    bad = []
    for p in state.rglob("*"):
        if not set(p.name) <= SAFE_NAME:
            bad.append(repr(str(p.relative_to(state))))
    return bad


def _alive(ctx: Context, phase: str) -> None:
    """Health answers; a party's status answers with the phase the enclave should be in."""
    assert health_check(ctx.address) == SERVING
    with session(DataOwner, ctx.address, ctx.consortium, "hospital-c") as c:
        assert c.status().phase == phase


def run_campaign(tmp: Path, *, full: bool = FULL) -> Figures:
    collecting, awaiting = FULL_SIZE if full else SMALL
    c = make_consortium(tmp / "c", **POLICY)
    state = tmp / "state"
    t0 = time.monotonic()
    with LogWatch() as watch, running_enclave(c, state) as (address, _app):
        sessions: dict[str, EnclaveSession] = {
            "hospital-a": session(DataOwner, address, c, "hospital-a"),
            "hospital-b": session(DataOwner, address, c, "hospital-b"),
            RECIPIENT: session(Recipient, address, c, RECIPIENT),
        }
        ctx = Context(c, address, state, tmp, sessions, tls_channel(address))
        try:
            # Phase 1: while the enclave collects shards (hospital-c never uploads, so no
            # fuzz input can complete the start rule).
            fuzz(ctx, watch, collecting, SEED)
            _alive(ctx, "collecting")
            receipts = {
                p: [r.shard_id for r in ctx.sessions[p].receipts()]  # type: ignore[attr-defined]
                for p in ("hospital-a", "hospital-b")
            }
            for ids in receipts.values():
                for sid in ids:
                    assert re.fullmatch(SAFE_ID, sid), f"accepted shard id {sid!r}"
            assert _state_names(state) == []
            # A normal upload still works, from every provider: training starts, and the
            # run ends awaiting hospital-a's approval.
            for i, party in enumerate(PROVIDERS):
                r = upload(address, c, party, tmp / "owners", seed=100 + i, shard_id="live")
                assert r.rows == 50
            assert wait_phase(address, c, "awaiting_approval") == "awaiting_approval"
            # Phase 2: a run awaiting its approval (approvals and fetches reach deeper).
            ctx.phase = "awaiting_approval"
            st_ = sessions["hospital-a"].status()
            ctx.manifest_sha256 = sha256(bytes(st_.manifest))
            fuzz(ctx, watch, awaiting, SEED + 1)
            phase = sessions["hospital-a"].status().phase
            _alive(ctx, phase)
            # A normal approval and fetch still work.
            if phase == "awaiting_approval":
                assert sessions["hospital-a"].approve_release() == ["hospital-a"]  # type: ignore[attr-defined]
            assert wait_phase(address, c, "released") == "released"
            model = sessions[RECIPIENT].fetch_model()  # type: ignore[attr-defined]
            assert model.manifest["recipients"] == [RECIPIENT]
            assert _state_names(state) == []
        finally:
            for s in sessions.values():
                s.close()
            ctx.stranger.close()
        errors = watch.lines()
    assert errors == [], errors
    elapsed = time.monotonic() - t0
    rpcs = len(ctx.counts)
    non_cctrain = sum(n for code, n in ctx.codes.items() if grpc.StatusCode[code] not in DELIBERATE)
    line = (
        f"fuzz: {ctx.inputs} inputs over {rpcs} RPCs, 0 crashes, {non_cctrain} non-cctrain "
        "errors, health OK"
    )
    return report(
        Figures(
            "fuzz",
            line,
            {
                "inputs": ctx.inputs,
                "rpcs": rpcs,
                "crashes": 0,
                "non_cctrain_errors": non_cctrain,
                "health": "OK",
                "inputs_per_rpc": dict(sorted(ctx.counts.items())),
                "inputs_per_kind": dict(sorted(ctx.kinds.items())),
                "status_codes": dict(sorted(ctx.codes.items())),
                "streams_refused_then_retried": ctx.refused_streams,
                "seconds": round(elapsed, 1),
            },
        )
    )


def test_fuzz_every_rpc(tmp_path: Path) -> None:
    # Would catch: a handler that raises (INTERNAL/UNKNOWN, "Exception calling
    # application"), a request gRPC cannot deserialize logged as an error, a call that
    # hangs, an error message that names the state directory, an id that reaches a file
    # name, and an enclave that stops answering after hostile input.
    figures = run_campaign(tmp_path)
    assert figures.numbers["inputs"] >= 0.9 * sum(FULL_SIZE if FULL else SMALL)
    assert figures.numbers["rpcs"] == len(METHODS) + 1
