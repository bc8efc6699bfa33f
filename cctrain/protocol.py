"""Wire-level constants and the signed objects both sides build and check.

Everything signed is signed over ``domain tag ‖ 0x00 ‖ exact bytes`` so a
signature made for one purpose (a header, a receipt, a request) can never be
replayed as another.  Protobuf stays here and in the servicer; the logic works
on dataclasses.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.message import DecodeError

from cctrain.attestation.base import Evidence
from cctrain.crypto.hpke import info_for
from cctrain.errors import AttestationError, ReceiptError
from cctrain.ids import SHARD_ID as SHARD_ID  # re-exported
from cctrain.untrusted import loads_json
from cctrain.v1 import enclave_pb2 as pb

#: 2: no plaintext_sha256 in the header; the commitment comes in the signed UploadTrailer.
HEADER_VERSION = 2
#: 2: receipts name the journal entry that records them (journal_seq, journal_prev_sha256).
#: 3: ``commitment`` is the salted commitment (:func:`shard_commitment`), not the plain
#: SHA-256; a model package's receipt carries its plain SHA-256 as ``package_sha256``.
RECEIPT_VERSION = 3
APPROVAL_VERSION = 2  # 2: release_index (the SDK's count of this policy's releases)
CONSENT_VERSION = 1
DEFAULT_CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 4 << 20
#: gRPC message limit on both sides: one chunk plus framing.
MAX_MESSAGE_SIZE = MAX_CHUNK_SIZE + (64 << 10)
#: A signed shard header is a few hundred bytes, a signed approval body about a hundred. Both
#: are journaled as signed, so a party could otherwise write megabytes of unknown protobuf
#: fields into the journal (under its own signature) and make an entry too long to serve.
MAX_HEADER_BYTES = 2048
MAX_APPROVAL_BYTES = 1024


def quoted(value: object, limit: int = 64) -> str:
    """An untrusted string as an error message may echo it: repr'd (no control characters
    reach a log line), at most ``limit`` characters of it."""
    text = str(value)
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


HEADER_SIG_TAG = b"cctrain/shard-header/v1\x00"
TRAILER_SIG_TAG = b"cctrain/upload-trailer/v1\x00"
#: HKDF info of the key a shard's commitment is keyed with (derived from its data key).
COMMITMENT_KEY_INFO = b"cctrain/commitment/v2"
#: HKDF info of the enclave's key for duplicate-shard tags (derived from its signing key).
DUPLICATE_TAG_INFO = b"cctrain/duplicate-tag/v1"
RECEIPT_SIG_TAG = b"cctrain/receipt/v1\x00"
MANIFEST_SIG_TAG = b"cctrain/release-manifest/v1\x00"
SHARD_KEY_INFO_TAG = b"cctrain/shard-key/v1"
COMMITMENT_OPENING_INFO_TAG = b"cctrain/commitment-opening/v1"
RELEASE_KEY_INFO_TAG = b"cctrain/release-key/v1"
REQUEST_SIG_TAG = b"cctrain/rpc-request/v2\x00"
APPROVAL_SIG_TAG = b"cctrain/release-approval/v1\x00"
JOURNAL_SIG_TAG = b"cctrain/journal-entry/v1\x00"
CONSENT_SIG_TAG = b"cctrain/consent/v1\x00"
#: HPKE info of a party's share of a consortium-held state key, sealed at genesis ...
STATE_SHARE_INFO_TAG = b"cctrain/state-share/v1"
#: ... its commitment in the genesis entry ...
STATE_SHARE_COMMIT_TAG = b"cctrain/state-share-commitment/v1\x00"
#: ... and the same share re-sealed to a locked enclave's attested key (Unlock).
STATE_UNLOCK_INFO_TAG = b"cctrain/state-unlock/v1"
#: The longest share (a SLIP-39 mnemonic: 33 words for a 32-byte key, about 300 bytes) and
#: the longest HPKE-sealed share (+ 32-byte encapsulated key, 16-byte tag) either side takes.
STATE_SHARE_MAX = 1024
SEALED_STATE_SHARE_MAX = STATE_SHARE_MAX + 48

# Request-authentication metadata keys.
MD_PARTY = "cctrain-party"
MD_TIME = "cctrain-time-ms"
MD_NONCE = "cctrain-nonce"
MD_SIG = "cctrain-signature-bin"
#: SHA-256 of a unary request's message, hex (covered by the signature): lets the enclave
#: authenticate the caller from the metadata, before it waits for the message.
MD_BODY = "cctrain-body-sha256"
#: The client's policy digest (hex), so an enclave serving another policy says so, with both
#: digests, rather than only that the request signature (which covers the digest) fails.
MD_POLICY = "cctrain-policy"
AUTH_WINDOW_MS = 120_000


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def expected_chunk_count(plaintext_size: int, chunk_size: int) -> int:
    """How many STREAM chunks a shard of ``plaintext_size`` bytes is cut into (at least one)."""
    return max(1, -(-plaintext_size // chunk_size))


def evidence_to_pb(ev: Evidence) -> pb.Evidence:
    return pb.Evidence(
        platform=ev.platform,
        report=ev.report,
        certificates=list(ev.certificates),
        collateral_json=json.dumps(ev.collateral) if ev.collateral else "",
    )


def evidence_from_pb(msg: pb.Evidence) -> Evidence:
    try:
        collateral = loads_json(msg.collateral_json) if msg.collateral_json else None
    except ValueError:
        raise AttestationError("evidence collateral is not valid JSON") from None
    return Evidence(
        platform=msg.platform,
        report=bytes(msg.report),
        certificates=tuple(bytes(c) for c in msg.certificates),
        collateral=collateral,
    )


def shard_key_info(policy_digest: bytes, party_id: str, shard_id: str) -> bytes:
    return info_for(SHARD_KEY_INFO_TAG, policy_digest, party_id.encode(), shard_id.encode())


def commitment_opening_info(policy_digest: bytes, party_id: str, shard_id: str) -> bytes:
    """HPKE info of a header's ``commitment_key_sealed`` (sealed to the party's own key)."""
    return info_for(
        COMMITMENT_OPENING_INFO_TAG, policy_digest, party_id.encode(), shard_id.encode()
    )


def release_key_info(policy_digest: bytes, recipient_id: str, manifest_sha256: bytes) -> bytes:
    return info_for(RELEASE_KEY_INFO_TAG, policy_digest, recipient_id.encode(), manifest_sha256)


def state_share_info(policy_digest: bytes, run_id: bytes, party_id: str) -> bytes:
    """HPKE info of ``party_id``'s share of a consortium-held state key, sealed at genesis to
    its policy key: the share opens only as this party's share of this run of this policy."""
    return info_for(STATE_SHARE_INFO_TAG, policy_digest, run_id, party_id.encode())


def state_unlock_info(
    policy_digest: bytes, run_id: bytes, party_id: str, journal_seq: int, journal_sha256: bytes
) -> bytes:
    """HPKE info of a share re-sealed to a locked enclave's attested unlock key: bound to the
    journal head the party verified, so a share meant for one history opens at no other."""
    return info_for(
        STATE_UNLOCK_INFO_TAG,
        policy_digest,
        run_id,
        party_id.encode(),
        struct.pack(">Q", journal_seq),
        journal_sha256,
    )


def state_share_commitment(run_id: bytes, party_id: str, share: bytes) -> bytes:
    """The genesis entry's commitment to ``party_id``'s share: the enclave (and the party)
    check a returned share against it, so a wrong share is refused by name."""
    party = party_id.encode()
    return sha256(
        STATE_SHARE_COMMIT_TAG
        + struct.pack(">I", len(run_id))
        + run_id
        + struct.pack(">I", len(party))
        + party
        + share
    )


def request_signing_bytes(
    *,
    method: str,
    party: str,
    time_ms: int,
    nonce: bytes,
    policy_digest: bytes,
    tls_spki_sha256: bytes,
    body_sha256: bytes,
) -> bytes:
    """What a party signs to authenticate one RPC (unary: body digest; streams: empty body).

    ``tls_spki_sha256`` is the hash of the enclave's TLS key the party attested. The enclave
    makes a fresh TLS key at every start, so a request signed for one enclave process never
    verifies at another: not after a restart, not at a second enclave serving the same policy.
    """
    parts = (
        method.encode(),
        party.encode(),
        struct.pack(">q", time_ms),
        nonce,
        policy_digest,
        tls_spki_sha256,
        body_sha256,
    )
    return REQUEST_SIG_TAG + b"".join(struct.pack(">I", len(p)) + p for p in parts)


def sign_header(key: Ed25519PrivateKey, header_bytes: bytes) -> bytes:
    return key.sign(HEADER_SIG_TAG + header_bytes)


def commitment_key(data_key: bytes) -> bytes:
    """The key a shard's commitment is an HMAC under: HKDF-SHA256 of its data key (no salt,
    info ``cctrain/commitment/v2``). Whoever holds it (the party, the enclave) can open the
    commitment; it decrypts nothing."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=COMMITMENT_KEY_INFO).derive(
        data_key
    )


def shard_commitment(data_key: bytes, plaintext_sha256: bytes) -> bytes:
    """The published commitment to a shard's plaintext (receipt, manifest, journal):
    HMAC-SHA256(:func:`commitment_key`, SHA-256 of the plaintext). Salted by the data key, so
    nobody without it can confirm a guessed dataset by hashing it."""
    return hmac.new(commitment_key(data_key), plaintext_sha256, hashlib.sha256).digest()


def opens_commitment(commitment: bytes, key: bytes, plaintext_sha256: bytes) -> bool:
    """Whether ``commitment`` is the commitment to a plaintext of SHA-256
    ``plaintext_sha256`` under the commitment ``key`` (:func:`commitment_key` of the data
    key) — how a party opens its receipt's commitment to an auditor it chooses."""
    want = hmac.new(key, plaintext_sha256, hashlib.sha256).digest()
    return hmac.compare_digest(want, commitment)


def trailer_signing_bytes(
    header_sha256: bytes, plaintext_size: int, chunk_count: int, commitment: bytes
) -> bytes:
    """What a party signs after its last chunk (fixed layout, no protobuf in between)."""
    return header_sha256 + struct.pack(">QQ", plaintext_size, chunk_count) + commitment


def sign_trailer(
    key: Ed25519PrivateKey,
    *,
    header_sha256: bytes,
    plaintext_size: int,
    chunk_count: int,
    commitment: bytes,
) -> pb.UploadTrailer:
    """The party's signed UploadTrailer: binds ``commitment`` to exactly this header."""
    signed = trailer_signing_bytes(header_sha256, plaintext_size, chunk_count, commitment)
    return pb.UploadTrailer(
        header_sha256=header_sha256,
        plaintext_size=plaintext_size,
        chunk_count=chunk_count,
        commitment=commitment,
        signature=key.sign(TRAILER_SIG_TAG + signed),
    )


def verify_trailer(key: Ed25519PublicKey, trailer: pb.UploadTrailer) -> bool:
    """The trailer's signature under the party's key (its fields are compared by the caller)."""
    if len(trailer.header_sha256) != 32 or len(trailer.commitment) != 32:
        return False
    signed = trailer_signing_bytes(
        bytes(trailer.header_sha256),
        int(trailer.plaintext_size),
        int(trailer.chunk_count),
        bytes(trailer.commitment),
    )
    return verify_signature(key, TRAILER_SIG_TAG, signed, bytes(trailer.signature))


def verify_signature(key: Ed25519PublicKey, tag: bytes, data: bytes, signature: bytes) -> bool:
    try:
        key.verify(signature, tag + data)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class Receipt:
    """A verified receipt: the enclave accepted shard ``shard_id`` of ``party_id``."""

    policy_digest: bytes
    party_id: str
    shard_id: str
    #: The salted commitment (:func:`shard_commitment`), not the plain SHA-256.
    commitment: bytes
    rows: int
    plaintext_size: int
    header_sha256: bytes
    accepted_unix_ms: int
    enclave_signing_key: bytes
    #: The journal entry that records this receipt, and the hash of the entry it extends.
    journal_seq: int
    journal_prev_sha256: bytes
    body: bytes
    signature: bytes
    #: A model package's plain SHA-256 (the policy's public pin); empty for data shards.
    package_sha256: bytes = b""

    def to_json(self) -> dict[str, object]:
        import base64

        return {
            "type": "cctrain-receipt/v2",  # v2: "commitment" (salted), no "plaintext_sha256"
            "policy_digest": self.policy_digest.hex(),
            "party_id": self.party_id,
            "shard_id": self.shard_id,
            "commitment": self.commitment.hex(),
            **({"package_sha256": self.package_sha256.hex()} if self.package_sha256 else {}),
            "rows": self.rows,
            "plaintext_size": self.plaintext_size,
            "header_sha256": self.header_sha256.hex(),
            "accepted_unix_ms": self.accepted_unix_ms,
            "enclave_signing_key": self.enclave_signing_key.hex(),
            "journal": {"seq": self.journal_seq, "prev_sha256": self.journal_prev_sha256.hex()},
            "body": base64.b64encode(self.body).decode(),
            "signature": base64.b64encode(self.signature).decode(),
        }


def verify_receipt(
    signed: pb.SignedReceipt, *, enclave_key: bytes, policy_digest: bytes
) -> Receipt:
    """Check the enclave's signature and the policy; return the receipt's fields."""
    key = Ed25519PublicKey.from_public_bytes(enclave_key)
    if not verify_signature(key, RECEIPT_SIG_TAG, signed.body, signed.signature):
        raise ReceiptError("receipt signature does not verify with the attested enclave key")
    body = pb.ReceiptBody()
    try:
        body.ParseFromString(signed.body)
    except DecodeError:
        raise ReceiptError("receipt body is malformed") from None
    if body.version != RECEIPT_VERSION:
        raise ReceiptError(f"receipt version {body.version} unsupported")
    if body.policy_digest != policy_digest:
        raise ReceiptError("receipt is for another policy")
    if body.enclave_signing_key != enclave_key:
        raise ReceiptError("receipt names another enclave key")
    if len(body.journal_prev_sha256) != 32:
        raise ReceiptError("receipt does not name the journal entry it extends")
    return Receipt(
        policy_digest=body.policy_digest,
        party_id=body.party_id,
        shard_id=body.shard_id,
        commitment=body.commitment,
        rows=body.rows,
        plaintext_size=body.plaintext_size,
        header_sha256=body.header_sha256,
        accepted_unix_ms=body.accepted_unix_ms,
        enclave_signing_key=body.enclave_signing_key,
        journal_seq=body.journal_seq,
        journal_prev_sha256=body.journal_prev_sha256,
        body=bytes(signed.body),
        signature=bytes(signed.signature),
        package_sha256=bytes(body.package_sha256),
    )


def sign_approval(
    key: Ed25519PrivateKey,
    *,
    policy_digest: bytes,
    party_id: str,
    manifest_sha256: bytes,
    now_ms: int,
    release_index: int = 1,
) -> pb.SignedApproval:
    """A provider's signed approval of exactly one release manifest, its ``release_index``-th
    approved release of this policy."""
    body = pb.ApprovalBody(
        version=APPROVAL_VERSION,
        policy_digest=policy_digest,
        party_id=party_id,
        manifest_sha256=manifest_sha256,
        created_unix_ms=now_ms,
        release_index=release_index,
    ).SerializeToString()
    return pb.SignedApproval(body=body, signature=key.sign(APPROVAL_SIG_TAG + body))


def sign_consent(
    key: Ed25519PrivateKey,
    *,
    policy_digest: bytes,
    party_id: str,
    action: str,
    now_ms: int,
    shard_id: str = "",
    manifest_sha256: bytes = b"",
) -> pb.SignedConsent:
    """A party's signed consent decision: ``withdraw`` a shard, or ``veto`` a release."""
    body = pb.ConsentBody(
        version=CONSENT_VERSION,
        policy_digest=policy_digest,
        party_id=party_id,
        action=action,
        shard_id=shard_id,
        manifest_sha256=manifest_sha256,
        created_unix_ms=now_ms,
    ).SerializeToString()
    return pb.SignedConsent(body=body, signature=key.sign(CONSENT_SIG_TAG + body))
