"""The enclave's journal: its format, and the one function that replays it into run state.

The journal is an append-only log of every state transition of a run, each entry signed by
the enclave key and chained to the one before by its SHA-256::

    #0 genesis ─▶ #1 shard accepted ─▶ (shard withdrawn …) ─▶ #k uploads closed ─▶ #k+1 checkpoint
       ─▶ … ─▶ #m manifest built ─▶ (#m+1 approval …) ─▶ #n released   (or: vetoed, failed, expired)

The host owns the disk, so nothing it stores is believed for being there. The enclave derives
what it believes (phase, the shard set, approvals, ε spent) only from :func:`replay` over its
verified journal, and applies each new entry through the same :func:`apply`; an auditor
fetches the journal and runs the same code (:func:`audit`), adding the check of the genesis
evidence that binds the enclave key to genuine hardware running the pinned code under this
policy. What the enclave believes and what an auditor verifies therefore cannot drift apart.

:func:`apply` re-verifies everything an entry carries: the chain and the enclave signature,
each party's signature on its upload header, approval, withdrawal and veto, each receipt and its fields
against the header, and the order of the state machine (no upload after uploads closed, no
approval of another manifest, no release without every approval the policy requires). It
raises :class:`JournalError` naming the entry; nothing else is trusted.

Entries carry no plaintext: headers hold the HPKE-wrapped data key and the plaintext
commitment, receipts the row count, the manifest what every provider approves anyway.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from cctrain.attestation.base import CollateralGetter
from cctrain.dpcheck import release_problems
from cctrain.errors import JournalError
from cctrain.ids import is_party_id, is_shard_id
from cctrain.package import PACKAGE_SHARD_ID
from cctrain.package import UPLOAD_FORMAT as PACKAGE_UPLOAD_FORMAT
from cctrain.policy import Policy
from cctrain.protocol import (
    APPROVAL_SIG_TAG,
    APPROVAL_VERSION,
    CONSENT_SIG_TAG,
    CONSENT_VERSION,
    HEADER_SIG_TAG,
    HEADER_VERSION,
    JOURNAL_SIG_TAG,
    MANIFEST_SIG_TAG,
    MAX_APPROVAL_BYTES,
    MAX_HEADER_BYTES,
    MAX_MESSAGE_SIZE,
    RECEIPT_SIG_TAG,
    RECEIPT_VERSION,
    SEALED_STATE_SHARE_MAX,
    expected_chunk_count,
    quoted,
    verify_signature,
    verify_trailer,
)
from cctrain.untrusted import loads_json
from cctrain.v1 import enclave_pb2 as pb
from cctrain.v1 import journal_pb2 as jpb

__all__ = [
    "MANIFEST_TYPE",
    "STATE_FORMAT",
    "AcceptedShard",
    "AuditReport",
    "CheckpointMark",
    "EntryRefused",
    "JournalError",
    "JournalHead",
    "Record",
    "RunState",
    "StateShare",
    "WithdrawnShard",
    "apply",
    "audit",
    "describe",
    "frame",
    "genesis_nonce",
    "iter_pages",
    "manifest_problems",
    "parse_record",
    "read_journal_file",
    "replay",
    "sign_entry",
    "summary_line",
    "unframe",
    "verify_approval",
    "verify_consent",
]

JOURNAL_VERSION = 1
#: The layout of the state directory this journal describes (1: before the journal existed).
STATE_FORMAT = 2
ZERO_HASH = bytes(32)
GENESIS_NONCE_TAG = b"cctrain/journal-genesis/v1\x00"
#: v3: non_private_outputs, certificate covers/sampling; v4: release_rule; v5: certificate
#: tensor_names ("listed", or "sealed" in the weights for a model package).
MANIFEST_TYPE = "cctrain-release-manifest/v5"
#: The longest entry the enclave writes or reads (the genesis and manifest entries carry
#: evidence, which for TDX includes collateral): anything longer is not a journal. Well
#: below the gRPC message limit, so that any entry fits one GetJournal page.
MAX_ENTRY_BYTES = 3 << 20
#: The most a party's SDK reads of one journal (``iter_pages``): far above any real run (an
#: entry per shard, checkpoint and approval), a bound on what a session holds in memory.
MAX_JOURNAL_BYTES = 512 << 20
assert MAX_ENTRY_BYTES + (64 << 10) <= MAX_MESSAGE_SIZE

#: Phases after which no entry follows. ``released`` is one: an expiry after a release is not
#: journaled (the enclave then only refuses to serve the sealed weights), so that no later
#: entry can make a released run look like one that ended without a release.
TERMINAL = frozenset({"released", "failed", "expired", "vetoed"})
KINDS = {
    "genesis": "genesis",
    "shard_accepted": "shard accepted",
    "uploads_closed": "uploads closed",
    "checkpoint": "checkpoint",
    "manifest": "manifest built",
    "approval": "approval",
    "released": "released",
    "failed": "run failed",
    "expired": "policy expired",
    "shard_withdrawn": "shard withdrawn",
    "vetoed": "release vetoed",
}


def genesis_nonce(run_id: bytes) -> bytes:
    """The evidence nonce of a genesis entry: binds the hardware report to this run."""
    return hashlib.sha256(GENESIS_NONCE_TAG + run_id).digest()


def policy_expiry_ms(policy: Policy) -> int | None:
    return None if policy.expires is None else int(policy.expires.timestamp() * 1000)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class JournalHead:
    seq: int
    sha256: bytes

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "sha256": self.sha256.hex()}


@dataclass(frozen=True)
class Record:
    """One journal entry exactly as stored: its bytes, its parsed entry, its signature."""

    raw: bytes  # serialized SignedJournalEntry
    entry_bytes: bytes
    signature: bytes
    entry: jpb.JournalEntry

    @property
    def seq(self) -> int:
        return int(self.entry.seq)

    @property
    def kind(self) -> str:
        return self.entry.WhichOneof("body") or ""

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.entry_bytes).digest()

    @property
    def head(self) -> JournalHead:
        return JournalHead(self.seq, self.sha256)

    @property
    def label(self) -> str:
        return f"journal entry #{self.seq} ({KINDS.get(self.kind, self.kind or 'no body')})"


def parse_record(raw: bytes, *, position: int) -> Record:
    """Parse one serialized SignedJournalEntry; ``position`` (its sequence number in an intact
    journal) names it in errors."""
    where = f"journal entry #{position}"
    if len(raw) > MAX_ENTRY_BYTES:
        raise JournalError(f"{where}: {len(raw)} bytes, longer than any entry the enclave writes")
    signed = jpb.SignedJournalEntry()
    entry = jpb.JournalEntry()
    try:
        signed.ParseFromString(raw)
        entry.ParseFromString(signed.entry)
    except DecodeError:
        raise JournalError(f"{where}: not a journal entry (malformed bytes)") from None
    return Record(bytes(raw), bytes(signed.entry), bytes(signed.signature), entry)


def sign_entry(entry: jpb.JournalEntry, key: Ed25519PrivateKey) -> Record:
    entry_bytes = entry.SerializeToString()
    signature = key.sign(JOURNAL_SIG_TAG + entry_bytes)
    raw = jpb.SignedJournalEntry(entry=entry_bytes, signature=signature).SerializeToString()
    return Record(raw, entry_bytes, signature, entry)


# On disk and in a saved audit file: each record preceded by its length (4 bytes, big-endian).
_LEN = struct.Struct(">I")


def frame(raw: bytes) -> bytes:
    return _LEN.pack(len(raw)) + raw


def unframe(data: bytes) -> tuple[list[bytes], int]:
    """The complete records in ``data`` and the offset where they end.

    A record cut short by the end of the data (a torn final append) is not returned; the
    caller decides what a short tail means. A length longer than any entry is not a tear.
    """
    out: list[bytes] = []
    pos = 0
    while pos + _LEN.size <= len(data):
        (n,) = _LEN.unpack_from(data, pos)
        if n > MAX_ENTRY_BYTES:
            raise JournalError(
                f"journal entry #{len(out)}: length field {n} is larger than any entry"
            )
        if pos + _LEN.size + n > len(data):
            break
        out.append(data[pos + _LEN.size : pos + _LEN.size + n])
        pos += _LEN.size + n
    return out, pos


def read_journal_file(path: str | Path) -> list[Record]:
    """Every record of a saved journal (``cctrain audit --journal``); a torn tail is an error."""
    path = Path(path)
    data = path.read_bytes()
    raws, end = unframe(data)
    if end != len(data):
        raise JournalError(f"{path}: {len(data) - end} bytes after the last complete entry")
    return [parse_record(r, position=i) for i, r in enumerate(raws)]


# --------------------------------------------------------------------------- run state


@dataclass(frozen=True)
class AcceptedShard:
    party_id: str
    shard_id: str
    header_raw: bytes
    header_signature: bytes
    header: pb.ShardHeader
    receipt: pb.SignedReceipt
    rows: int
    seq: int
    #: The enclave's duplicate tag of its plaintext (see cctrain_enclave.quotas).
    duplicate_tag: bytes = b""

    @property
    def header_sha256(self) -> bytes:
        return hashlib.sha256(self.header_raw).digest()

    @property
    def commitment(self) -> bytes:
        """The salted plaintext commitment its receipt (and the party's trailer) carries."""
        return bytes(pb.ReceiptBody.FromString(self.receipt.body).commitment)

    @property
    def is_model_package(self) -> bool:
        """The model owner's package (no rows: code and initial weights, not data)."""
        return self.header.format == PACKAGE_UPLOAD_FORMAT


@dataclass(frozen=True)
class CheckpointMark:
    step: int
    epsilon: float | None
    sha256: bytes
    seq: int


@dataclass(frozen=True)
class StateShare:
    """One party's share of a consortium-held state key, as the genesis entry carries it:
    sealed to the party's policy HPKE key, with the commitment a returned share must match."""

    party_id: str
    sealed: bytes
    share_sha256: bytes


@dataclass(frozen=True)
class WithdrawnShard:
    """A shard its provider withdrew before training: in no shard set, its ciphertext deleted.

    Its id stays taken: a later upload under it is refused, so one shard id names one
    upload in the whole journal (a receipt and a deletion receipt never disagree on what
    ``party/shard`` was)."""

    party_id: str
    shard_id: str
    header_sha256: bytes
    accepted_seq: int  # its shard-accepted entry
    seq: int  # the shard-withdrawn entry: the deletion receipt


@dataclass(frozen=True)
class RunState:
    """Everything the enclave believes about its run: derived from the journal, nothing else."""

    policy_digest: bytes
    run_id: bytes
    platform: str
    measurement: bytes
    hpke_public_key: bytes
    signing_public_key: bytes
    tls_spki_sha256: bytes
    genesis: Record
    head: JournalHead
    phase: str = "collecting"
    shards: tuple[AcceptedShard, ...] = ()
    uploads_closed: Record | None = None
    started_by: str = ""
    checkpoint: CheckpointMark | None = None
    manifest: bytes = b""
    manifest_signature: bytes = b""
    approvals: tuple[tuple[str, pb.SignedApproval], ...] = ()
    release_record: Record | None = None
    detail: str = ""
    #: Who holds the state key (the genesis says, the policy decides): "platform" or
    #: "consortium"; for a consortium key, k and one share per party in policy order.
    state_key_mode: str = "platform"
    state_key_threshold: int = 0
    state_key_shares: tuple[StateShare, ...] = ()
    #: Shards withdrawn before training, in journal order (no longer in ``shards``).
    withdrawn: tuple[WithdrawnShard, ...] = ()
    #: The provider whose veto ended the run (phase ``vetoed``).
    vetoed_by: str = ""

    # -- queries
    def state_share(self, party_id: str) -> StateShare | None:
        """``party_id``'s share of a consortium-held state key (None: no such share)."""
        for s in self.state_key_shares:
            if s.party_id == party_id:
                return s
        return None

    @property
    def manifest_sha256(self) -> bytes:
        return hashlib.sha256(self.manifest).digest() if self.manifest else b""

    @property
    def training_shards(self) -> tuple[AcceptedShard, ...]:
        """The exact shard set uploads were closed on (empty while collecting)."""
        return self.shards if self.uploads_closed is not None else ()

    @property
    def data_shards(self) -> tuple[AcceptedShard, ...]:
        """The training set's data shards (the shard set without the model package)."""
        return tuple(s for s in self.training_shards if not s.is_model_package)

    @property
    def model_package(self) -> AcceptedShard | None:
        """The accepted model package, if the policy takes one and it arrived."""
        return next((s for s in self.shards if s.is_model_package), None)

    @property
    def epsilon_spent(self) -> float | None:
        return self.checkpoint.epsilon if self.checkpoint is not None else None

    def shard(self, party_id: str, shard_id: str) -> AcceptedShard | None:
        for s in self.shards:
            if s.party_id == party_id and s.shard_id == shard_id:
                return s
        return None

    def withdrawal(self, party_id: str, shard_id: str) -> WithdrawnShard | None:
        for w in self.withdrawn:
            if w.party_id == party_id and w.shard_id == shard_id:
                return w
        return None

    def providers_uploaded(self) -> list[str]:
        return sorted({s.party_id for s in self.shards})

    def providers_missing(self, policy: Policy) -> list[str]:
        """Who must still upload before training may start: each provider the start rule
        names (a data shard each), and the model provider (its package)."""
        have = {s.party_id for s in self.shards if not s.is_model_package}
        missing = [p for p in policy.start["require_uploads_from"] if p not in have]
        if policy.model_provider is not None and self.model_package is None:
            missing.append(f"{policy.model_provider} (the model package)")
        return missing

    def approved_by(self) -> list[str]:
        return [p for p, _ in self.approvals]

    def approvals_missing(self, policy: Policy) -> list[str]:
        have = set(self.approved_by())
        return [p for p in policy.release["approvals_required_from"] if p not in have]


# --------------------------------------------------------------------------- checks


class _Refuse:
    """Collects the problems of one entry, then raises them together, naming the entry."""

    def __init__(self, record: Record) -> None:
        self.record = record
        self.problems: list[str] = []

    def check(self, ok: bool, problem: str) -> bool:
        if not ok:
            self.problems.append(problem)
        return ok

    def done(self) -> None:
        if self.problems:
            raise EntryRefused(self.record.label, self.problems)


class EntryRefused(JournalError):
    """An entry breaks the run's rules. ``problems`` says how without naming the entry: the
    enclave tells a caller whose request it refused (its entry was never written) only those."""

    def __init__(self, label: str, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__(f"{label}: " + "; ".join(self.problems))


def _key(raw: bytes) -> Ed25519PublicKey | None:
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return None


def verify_approval(
    signed: pb.SignedApproval, *, policy: Policy, manifest_sha256: bytes
) -> tuple[str, list[str]]:
    """(party, problems) of one signed approval of the manifest ``manifest_sha256``."""
    if len(signed.body) > MAX_APPROVAL_BYTES:
        return "", [f"approval body is {len(signed.body)} bytes, more than {MAX_APPROVAL_BYTES}"]
    body = pb.ApprovalBody()
    try:
        body.ParseFromString(signed.body)
    except DecodeError:
        return "", ["approval body is malformed"]
    problems = []
    party = policy.party(body.party_id)
    if body.version != APPROVAL_VERSION:
        problems.append(f"approval version {body.version}, want {APPROVAL_VERSION}")
    if body.policy_digest != policy.digest:
        problems.append("approval is for another policy")
    if body.party_id not in policy.release["approvals_required_from"]:
        problems.append(f"{body.party_id!r} is not a party whose approval the policy requires")
    if body.manifest_sha256 != manifest_sha256:
        problems.append("approval is for another manifest")
    if not 1 <= body.release_index <= policy.max_releases:
        problems.append(
            f"approval is {body.party_id!r}'s release #{body.release_index} of this policy, "
            f"which allows {policy.max_releases}"
        )
    if party is None or not verify_signature(
        Ed25519PublicKey.from_public_bytes(party.signing_public_raw),
        APPROVAL_SIG_TAG,
        signed.body,
        signed.signature,
    ):
        problems.append(f"approval is not signed by the policy key of {body.party_id!r}")
    return body.party_id, problems


CONSENT_ACTIONS = ("withdraw", "veto")
#: A consent body is a few hundred bytes. A longer one (unknown fields, signed) is refused: a
#: party must not write megabytes into the journal, nor an entry longer than MAX_ENTRY_BYTES,
#: which would stop the enclave at its next start.
MAX_CONSENT_BYTES = 1024


def verify_consent(
    signed: pb.SignedConsent, *, policy: Policy, action: str
) -> tuple[pb.ConsentBody | None, list[str]]:
    """(body, problems) of a party's signed consent decision, as far as it stands alone.

    Checks what every ``action`` shares: version, this policy, the action, the one target
    it names (``withdraw``: a shard id and no manifest; ``veto``: a manifest and no shard),
    and the signature of the policy key of the party it names. Whether that target is the
    run's (an accepted shard of that party, the current manifest) depends on the run state:
    the callers check it. The body is None when it does not parse at all (or is too long).
    """
    if len(signed.body) > MAX_CONSENT_BYTES:
        return None, [f"consent body is {len(signed.body)} bytes, more than {MAX_CONSENT_BYTES}"]
    body = pb.ConsentBody()
    try:
        body.ParseFromString(signed.body)
    except DecodeError:
        return None, ["consent body is malformed"]
    problems = []
    # Ids are repeated in messages only when valid: arbitrary bytes (a path, say) are not.
    who = quoted(body.party_id) if is_party_id(body.party_id) else "an invalid id"
    if body.version != CONSENT_VERSION:
        problems.append(f"consent version {body.version}, want {CONSENT_VERSION}")
    if body.policy_digest != policy.digest:
        problems.append("consent is for another policy")
    if body.action != action:
        got = repr(body.action) if body.action in CONSENT_ACTIONS else "unknown"
        problems.append(f"consent action is {got}, want {action!r}")
    if action == "withdraw":
        if not is_shard_id(body.shard_id):
            problems.append("withdrawal names no valid shard id")
        if body.manifest_sha256:
            problems.append("a withdrawal names a shard, not a manifest")
    elif action == "veto":
        if len(body.manifest_sha256) != 32:
            problems.append("veto does not name a manifest (32-byte SHA-256)")
        if body.shard_id:
            problems.append("a veto names a manifest, not a shard")
    party = policy.party(body.party_id)
    if party is None:
        problems.append(f"the party it names ({who}) is not a party of this policy")
    elif not verify_signature(
        Ed25519PublicKey.from_public_bytes(party.signing_public_raw),
        CONSENT_SIG_TAG,
        signed.body,
        signed.signature,
    ):
        problems.append(f"consent is not signed by the policy key of {who}")
    return body, problems


def _check_header(r: _Refuse, policy: Policy, uh: pb.UploadHeader) -> pb.ShardHeader | None:
    if not r.check(
        len(uh.header) <= MAX_HEADER_BYTES,
        f"upload header is {len(uh.header)} bytes, more than {MAX_HEADER_BYTES}",
    ):
        return None
    msg = pb.ShardHeader()
    try:
        msg.ParseFromString(uh.header)
    except DecodeError:
        r.check(False, "upload header is malformed")
        return None
    party = policy.party(msg.party_id)
    r.check(msg.version == HEADER_VERSION, f"upload header version {msg.version}")
    r.check(msg.policy_digest == policy.digest, "upload header is for another policy")
    pkg = policy.model_package
    if msg.format == PACKAGE_UPLOAD_FORMAT:
        r.check(
            pkg is not None and msg.party_id == pkg["provider"],
            f"{msg.party_id!r} uploaded a model package, but is not the policy's model provider",
        )
        r.check(msg.shard_id == PACKAGE_SHARD_ID, f"model package named {msg.shard_id!r}")
        r.check(
            pkg is not None and 0 < msg.plaintext_size <= int(pkg["max_bytes"]),
            "model package size outside training.model.max_bytes",
        )
    else:
        r.check(party is not None and party.is_provider, f"{msg.party_id!r} is not a data provider")
        r.check(
            is_shard_id(msg.shard_id) and msg.shard_id != PACKAGE_SHARD_ID,
            f"shard id {msg.shard_id!r} is not valid",
        )
        r.check(msg.format in policy.data["formats"], f"format {msg.format!r} is not allowed")
        r.check(
            0 < msg.plaintext_size <= int(policy.data["max_bytes"]),
            "shard size outside data.max_bytes",
        )
    r.check(
        msg.chunk_size > 0
        and msg.chunk_count == expected_chunk_count(msg.plaintext_size, msg.chunk_size),
        "chunk count does not match the shard size",
    )
    r.check(uh.resume_from == 0, "upload header carries a resume point")
    r.check(
        party is not None
        and verify_signature(
            Ed25519PublicKey.from_public_bytes(party.signing_public_raw),
            HEADER_SIG_TAG,
            uh.header,
            uh.signature,
        ),
        f"upload header is not signed by the policy key of {msg.party_id!r}",
    )
    return msg


def _check_receipt(
    r: _Refuse,
    state: RunState,
    record: Record,
    policy: Policy,
    header: pb.ShardHeader,
    header_raw: bytes,
) -> pb.ReceiptBody | None:
    signed = record.entry.shard_accepted.receipt
    key = _key(state.signing_public_key)
    if not r.check(
        key is not None and verify_signature(key, RECEIPT_SIG_TAG, signed.body, signed.signature),
        "receipt is not signed by the enclave key",
    ):
        return None
    body = pb.ReceiptBody()
    try:
        body.ParseFromString(signed.body)
    except DecodeError:
        r.check(False, "receipt body is malformed")
        return None
    want = {
        "version": (body.version, RECEIPT_VERSION),
        "policy digest": (body.policy_digest, state.policy_digest),
        "party": (body.party_id, header.party_id),
        "shard": (body.shard_id, header.shard_id),
        "plaintext size": (body.plaintext_size, header.plaintext_size),
        "header digest": (body.header_sha256, hashlib.sha256(header_raw).digest()),
        "enclave key": (body.enclave_signing_key, state.signing_public_key),
        "journal seq": (body.journal_seq, record.seq),
        "journal prev": (body.journal_prev_sha256, bytes(record.entry.prev_sha256)),
    }
    for name, (got, wanted) in want.items():
        r.check(got == wanted, f"receipt {name} does not match its entry")
    _check_trailer(r, policy, record.entry.shard_accepted, header, header_raw, body)
    if header.format == PACKAGE_UPLOAD_FORMAT:
        r.check(body.rows == 0, f"a model package's receipt claims {body.rows} rows")
        pkg = policy.model_package
        r.check(
            pkg is not None and body.package_sha256.hex() == pkg["package_sha256"],
            "the model package is not the one the policy pins",
        )
    else:
        r.check(
            int(policy.data["min_rows"]) <= body.rows <= int(policy.data["max_rows"]),
            f"receipt rows {body.rows} outside the policy's data.min_rows..max_rows",
        )
    return body


def _check_trailer(
    r: _Refuse,
    policy: Policy,
    sa: jpb.ShardAccepted,
    header: pb.ShardHeader,
    header_raw: bytes,
    body: pb.ReceiptBody,
) -> None:
    """The party's signed trailer: over this header, its size and chunk count, and the
    commitment the receipt carries (the party, not only the enclave, vouches for it)."""
    t = sa.trailer
    party = policy.party(header.party_id)
    r.check(
        sa.HasField("trailer")
        and party is not None
        and verify_trailer(Ed25519PublicKey.from_public_bytes(party.signing_public_raw), t),
        f"upload trailer is not signed by the policy key of {header.party_id!r}",
    )
    r.check(
        bytes(t.header_sha256) == hashlib.sha256(header_raw).digest()
        and t.plaintext_size == header.plaintext_size
        and t.chunk_count == header.chunk_count,
        "upload trailer is not for its header",
    )
    r.check(t.commitment == body.commitment, "receipt commitment does not match the trailer")


def manifest_rows(doc: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(party, rows) of each receipt the manifest lists (receipts that do not parse count
    nothing; :func:`manifest_problems` reports them; a model package has 0 rows)."""
    rows = []
    for r in doc.get("receipts", []):
        body = pb.ReceiptBody()
        try:
            body.ParseFromString(_unb64(r["body"]))
        except (KeyError, TypeError, ValueError, DecodeError):
            continue
        rows.append((str(body.party_id), int(body.rows)))
    return rows


def manifest_problems(
    doc: Mapping[str, Any], *, signing_key: bytes, policy: Policy
) -> tuple[list[tuple[str, str, bytes]], list[str]]:
    """The shard set a manifest claims, and every inconsistency in it, checked offline.

    The receipts must be signed by the enclave key, each (party, shard) at most once, and be
    exactly the shards of the journal's signed "uploads closed" entry that the manifest
    carries, in order; every provider the start rule names must be among them.
    """
    problems: list[str] = []
    key = _key(signing_key)
    if key is None:
        return [], ["manifest names an invalid enclave key"]
    receipts: list[tuple[str, str, bytes]] = []
    listed = doc.get("receipts")
    if not isinstance(listed, list):
        return [], ["manifest receipts are not a list"]
    for i, r in enumerate(listed):
        try:
            body_bytes = _unb64(r["body"])
            sig = _unb64(r["signature"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"receipt {i} is malformed")
            continue
        if not verify_signature(key, RECEIPT_SIG_TAG, body_bytes, sig):
            problems.append(f"receipt {i} in the manifest is not signed by the enclave")
            continue
        body = pb.ReceiptBody()
        try:
            body.ParseFromString(body_bytes)
        except DecodeError:
            problems.append(f"receipt {i} is malformed")
            continue
        if body.policy_digest != policy.digest:
            problems.append(f"receipt {i} is for another policy")
        receipts.append((body.party_id, body.shard_id, bytes(body.header_sha256)))
    pairs = [(p, s) for p, s, _ in receipts]
    for dup in sorted({x for x in pairs if pairs.count(x) > 1}):
        problems.append(f"shard {dup[0]}/{dup[1]} is listed more than once")
    try:
        closed = parse_record(_unb64(doc["uploads_closed"]), position=0)
    except (KeyError, TypeError, ValueError, JournalError):
        return receipts, [*problems, "manifest does not carry the journal's uploads-closed entry"]
    if not verify_signature(key, JOURNAL_SIG_TAG, closed.entry_bytes, closed.signature):
        problems.append("the uploads-closed entry is not signed by the enclave key")
    elif closed.kind != "uploads_closed" or closed.entry.policy_digest != policy.digest:
        problems.append("the uploads-closed entry is not an uploads-closed entry of this policy")
    else:
        refs = [
            (s.party_id, s.shard_id, bytes(s.header_sha256))
            for s in closed.entry.uploads_closed.shards
        ]
        if refs != receipts:
            problems.append("the receipts listed are not exactly the shards uploads closed on")
    have = {p for p, s, _ in receipts if s != PACKAGE_SHARD_ID}
    for pid in policy.start["require_uploads_from"]:
        if pid not in have:
            problems.append(f"no receipt from {pid!r}, which the start rule requires")
    owner = policy.model_provider
    if owner is not None and (owner, PACKAGE_SHARD_ID) not in {(p, s) for p, s, _ in receipts}:
        problems.append(f"no receipt for the model package of {owner!r}")
    return receipts, problems


def _unb64(text: Any) -> bytes:
    import base64

    if not isinstance(text, str):
        raise TypeError("not base64 text")
    return base64.b64decode(text, validate=True)


# --------------------------------------------------------------------------- the one replay


def _genesis(record: Record, policy: Policy) -> RunState:
    r = _Refuse(record)
    e = record.entry
    g = e.genesis
    r.check(record.kind == "genesis", "the first entry must be the genesis")
    r.check(record.seq == 0, f"genesis has sequence number {record.seq}")
    r.check(e.prev_sha256 == ZERO_HASH, "genesis must not extend another entry")
    r.check(g.state_format == STATE_FORMAT, f"state format {g.state_format}, want {STATE_FORMAT}")
    r.check(len(g.run_id) == 16, "run id must be 16 bytes")
    key = _key(g.signing_public_key)
    r.check(
        key is not None
        and verify_signature(key, JOURNAL_SIG_TAG, record.entry_bytes, record.signature),
        "not signed by the enclave key it introduces",
    )
    r.check(
        e.policy_digest == policy.digest,
        f"journal belongs to policy {bytes(e.policy_digest).hex()[:16]}…, "
        f"not {policy.digest.hex()[:16]}…",
    )
    mode, threshold, shares = _check_state_key(r, g, policy)
    r.done()
    return RunState(
        policy_digest=policy.digest,
        run_id=bytes(g.run_id),
        platform=g.platform,
        measurement=bytes(g.measurement),
        hpke_public_key=bytes(g.hpke_public_key),
        signing_public_key=bytes(g.signing_public_key),
        tls_spki_sha256=bytes(g.tls_spki_sha256),
        genesis=record,
        head=record.head,
        state_key_mode=mode,
        state_key_threshold=threshold,
        state_key_shares=shares,
    )


def _check_state_key(
    r: _Refuse, g: jpb.Genesis, policy: Policy
) -> tuple[str, int, tuple[StateShare, ...]]:
    """The genesis's state key custody must be the policy's: the same mode, and for a
    consortium key the policy's threshold and exactly one share per party, in policy order.

    A genesis written before the field existed has none: a platform key.
    """
    sk = g.state_key
    mode = sk.mode if g.HasField("state_key") else "platform"
    want = str(policy.state["key"])
    if not r.check(
        mode == want, f"its state key is held by {quoted(mode)}, the policy says {want!r}"
    ):
        return mode, 0, ()
    if mode == "platform":
        r.check(sk.threshold == 0 and not sk.shares, "a platform state key has no shares")
        return mode, 0, ()
    k = int(policy.state["threshold"])
    r.check(sk.threshold == k, f"state key threshold {sk.threshold}, the policy's is {k}")
    got = [s.party_id for s in sk.shares]
    wanted = [p.id for p in policy.parties]
    r.check(
        got == wanted,
        f"state key shares are held by [{', '.join(quoted(p) for p in got[:20])}], "
        f"not one per party in policy order {wanted}",
    )
    for s in sk.shares[: len(wanted)]:
        r.check(
            len(s.share_sha256) == 32,
            f"the commitment to the share of {quoted(s.party_id)} is not 32 bytes",
        )
        r.check(
            0 < len(s.sealed) <= SEALED_STATE_SHARE_MAX,
            f"the sealed share of {quoted(s.party_id)} is {len(s.sealed)} bytes",
        )
    shares = tuple(
        StateShare(s.party_id, bytes(s.sealed), bytes(s.share_sha256)) for s in sk.shares
    )
    return mode, k, shares


def apply(state: RunState | None, record: Record, policy: Policy) -> RunState:
    """The run state after ``record``; raise JournalError if the record does not belong there.

    The single place that decides what an entry means: the enclave folds it over its journal
    at every start and applies each new entry through it; audit does the same.
    """
    if state is None:
        return _genesis(record, policy)
    r = _Refuse(record)
    e = record.entry
    key = _key(state.signing_public_key)
    r.check(e.version == JOURNAL_VERSION, f"entry version {e.version}, want {JOURNAL_VERSION}")
    r.check(
        record.seq == state.head.seq + 1,
        f"comes after entry #{state.head.seq} (an entry is missing, repeated or out of order)",
    )
    r.check(
        e.prev_sha256 == state.head.sha256, "does not extend the entry before it (chain broken)"
    )
    r.check(e.policy_digest == policy.digest, "is for another policy")
    r.check(
        key is not None
        and verify_signature(key, JOURNAL_SIG_TAG, record.entry_bytes, record.signature),
        "not signed by this journal's enclave key",
    )
    r.done()  # the rest is meaningless on a broken chain
    kind = record.kind
    r.check(kind != "genesis", "a second genesis")
    r.check(state.phase not in TERMINAL, f"comes after the run ended ({state.phase})")
    r.done()
    new: dict[str, Any] = {"head": record.head}
    handler = _HANDLERS.get(kind)
    if handler is None:
        r.check(False, "unknown entry kind")
    else:
        new |= handler(r, state, record, policy)
    r.done()
    return dataclasses.replace(state, **new)


def _want_phase(r: _Refuse, state: RunState, *phases: str) -> None:
    r.check(state.phase in phases, f"not allowed in phase {state.phase!r}")


def _on_shard(r: _Refuse, state: RunState, record: Record, policy: Policy) -> dict[str, Any]:
    _want_phase(r, state, "collecting")
    sa = record.entry.shard_accepted
    header = _check_header(r, policy, sa.header)
    if header is None:
        return {}
    body = _check_receipt(r, state, record, policy, header, sa.header.header)
    r.check(
        state.shard(header.party_id, header.shard_id) is None,
        f"shard {header.party_id}/{header.shard_id} was already accepted",
    )
    gone = state.withdrawal(header.party_id, header.shard_id)
    r.check(
        gone is None,
        f"shard {header.party_id}/{header.shard_id} was withdrawn (entry #{gone and gone.seq}); "
        "a withdrawn shard id is not used again",
    )
    if body is None:
        return {}
    shard = AcceptedShard(
        party_id=header.party_id,
        shard_id=header.shard_id,
        header_raw=bytes(sa.header.header),
        header_signature=bytes(sa.header.signature),
        header=header,
        receipt=sa.receipt,
        rows=int(body.rows),
        seq=record.seq,
        duplicate_tag=bytes(sa.duplicate_tag),
    )
    return {"shards": (*state.shards, shard)}


def _on_closed(r: _Refuse, state: RunState, record: Record, policy: Policy) -> dict[str, Any]:
    _want_phase(r, state, "collecting")
    uc = record.entry.uploads_closed
    refs = [(s.party_id, s.shard_id, bytes(s.header_sha256), s.accepted_seq) for s in uc.shards]
    have = [(s.party_id, s.shard_id, s.header_sha256, s.seq) for s in state.shards]
    r.check(refs == have, "its shard set is not exactly the shards accepted before it")
    missing = state.providers_missing(policy)
    r.check(not missing, f"the start rule does not hold (no shard from {', '.join(missing)})")
    if uc.requested_by:
        r.check(policy.party(uc.requested_by) is not None, f"{uc.requested_by!r} is no party")
    else:
        r.check(bool(policy.start["auto_start"]), "started by the rule, but auto_start is off")
    return {"phase": "training", "uploads_closed": record, "started_by": uc.requested_by}


def _on_checkpoint(r: _Refuse, state: RunState, record: Record, policy: Policy) -> dict[str, Any]:
    _want_phase(r, state, "training")
    c = record.entry.checkpoint
    prev = state.checkpoint
    r.check(
        prev is None or c.step >= prev.step, f"step {c.step} goes back from {prev and prev.step}"
    )
    r.check(len(c.checkpoint_sha256) == 32, "checkpoint digest must be 32 bytes")
    eps: float | None = None
    if policy.privacy["enabled"]:
        eps = float(c.epsilon)
        target = float(policy.privacy["target_epsilon"])
        r.check(0.0 <= eps <= target, f"ε {eps} outside [0, {target}]")
        r.check(prev is None or prev.epsilon is None or eps >= prev.epsilon, "ε decreased")
    else:
        r.check(c.epsilon < 0, "records ε for a run without DP")
    return {"checkpoint": CheckpointMark(int(c.step), eps, bytes(c.checkpoint_sha256), record.seq)}


def _on_manifest(r: _Refuse, state: RunState, record: Record, policy: Policy) -> dict[str, Any]:
    _want_phase(r, state, "training")
    m = record.entry.manifest
    key = _key(state.signing_public_key)
    if not r.check(
        key is not None
        and verify_signature(key, MANIFEST_SIG_TAG, m.manifest, m.manifest_signature),
        "manifest is not signed by the enclave key",
    ):
        return {}
    try:
        doc = loads_json(m.manifest)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except ValueError:
        r.check(False, "manifest is not JSON")
        return {}
    journal, enclave = doc.get("journal"), doc.get("enclave")
    if not r.check(
        isinstance(journal, dict)
        and isinstance(enclave, dict)
        and isinstance(doc.get("receipts"), list)
        and isinstance(doc.get("recipients"), list),
        "manifest is malformed (journal, enclave, receipts or recipients of the wrong type)",
    ):
        return {}
    assert isinstance(journal, dict) and isinstance(enclave, dict)
    r.check(doc.get("type") == MANIFEST_TYPE, f"manifest type {doc.get('type')!r}")
    r.check(doc.get("policy_digest") == policy.digest.hex(), "manifest is for another policy")
    r.check(enclave.get("signing_key") == state.signing_public_key.hex(), "manifest enclave key")
    r.check(enclave.get("hpke_key") == state.hpke_public_key.hex(), "manifest HPKE key")
    r.check(doc.get("run_id") == state.run_id.hex(), "manifest names another run")
    r.check(
        journal.get("seq") == record.seq
        and journal.get("prev_sha256") == bytes(record.entry.prev_sha256).hex(),
        "manifest does not name the entry that records it",
    )
    r.check(doc["recipients"] == list(policy.recipients), "manifest recipients")
    receipts, problems = manifest_problems(doc, signing_key=state.signing_public_key, policy=policy)
    for p in problems:
        r.check(False, p)
    assert state.uploads_closed is not None  # phase training
    r.check(doc.get("uploads_closed") == _b64(state.uploads_closed.raw), "manifest start entry")
    r.check(
        receipts == [(s.party_id, s.shard_id, s.header_sha256) for s in state.training_shards],
        "manifest receipts are not the shards training used",
    )
    party_rows = [(s.party_id, s.rows) for s in state.data_shards]
    for p in release_problems(doc, policy, party_rows=party_rows):
        r.check(False, p)
    return {
        "phase": "awaiting_approval",
        "manifest": bytes(m.manifest),
        "manifest_signature": bytes(m.manifest_signature),
    }


def _on_approval(r: _Refuse, state: RunState, record: Record, policy: Policy) -> dict[str, Any]:
    _want_phase(r, state, "awaiting_approval")
    signed = record.entry.approval.approval
    party, problems = verify_approval(signed, policy=policy, manifest_sha256=state.manifest_sha256)
    for p in problems:
        r.check(False, p)
    r.check(party not in state.approved_by(), f"{party!r} already approved")
    return {"approvals": (*state.approvals, (party, signed))}


def _on_released(r: _Refuse, state: RunState, record: Record, policy: Policy) -> dict[str, Any]:
    _want_phase(r, state, "awaiting_approval")
    rel = record.entry.released
    r.check(rel.manifest_sha256 == state.manifest_sha256, "releases another manifest")
    listed = [(a.body, a.signature) for a in rel.approvals]
    journaled = [(a.body, a.signature) for _, a in state.approvals]
    r.check(listed == journaled, "its approvals are not the journaled approvals")
    missing = state.approvals_missing(policy)
    r.check(not missing, f"approval still missing from {', '.join(missing)}")
    return {"phase": "released", "release_record": record}


def _on_failed(r: _Refuse, state: RunState, record: Record, policy: Policy) -> dict[str, Any]:
    _want_phase(r, state, "collecting", "training", "awaiting_approval")
    return {"phase": "failed", "detail": record.entry.failed.reason}


def _on_expired(r: _Refuse, state: RunState, record: Record, policy: Policy) -> dict[str, Any]:
    x = record.entry.expired
    expires = policy_expiry_ms(policy)
    r.check(
        expires is not None and x.expires_unix_ms == expires,
        "records an expiry the policy does not set",
    )
    return {"phase": "expired", "detail": f"policy expired (found when {x.refused or 'checked'})"}


def _on_withdrawn(r: _Refuse, state: RunState, record: Record, policy: Policy) -> dict[str, Any]:
    _want_phase(r, state, "collecting")
    w = record.entry.shard_withdrawn
    body, problems = verify_consent(w.request, policy=policy, action="withdraw")
    for p in problems:
        r.check(False, p)
    if body is None:
        return {}
    name = quoted(f"{body.party_id}/{body.shard_id}")
    shard = state.shard(body.party_id, body.shard_id)
    if shard is None:
        gone = state.withdrawal(body.party_id, body.shard_id)
        r.check(
            False,
            f"shard {name} was already withdrawn (entry #{gone.seq})"
            if gone is not None
            else f"withdraws {name}, which is no accepted shard",
        )
        return {}
    limit = int(policy.limits["withdrawals_per_provider"])
    r.check(
        sum(x.party_id == body.party_id for x in state.withdrawn) < limit,
        f"{quoted(body.party_id)} already withdrew {limit} shard(s), the policy's "
        "limits.withdrawals_per_provider",
    )
    r.check(bytes(w.header_sha256) == shard.header_sha256, "header digest is not the shard's")
    r.check(w.accepted_seq == shard.seq, f"names entry #{w.accepted_seq}, not #{shard.seq}")
    withdrawn = WithdrawnShard(
        shard.party_id, shard.shard_id, shard.header_sha256, shard.seq, record.seq
    )
    return {
        "shards": tuple(s for s in state.shards if s is not shard),
        "withdrawn": (*state.withdrawn, withdrawn),
    }


def _on_vetoed(r: _Refuse, state: RunState, record: Record, policy: Policy) -> dict[str, Any]:
    _want_phase(r, state, "awaiting_approval")
    body, problems = verify_consent(record.entry.vetoed.veto, policy=policy, action="veto")
    for p in problems:
        r.check(False, p)
    if body is None:
        return {}
    r.check(
        body.party_id in policy.release["approvals_required_from"],
        f"{quoted(body.party_id)} is not a party the release rule names "
        "(release.approvals_required_from)",
    )
    r.check(body.manifest_sha256 == state.manifest_sha256, "veto is for another manifest")
    return {
        "phase": "vetoed",
        "vetoed_by": body.party_id,
        "detail": f"the release was vetoed by {body.party_id}",
    }


_HANDLERS: dict[str, Callable[[_Refuse, RunState, Record, Policy], dict[str, Any]]] = {
    "shard_accepted": _on_shard,
    "uploads_closed": _on_closed,
    "checkpoint": _on_checkpoint,
    "manifest": _on_manifest,
    "approval": _on_approval,
    "released": _on_released,
    "failed": _on_failed,
    "expired": _on_expired,
    "shard_withdrawn": _on_withdrawn,
    "vetoed": _on_vetoed,
}


def replay(records: Sequence[Record], policy: Policy) -> RunState:
    """Verify the whole journal from genesis and return the run state it describes."""
    if not records:
        raise JournalError("the journal is empty")
    state: RunState | None = None
    for record in records:
        state = apply(state, record, policy)
    assert state is not None
    return state


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------- audit


@dataclass(frozen=True)
class AuditReport:
    """A verified journal: the state it leads to, the genesis claims, a readable history."""

    state: RunState
    records: tuple[Record, ...]
    platform: str
    measurement: bytes

    def history(self) -> list[dict[str, Any]]:
        return [describe(r) for r in self.records]

    def to_json(self) -> dict[str, Any]:
        st = self.state
        return {
            "verified": True,
            "policy_digest": st.policy_digest.hex(),
            "run_id": st.run_id.hex(),
            "platform": self.platform,
            "measurement": self.measurement.hex(),
            "enclave_signing_key": st.signing_public_key.hex(),
            "head": st.head.to_json(),
            "phase": st.phase,
            "state_key": {
                "mode": st.state_key_mode,
                "threshold": st.state_key_threshold,
                "holders": [s.party_id for s in st.state_key_shares],
            },
            "withdrawn": [
                {"party": w.party_id, "shard": w.shard_id, "seq": w.seq} for w in st.withdrawn
            ],
            "vetoed_by": st.vetoed_by or None,
            "entries": self.history(),
        }


def audit(
    records: Sequence[Record],
    policy: Policy,
    *,
    allow_simulated: bool = False,
    now: _dt.datetime | None = None,
    getter: CollateralGetter | None = None,
) -> AuditReport:
    """Replay ``records`` and verify the genesis evidence (and a manifest's) against the policy.

    The evidence is what ties the journal's signing key to genuine hardware running the
    pinned code under this policy: without it the chain proves only self-consistency.
    ``getter`` fetches collateral the genesis evidence does not carry (TDX, SGX).
    """
    from cctrain.attestation.binding import EnclaveIdentity, report_data_for
    from cctrain.attestation.pipeline import verify_for_policy
    from cctrain.errors import AttestationError, ReleaseError
    from cctrain.protocol import evidence_from_pb
    from cctrain.release import verify_manifest

    state = replay(records, policy)
    simulated = state.genesis.entry.genesis.evidence.platform == "simulated"
    if simulated and not (allow_simulated and policy.attestation["allow_simulated"]):
        raise JournalError(
            "journal entry #0 (genesis): its evidence is simulated; refusing without "
            "--allow-simulated (and a policy that allows it)"
        )
    identity = EnclaveIdentity(
        state.hpke_public_key, state.signing_public_key, state.tls_spki_sha256
    )
    try:
        claims = verify_for_policy(
            evidence_from_pb(state.genesis.entry.genesis.evidence),
            policy,
            expected_report_data=report_data_for(
                identity, policy_digest=policy.digest, nonce=genesis_nonce(state.run_id)
            ),
            now=now,
            getter=getter,
            allow_simulated=simulated,
        )
    except AttestationError as exc:
        raise JournalError(f"journal entry #0 (genesis): evidence does not hold: {exc}") from None
    if claims.measurement != state.measurement or claims.platform != state.platform:
        raise JournalError(
            "journal entry #0 (genesis): measurement or platform differs from its evidence"
        )
    if state.manifest:
        try:
            verify_manifest(
                state.manifest,
                state.manifest_signature,
                policy=policy,
                allow_simulated=allow_simulated,
                now=now,
            )
        except ReleaseError as exc:
            seq = next(r.seq for r in records if r.kind == "manifest")
            raise JournalError(f"journal entry #{seq} (manifest built): {exc}") from None
    return AuditReport(state, tuple(records), claims.platform, claims.measurement)


def _when(ms: int) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc).isoformat(timespec="seconds")


def describe(record: Record) -> dict[str, Any]:
    """One entry as a readable, JSON-ready event (hashes in full; no plaintext exists here)."""
    e = record.entry
    out: dict[str, Any] = {
        "seq": record.seq,
        "sha256": record.sha256.hex(),
        "kind": record.kind,
        "time": _when(e.time_unix_ms),
    }
    kind = record.kind
    if kind == "genesis":
        g = e.genesis
        out |= {
            "run_id": g.run_id.hex(),
            "platform": g.platform,
            "measurement": g.measurement.hex(),
            "enclave_signing_key": g.signing_public_key.hex(),
            "enclave_hpke_key": g.hpke_public_key.hex(),
            "state_key": g.state_key.mode or "platform",
        }
        if g.state_key.mode == "consortium":
            out["state_key_threshold"] = int(g.state_key.threshold)
            out["state_key_holders"] = [s.party_id for s in g.state_key.shares]
    elif kind == "shard_accepted":
        h = pb.ShardHeader()
        h.ParseFromString(e.shard_accepted.header.header)
        body = pb.ReceiptBody()
        body.ParseFromString(e.shard_accepted.receipt.body)
        out |= {
            "party": h.party_id,
            "shard": h.shard_id,
            "rows": int(body.rows),
            "bytes": int(h.plaintext_size),
            "commitment": body.commitment.hex(),
        }
    elif kind == "uploads_closed":
        uc = e.uploads_closed
        out |= {
            "shards": [f"{s.party_id}/{s.shard_id}" for s in uc.shards],
            "requested_by": uc.requested_by or None,
        }
    elif kind == "checkpoint":
        c = e.checkpoint
        out |= {"step": int(c.step), "epsilon": c.epsilon if c.epsilon >= 0 else None}
    elif kind == "manifest":
        doc = loads_json(e.manifest.manifest)
        cert = doc.get("dp_certificate") or {}
        out |= {
            "manifest_sha256": hashlib.sha256(e.manifest.manifest).hexdigest(),
            "model_sha256": doc.get("model_sha256"),
            "epsilon": cert.get("epsilon"),
        }
    elif kind == "approval":
        body = pb.ApprovalBody()
        body.ParseFromString(e.approval.approval.body)
        out |= {"party": body.party_id, "manifest_sha256": body.manifest_sha256.hex()}
    elif kind == "released":
        parties = []
        for a in e.released.approvals:
            body = pb.ApprovalBody()
            body.ParseFromString(a.body)
            parties.append(body.party_id)
        out |= {"manifest_sha256": e.released.manifest_sha256.hex(), "approved_by": parties}
    elif kind == "shard_withdrawn":
        w = e.shard_withdrawn
        body = pb.ConsentBody()
        body.ParseFromString(w.request.body)
        out |= {
            "party": body.party_id,
            "shard": body.shard_id,
            "header_sha256": w.header_sha256.hex(),
            "accepted_seq": int(w.accepted_seq),
        }
    elif kind == "vetoed":
        body = pb.ConsentBody()
        body.ParseFromString(e.vetoed.veto.body)
        out |= {"party": body.party_id, "manifest_sha256": body.manifest_sha256.hex()}
    elif kind == "failed":
        out |= {"reason": e.failed.reason}
    elif kind == "expired":
        out |= {"expires": _when(e.expired.expires_unix_ms), "refused": e.expired.refused}
    return out


def summary_line(event: Mapping[str, Any]) -> str:
    """A one-line text rendering of :func:`describe`'s event."""
    kind = event["kind"]
    renderers: dict[str, Callable[[Mapping[str, Any]], str]] = {
        "genesis": lambda e: (
            f"run {e['run_id'][:16]}… on {e['platform']}, enclave key {e['enclave_signing_key'][:16]}…"
            + (
                f", state key held by the consortium ({e['state_key_threshold']} of "
                f"{len(e['state_key_holders'])})"
                if e.get("state_key") == "consortium"
                else ""
            )
        ),
        "shard_accepted": lambda e: (
            f"{e['party']}/{e['shard']}: {e['rows']} rows, commitment {e['commitment'][:16]}…"
        ),
        "uploads_closed": lambda e: (
            f"{len(e['shards'])} shards; started by {e['requested_by'] or 'the start rule'}"
        ),
        "checkpoint": lambda e: (
            f"step {e['step']}" + (f", ε {e['epsilon']:.4f}" if e["epsilon"] is not None else "")
        ),
        "manifest": lambda e: (
            f"model {e['model_sha256'][:16]}…, manifest {e['manifest_sha256'][:16]}…"
            + (f", ε {e['epsilon']:.4f}" if e["epsilon"] is not None else "")
        ),
        "approval": lambda e: f"by {e['party']} of manifest {e['manifest_sha256'][:16]}…",
        "released": lambda e: (
            "recipients may fetch"
            + (f"; approved by {', '.join(e['approved_by'])}" if e["approved_by"] else "")
        ),
        "shard_withdrawn": lambda e: (
            f"{e['party']}/{e['shard']} (accepted in #{e['accepted_seq']}): out of the "
            "training set, its ciphertext deleted"
        ),
        "vetoed": lambda e: (
            f"by {e['party']} of manifest {e['manifest_sha256'][:16]}…; nothing is released"
        ),
        "failed": lambda e: e["reason"],
        "expired": lambda e: f"at {e['expires']} (refused {e['refused']})",
    }
    text = renderers[kind](event)
    return f"#{event['seq']:<4} {event['time']}  {KINDS[kind]:<15} {text}"


def iter_pages(
    fetch: Callable[[int], tuple[list[bytes], int]],
    *,
    max_bytes: int = MAX_JOURNAL_BYTES,
    from_seq: int = 0,
) -> Iterator[bytes]:
    """Every record from ``from_seq`` on of a paged source ``fetch(from_seq) -> (records,
    head_seq)``, at most ``max_bytes`` of them: a longer journal is refused, not read into
    memory."""
    seq = from_seq
    total = 0
    while True:
        raws, head = fetch(seq)
        for raw in raws:
            total += len(raw)
            if len(raw) > MAX_ENTRY_BYTES or total > max_bytes:
                raise JournalError(
                    f"the journal is longer than {max_bytes} bytes (at entry #{seq}), or "
                    f"entry #{seq} is longer than {MAX_ENTRY_BYTES} bytes: not reading it"
                )
            seq += 1
            yield raw
        if seq > head or not raws:
            return
