"""The SDK for data owners and recipients: attest, then talk over the pinned channel.

::

    owner = DataOwner("https://127.0.0.1:50051", policy="policy.signed.json", key="hospital-a.key",
                      allow_simulated=True)
    receipt = owner.upload("hospital-a.npz")

Every connection first attests the enclave with a fresh nonce (parse → verify →
validate against the signed policy), and only then uses the channel, which is
pinned to the TLS certificate the evidence binds.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import socket
import ssl
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError

from cctrain.attestation.base import CollateralGetter, Evidence, VerifiedClaims
from cctrain.attestation.binding import EnclaveIdentity, report_data_for, spki_sha256
from cctrain.attestation.pipeline import (
    SIMULATED_WARNING,
    verify_for_policy,
    verify_gpus_for_policy,
)
from cctrain.consent import DeletionReceipt, verify_deletion_receipt
from cctrain.crypto import hpke
from cctrain.crypto.keys import PartyKeys
from cctrain.crypto.stream import NONCE_PREFIX_SIZE, StreamSealer
from cctrain.dpcheck import CertifiedTensors, certified_tensors, weights_problems
from cctrain.errors import (
    AttestationError,
    AuthenticationError,
    CctrainError,
    EnclaveAddressError,
    EnclaveLockedError,
    EnclaveUnavailableError,
    JournalError,
    KeyFileError,
    PermissionDeniedError,
    PolicyError,
    PolicyMismatchError,
    ProtocolError,
    ReceiptError,
    ReleaseError,
    ReleaseFileError,
    ShardError,
    UploadRejectedError,
    describe_parse_error,
)
from cctrain.files import atomic_write
from cctrain.ids import SHARD_ID, is_shard_id
from cctrain.journal import (
    AuditReport,
    Record,
    RunState,
    apply,
    audit,
    iter_pages,
    parse_record,
    replay,
)
from cctrain.memory import JournalBehindError, PartyMemory, dataset_key
from cctrain.policy import SignedPolicy
from cctrain.protocol import (
    DEFAULT_CHUNK_SIZE,
    HEADER_VERSION,
    MAX_MESSAGE_SIZE,
    MD_BODY,
    MD_NONCE,
    MD_PARTY,
    MD_POLICY,
    MD_SIG,
    MD_TIME,
    Receipt,
    commitment_key,
    commitment_opening_info,
    evidence_from_pb,
    expected_chunk_count,
    opens_commitment,
    request_signing_bytes,
    sha256,
    shard_commitment,
    shard_key_info,
    sign_approval,
    sign_consent,
    sign_header,
    sign_trailer,
    state_share_commitment,
    state_share_info,
    state_unlock_info,
    verify_receipt,
)
from cctrain.release import (
    BUNDLE_TYPE,
    VerifiedRelease,
    evidence_digest,
    unseal_weights,
    verify_manifest,
    verify_release_record,
)
from cctrain.untrusted import loads_json
from cctrain.v1 import enclave_pb2 as pb
from cctrain.v1 import enclave_pb2_grpc as pb_grpc

log = logging.getLogger("cctrain")

TLS_SERVER_NAME = "cctrain-enclave"
SERVICE = "/cctrain.v1.Enclave/"
CHANNEL_OPTIONS = [
    ("grpc.ssl_target_name_override", TLS_SERVER_NAME),
    ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
    ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
]
SHARD_FORMATS = {".npz": "npz", ".csv": "csv", ".parquet": "parquet"}
#: What a session that attested a locked enclave may still call: the attested HPKE key is
#: that start's unlock key, so nothing may be sealed to it but a state-key share.
SERVED_WHILE_LOCKED = frozenset({"Attest", "GetStatus", "GetJournal", "Unlock"})
LOCKED_SESSION = (
    "the enclave was locked when this session attested it (its state key is held by the "
    "consortium and not all shares are back); reconnect after unlock (cctrain unlock)"
)


class SimulatedEvidenceWarning(UserWarning):
    """Emitted on every use of simulated (never trustworthy) attestation."""


def _parse_address(address: str) -> tuple[str, int]:
    addr = address.removeprefix("https://").removeprefix("grpcs://").rstrip("/")
    host, sep, port = addr.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EnclaveAddressError(
            f"enclave address must be host:port (port 1-65535), got {address!r}"
        )
    return host, int(port)


def fetch_server_certificate(host: str, port: int, *, timeout: float = 10.0) -> bytes:
    """The certificate the server presents (DER), unverified: attestation decides whether to trust it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=TLS_SERVER_NAME) as tls:
                der = tls.getpeercert(binary_form=True)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_NONAME:  # no such host (not a resolver that is down)
            raise EnclaveAddressError(
                f"enclave host {host!r} does not resolve: {exc.strerror}"
            ) from None
        raise EnclaveUnavailableError(
            f"cannot resolve the enclave host {host!r}: {exc.strerror}", code="UNAVAILABLE"
        ) from None
    except OSError as exc:
        raise EnclaveUnavailableError(
            f"cannot reach the enclave at {host}:{port}: {exc.strerror or exc}", code="UNAVAILABLE"
        ) from None
    if not der:
        raise ProtocolError("the enclave presented no TLS certificate")
    return der


#: How the enclave's interceptor refuses a request signed for another policy (auth.py).
_POLICY_MISMATCH = re.compile(
    r"policy mismatch: the request is for policy '?([0-9a-f]{64})'?, "
    r"this enclave serves ([0-9a-f]{64})"
)


def map_rpc_error(exc: grpc.RpcError, *, upload: bool = False) -> CctrainError:
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    name = code.name if code is not None else "UNKNOWN"
    msg = f"{details} [{name}]"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return EnclaveUnavailableError(f"the enclave is unavailable: {msg}", code=name)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        mismatch = _POLICY_MISMATCH.search(details)
        if mismatch is not None:
            return PolicyMismatchError(client=mismatch[1], enclave=mismatch[2])
        return AuthenticationError(msg, code=name)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDeniedError(msg, code=name)
    if upload and code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.ABORTED,
    ):
        return UploadRejectedError(msg, code=name)
    return ProtocolError(msg, code=name)


@dataclass(frozen=True)
class AttestedEnclave:
    """What a successful attestation established."""

    claims: VerifiedClaims
    evidence: Evidence
    hpke_public_key: bytes
    signing_public_key: bytes
    tls_certificate_der: bytes
    policy_digest: bytes
    #: Attested while locked: ``hpke_public_key`` is that start's unlock key (see Unlock),
    #: ``signing_public_key`` the journal's.
    locked: bool = False
    #: The verified claims of each GPU the enclave trains on (policy ``attestation.gpu``).
    gpu_claims: tuple[VerifiedClaims, ...] = ()

    @property
    def evidence_sha256(self) -> bytes:
        """SHA-256 of the verified evidence (what a receipt and the journal name)."""
        return evidence_digest(self.evidence)


def check_attestation(
    resp: pb.AttestResponse,
    *,
    signed_policy: SignedPolicy,
    nonce: bytes,
    tls_certificate_der: bytes,
    allow_simulated: bool,
    now: _dt.datetime | None = None,
    getter: CollateralGetter | None = None,
) -> AttestedEnclave:
    """parse → verify → validate one Attest answer; raise AttestationError naming every problem."""
    policy = signed_policy.policy
    evidence = evidence_from_pb(resp.evidence)
    if resp.policy_digest != policy.digest:
        raise PolicyMismatchError(
            client=policy.digest.hex(), enclave=bytes(resp.policy_digest).hex()
        )
    if bytes(resp.tls_certificate) != tls_certificate_der:
        raise AttestationError("the attested TLS certificate is not the one this connection uses")
    simulated = evidence.platform == "simulated"
    if simulated:
        if not policy.attestation["allow_simulated"]:
            raise AttestationError(
                "the enclave offers simulated evidence; the policy does not allow it"
            )
        if not allow_simulated:
            raise AttestationError(
                "the enclave offers simulated evidence; refusing (pass allow_simulated=True / "
                "--allow-simulated to accept it for local development)"
            )
        warnings.warn(SIMULATED_WARNING, SimulatedEvidenceWarning, stacklevel=3)
    cert = x509.load_der_x509_certificate(tls_certificate_der)
    identity = EnclaveIdentity(
        hpke_public_key=bytes(resp.hpke_public_key),
        signing_public_key=bytes(resp.signing_public_key),
        tls_spki_sha256=spki_sha256(cert),
    )
    claims = verify_for_policy(
        evidence,
        policy,
        expected_report_data=report_data_for(identity, policy_digest=policy.digest, nonce=nonce),
        now=now,
        getter=getter,
        allow_simulated=simulated and allow_simulated,
    )
    gpus = verify_gpus_for_policy(
        claims, [evidence_from_pb(e) for e in resp.gpu_evidence], policy, now=now
    )
    return AttestedEnclave(
        claims=claims,
        gpu_claims=tuple(gpus),
        evidence=evidence,
        hpke_public_key=identity.hpke_public_key,
        signing_public_key=identity.signing_public_key,
        tls_certificate_der=tls_certificate_der,
        policy_digest=policy.digest,
        locked=bool(resp.locked),
    )


class EnclaveSession:
    """An attested, certificate-pinned, request-signing connection to one enclave."""

    def __init__(
        self,
        address: str,
        *,
        policy: SignedPolicy | str | Path,
        key: PartyKeys | str | Path,
        allow_simulated: bool = False,
        now: _dt.datetime | None = None,
        getter: CollateralGetter | None = None,
        clock: Callable[[], float] = time.time,
        state_dir: str | Path | None = None,
    ) -> None:
        """``clock`` (seconds since the epoch) stamps each signed request; ``now`` is the
        time attestation evidence is verified at (default: the current time).

        ``state_dir`` (default ``$CCTRAIN_HOME`` or ``~/.cctrain``) holds what this party
        remembers: the newest journal head it verified per policy, its approvals and its ε
        ledger (:mod:`cctrain.memory`). After attesting, the session fetches and verifies
        the enclave's journal and refuses ("fork or rollback") one that does not extend it.
        """
        self._clock = clock
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.signed_policy = (
            policy if isinstance(policy, SignedPolicy) else SignedPolicy.load(Path(policy))
        )
        self.signed_policy.require_complete()
        self.policy = self.signed_policy.policy
        self.keys = key if isinstance(key, PartyKeys) else PartyKeys.load(Path(key))
        party = self.policy.party(self.keys.party_id)
        if party is None or party.signing_key != self.keys.signing_public:
            raise KeyFileError(
                f"the key of {self.keys.party_id!r} is not a party key of this policy "
                f"{'(another signing key is listed)' if party else '(no such party)'}"
            )
        self.address = address
        self._allow_simulated = allow_simulated
        self._now = now
        self._getter = getter
        host, port = _parse_address(address)
        der = fetch_server_certificate(host, port)
        cert = x509.load_der_x509_certificate(der)
        # Requests are signed for this TLS key; attestation below decides whether to trust it.
        self._tls_spki_sha256 = spki_sha256(cert)
        pem = cert.public_bytes(serialization.Encoding.PEM)
        self._channel = grpc.secure_channel(
            f"{host}:{port}",
            grpc.ssl_channel_credentials(root_certificates=pem),
            options=CHANNEL_OPTIONS,
        )
        self.stub = pb_grpc.EnclaveStub(self._channel)  # type: ignore[no-untyped-call]
        nonce = os.urandom(32)
        try:
            resp = self.unary("Attest", pb.AttestRequest(nonce=nonce))
            self.enclave = check_attestation(
                resp,
                signed_policy=self.signed_policy,
                nonce=nonce,
                tls_certificate_der=der,
                allow_simulated=allow_simulated,
                now=now,
                getter=getter,
            )
            self.memory = PartyMemory(self.state_dir)
            self.journal_records: list[Record] = []
            try:
                self.journal_view = self.verified_journal()
            except BaseException:
                self.memory.close()
                raise
        except BaseException:
            self._channel.close()  # an unattested channel is never handed out
            raise

    # -- request authentication
    def metadata(self, method: str, body: bytes) -> list[tuple[str, Any]]:
        """The signed request metadata for ``method`` with this serialized ``body`` (party id, time, nonce, signature)."""
        t = int(self._clock() * 1000)
        nonce = os.urandom(16)
        body_sha256 = sha256(body)
        sig = self.keys.signing_key.sign(
            request_signing_bytes(
                method=SERVICE + method,
                party=self.keys.party_id,
                time_ms=t,
                nonce=nonce,
                policy_digest=self.policy.digest,
                tls_spki_sha256=self._tls_spki_sha256,
                body_sha256=body_sha256,
            )
        )
        return [
            (MD_PARTY, self.keys.party_id),
            (MD_BODY, body_sha256.hex()),
            (MD_POLICY, self.policy.digest.hex()),
            (MD_TIME, str(t)),
            (MD_NONCE, nonce.hex()),
            (MD_SIG, sig),
        ]

    @property
    def locked(self) -> bool:
        """Whether the enclave was locked (waiting for state-key shares) when this session
        attested it. A locked session serves only :meth:`unlock`, status and the journal:
        reconnect once the enclave is unlocked."""
        return self.enclave.locked

    def _require_unlocked(self) -> None:
        if self.locked:
            raise EnclaveLockedError(LOCKED_SESSION, code="FAILED_PRECONDITION")

    def unary(self, method: str, request: Any, *, timeout: float = 60.0) -> Any:
        """Call the unary RPC ``method`` with ``request``, signed; gRPC errors become cctrain errors."""
        if method not in SERVED_WHILE_LOCKED:
            self._require_unlocked()
        body = request.SerializeToString()
        try:
            return getattr(self.stub, method)(
                request, metadata=self.metadata(method, body), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise map_rpc_error(exc) from None

    def close(self) -> None:
        """Close the channel (also on leaving a ``with`` block)."""
        self._channel.close()
        self.memory.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> pb.GetStatusResponse:
        """The enclave's phase, detail, receipts so far and what is still missing."""
        resp: pb.GetStatusResponse = self.unary("GetStatus", pb.GetStatusRequest())
        return resp

    def start_training(self) -> str:
        """Ask the enclave to start; it does only if the policy's start rule holds."""
        resp: pb.StartTrainingResponse = self.unary("StartTraining", pb.StartTrainingRequest())
        self.verified_journal()  # remember the head that closed uploads
        return resp.phase

    def watch(self, *, timeout: float | None = None) -> Iterator[TrainingProgress]:
        """Training progress as it happens (step, epoch, loss, ε spent) until the run ends."""
        self._require_unlocked()
        req = pb.WatchTrainingRequest()
        try:
            for ev in self.stub.WatchTraining(
                req,
                metadata=self.metadata("WatchTraining", req.SerializeToString()),
                timeout=timeout,
            ):
                # A phase change carries no step: protobuf's default 0.0 is not a loss.
                phase_only = ev.total_steps == 0
                yield TrainingProgress(
                    phase=ev.phase,
                    step=ev.step,
                    total_steps=ev.total_steps,
                    epoch=ev.epoch,
                    loss=None if phase_only or math.isnan(ev.loss) else ev.loss,
                    epsilon=ev.epsilon if ev.epsilon >= 0 else None,
                    detail=ev.detail,
                )
        except grpc.RpcError as exc:
            raise map_rpc_error(exc) from None

    def wait_for_phase(self, phases: tuple[str, ...], *, timeout: float = 3600) -> str:
        """Block until the run reaches one of ``phases`` (or ``timeout`` seconds pass); return it."""
        deadline = time.monotonic() + timeout
        while True:
            phase = self.status().phase
            if phase in phases:
                self.verified_journal()  # remember the head this party waited for
                return phase
            if phase in ("failed", "expired", "vetoed"):
                raise ProtocolError(f"the run {phase}: {self.status().detail}")
            if time.monotonic() > deadline:
                raise ProtocolError(f"timed out waiting for {phases}; phase is {phase}")
            time.sleep(0.2)

    def journal(self, from_seq: int = 0) -> list[Record]:
        """Every entry of the enclave's journal (from ``from_seq`` on), as signed (verify with
        :meth:`audit`)."""

        def page(seq: int) -> tuple[list[bytes], int]:
            resp: pb.GetJournalResponse = self.unary(
                "GetJournal", pb.GetJournalRequest(from_seq=seq)
            )
            return [bytes(e) for e in resp.entries], int(resp.head_seq)

        return [
            parse_record(raw, position=from_seq + i)
            for i, raw in enumerate(iter_pages(page, from_seq=from_seq))
        ]

    def verified_journal(self) -> RunState:
        """Fetch the enclave's journal and verify it; check it extends what this party saw.

        The journal is replayed under the policy (chain, every signature, every rule) and must
        be signed by the key this session attested. The first time this party meets a run, the
        genesis evidence is verified too, as :meth:`audit` does: it is what proves that the
        journal's keys (and a consortium-held state key) were made by genuine hardware running
        the pinned code under this policy; without it a host could write a journal of its own,
        with keys it knows, and have the parties upload to it or unlock it. After that the
        party remembers the genesis (:mod:`cctrain.memory`), and the journal must extend the
        newest head it verified; otherwise :class:`~cctrain.memory.ForkOrRollbackError`.
        """
        records = self.journal()
        if records and self.memory.knows_genesis(self.policy.digest, records[0].sha256):
            view = replay(records, self.policy)
        else:
            view = audit(
                records,
                self.policy,
                allow_simulated=self._allow_simulated,
                now=self._now,
                getter=self._getter,
            ).state
        while True:
            if view.signing_public_key != self.enclave.signing_public_key:
                raise ProtocolError(
                    "the journal is signed by another key than the attested enclave's"
                )
            try:
                self.memory.observe(self.policy, view, records)
                break
            except JournalBehindError:
                # Another process of this party may have remembered a newer head after this
                # journal was fetched. Fetch what the enclave appended since: it must reach
                # that head; a journal that stops short of it (no new entries) is a rollback.
                more = self.journal(from_seq=len(records))
                if not more:
                    raise
                for record in more:
                    view = apply(view, record, self.policy)
                records = [*records, *more]
        self.journal_view = view
        self.journal_records = records
        return view

    def audit(self, *, now: _dt.datetime | None = None) -> AuditReport:
        """Fetch the journal and verify it: chain, enclave signatures, every party signature
        it carries, the genesis evidence against the policy, and that this is the enclave
        this session attested (the same signing key)."""
        report = audit(
            self.journal(),
            self.policy,
            allow_simulated=self._allow_simulated,
            now=now,
            getter=self._getter,
        )
        if report.state.signing_public_key != self.enclave.signing_public_key:
            raise ProtocolError("the journal is signed by another key than the attested enclave's")
        return report

    def unlock(self) -> pb.UnlockResponse:
        """Return this party's share of the consortium-held state key to the locked enclave.

        Verify the journal, open this party's share in its genesis entry with this party's
        HPKE key, check it against the genesis's commitment, seal it again to the unlock key
        this session attested, bound to the journal head just verified, and send it. The
        answer says whether the enclave is still locked and whose shares it holds.
        """
        if not self.locked:
            st = self.status()
            if st.state_key != "consortium":
                raise ProtocolError(
                    "the enclave's state key is held by the platform: there is nothing to unlock"
                )
            return pb.UnlockResponse(
                locked=st.locked, threshold=st.unlock_threshold, unlocked_by=list(st.unlocked_by)
            )
        state = self.verified_journal()
        party = self.keys.party_id
        mine = state.state_share(party)
        if state.state_key_mode != "consortium" or mine is None:
            raise ProtocolError(
                f"the enclave says it is locked, but its journal holds no state-key share "
                f"for {party!r} (state key: {state.state_key_mode})"
            )
        try:
            share = hpke.open_sealed(
                self.keys.hpke_key,
                mine.sealed,
                info=state_share_info(self.policy.digest, state.run_id, party),
            )
        except hpke.HpkeError:
            raise KeyFileError(
                f"{party!r}'s share of the state key does not open with this key file's HPKE "
                f"key: it is sealed to the hpke_key the policy lists for {party!r}; use the "
                "key file that holds it"
            ) from None
        if state_share_commitment(state.run_id, party, share) != mine.share_sha256:
            raise JournalError(
                f"journal entry #0 (genesis): {party!r}'s share does not match its commitment; "
                "do not unlock this enclave"
            )
        head = state.head
        sealed = hpke.seal(
            x25519_public_raw(self.enclave.hpke_public_key),
            share,
            info=state_unlock_info(self.policy.digest, state.run_id, party, head.seq, head.sha256),
        )
        del share
        resp: pb.UnlockResponse = self.unary(
            "Unlock",
            pb.UnlockRequest(
                sealed_share=sealed, journal_seq=head.seq, journal_head_sha256=head.sha256
            ),
        )
        return resp

    def release_manifest(self, *, now: _dt.datetime | None = None) -> VerifiedRelease:
        """The verified manifest of the finished run (what data providers approve)."""
        st = self.status()
        if not st.manifest:
            raise ProtocolError(f"no release manifest yet (phase: {st.phase})")
        return verify_manifest(
            st.manifest,
            st.manifest_signature,
            policy=self.policy,
            allow_simulated=self._allow_simulated,
            now=now,
        )


def default_state_dir() -> Path:
    return Path(os.environ.get("CCTRAIN_HOME", Path.home() / ".cctrain"))


def file_sha256(path: Path) -> tuple[bytes, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
            size += len(block)
    return h.digest(), size


#: The members an NPZ shard holds, exactly (the enclave checks everything else).
NPZ_MEMBERS = frozenset({"features.npy", "labels.npy"})


def check_shard_file(path: str | Path) -> str:
    """The shard's format (``npz``, ``csv`` or ``parquet``) after the checks that need no
    policy: a supported extension, a readable regular file, for NPZ a zip of exactly
    ``features`` and ``labels``, for Parquet the ``PAR1`` magic at both ends (read without
    pyarrow: the SDK only streams the file's bytes). Raise :class:`ShardError` before
    anything is sent. The enclave checks the content against the policy's schema."""
    path = Path(path)
    fmt = SHARD_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ShardError(f"{path}: unsupported shard format (use .npz, .csv or .parquet)")
    if not path.is_file():
        raise ShardError(f"{path}: no such shard file")
    try:
        if fmt == "npz":
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
            if names != NPZ_MEMBERS:
                raise ShardError(
                    f"{path}: an NPZ shard holds exactly 'features' and 'labels', "
                    f"this one {sorted(n.removesuffix('.npy') for n in names)}"
                )
        elif fmt == "parquet":
            with open(path, "rb") as fh:
                head = fh.read(4)
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(size - 4, 0))
                tail = fh.read(4)
            if size < 12 or head != b"PAR1" or tail != b"PAR1":
                raise ShardError(f"{path} is not a Parquet file (no 'PAR1' magic at both ends)")
        else:
            with open(path, "rb"):
                pass
    except zipfile.BadZipFile:
        raise ShardError(f"{path} is not an NPZ file (not a zip archive)") from None
    except OSError as exc:
        raise ShardError(f"cannot read shard {path}: {exc.strerror}") from None
    return fmt


ProgressFn = Callable[[int, int], None]


@dataclass
class _UploadOutcome:
    """What one upload stream's request generator (on gRPC's thread) learned: the
    commitment it signed, or why it sent no trailer."""

    commitment: bytes | None = None
    plaintext_sha256: bytes | None = None
    error: CctrainError | None = None


def _file_fingerprint(path: Path) -> tuple[int, bytes]:
    """(size, a fingerprint of the file's size and modification time): a resume record
    applies only to the file it was made for (the trailer's commitment, which the enclave
    checks against what it decrypted, is what catches a file changed in place)."""
    st = path.stat()
    return st.st_size, sha256(
        b"cctrain/resume-fingerprint/v1\x00%d:%d" % (st.st_size, st.st_mtime_ns)
    )


class DataOwner(EnclaveSession):
    """A data provider: attests the enclave, then uploads encrypted shards and keeps receipts."""

    def upload(
        self,
        path: str | Path,
        *,
        shard_id: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: ProgressFn | bool | None = None,
        state_dir: str | Path | None = None,
        dataset: str | None = None,
    ) -> Receipt:
        """Stream the shard at ``path`` encrypted to the attested enclave; return its verified
        receipt (resuming an upload this party began, from the chunk the enclave holds).

        The file is read once: it is hashed as it is sent, and the party's signed trailer
        carries the commitment after the last chunk (on a resume the prefix the enclave
        already holds is read again, to hash it).

        ``dataset`` names the data in this party's ε ledger: every file uploaded under the
        same name (another export of the same rows, to any policy) counts against one
        lifetime budget. Without it, the ledger names the data by the file's SHA-256, and
        another export of the same rows is another dataset to it. The ledger is checked
        once the file is hashed, before the trailer: a dataset whose lifetime budget this
        policy would exceed is then not committed to, and the enclave keeps nothing of it.
        """
        self._require_unlocked()
        path = Path(path)
        fmt = check_shard_file(path)
        shard_id = shard_id or path.stem
        if not is_shard_id(shard_id):
            raise ShardError(f"shard id {shard_id!r} must match {SHARD_ID.pattern}")
        party = self.keys.party_id
        state_dir = Path(state_dir) if state_dir is not None else self.state_dir
        receipts_dir = state_dir / "receipts" / self.policy.digest.hex()[:16]
        memory_dir = self.memory.state_dir
        created: list[bytes] = []  # the commitment of a grant this call created

        def before_trailer(plaintext_sha256: bytes, commitment: bytes) -> None:
            # The ε ledger, before committing: nothing is accepted of a dataset whose
            # lifetime budget this policy would exceed. This runs on gRPC's request thread:
            # a connection of its own (SQLite connections stay on their thread).
            memory = PartyMemory(memory_dir)
            if memory.grant(
                self.policy,
                dataset_sha256=plaintext_sha256 if dataset is None else dataset_key(dataset),
                plaintext_sha256=commitment,
                party_id=party,
                shard_id=shard_id,
                status="uploaded",
                what=f"upload {path.name}",
                label=dataset,
            ):
                created.append(commitment)

        def refused() -> None:
            # Refused: this upload gave the policy nothing of the dataset. Only a grant this
            # call created is given back, and only when the enclave holds nothing under this
            # shard id: another process of this party may have had it accepted (this one is
            # then refused ALREADY_EXISTS) or be streaming it.
            if created and not self._enclave_holds(shard_id):
                self.memory.forget_grant(self.policy.digest, party, shard_id, created[0])

        return self._send_file(
            path,
            fmt=fmt,
            shard_id=shard_id,
            chunk_size=chunk_size,
            progress=progress,
            receipts_dir=receipts_dir,
            on_refused=refused,
            before_trailer=before_trailer,
        )

    def _send_file(
        self,
        path: Path,
        *,
        fmt: str,
        shard_id: str,
        chunk_size: int,
        progress: ProgressFn | bool | None,
        receipts_dir: Path,
        on_refused: Callable[[], None],
        before_trailer: Callable[[bytes, bytes], None] | None = None,
    ) -> Receipt:
        """Stream ``path`` as ``shard_id`` in one pass (hashed as it is sent; the signed
        trailer commits to it), resuming where the enclave holds a prefix of this same
        upload; the verified receipt. ``before_trailer(plaintext_sha256, commitment)`` runs
        once the file is hashed: if it raises, no trailer is sent (the enclave keeps nothing)
        and its exception is this call's."""
        party, digest = self.keys.party_id, self.policy.digest
        try:
            size, fingerprint = _file_fingerprint(path)
        except OSError as exc:
            raise ShardError(f"cannot read shard {path}: {exc.strerror}") from None
        status = self.unary("UploadStatus", pb.UploadStatusRequest(shard_id=shard_id))
        saved = self.memory.load_resume(digest, party, shard_id)
        if status.state == pb.UploadStatusResponse.ACCEPTED:
            # A receipt whose answer was lost: its commitment is checked where this party
            # still holds the data key of that upload (one more read of the file).
            key = None
            if saved is not None:
                body = pb.ReceiptBody.FromString(status.receipt.body)
                if sha256(saved[0]) == bytes(body.header_sha256):
                    key = saved[2]
            expected = None
            if key is not None:
                try:
                    plain, _ = file_sha256(path)
                except OSError as exc:
                    raise ShardError(f"cannot read shard {path}: {exc.strerror}") from None
                expected = shard_commitment(key, plain)
            receipt = self._check_receipt(status.receipt, shard_id, expected, size, None)
            self._save_receipt(receipts_dir, receipt)
            self.memory.drop_resume(digest, party, shard_id)
            self._remember(receipt)
            return receipt

        resume_from = 0
        if (
            saved is not None
            and status.state == pb.UploadStatusResponse.PARTIAL
            and sha256(saved[0]) == bytes(status.header_sha256)
            and saved[3] == fingerprint
        ):
            header_bytes, signature, data_key, _ = saved
            resume_from = int(status.next_index)
            log.info("resuming upload of %s from chunk %d", shard_id, resume_from)
        else:
            header_bytes, signature, data_key = self._new_header(fmt, shard_id, chunk_size, size)
            self.memory.save_resume(
                digest,
                party,
                shard_id,
                header=header_bytes,
                signature=signature,
                data_key=data_key,
                plaintext_sha256=fingerprint,
            )
        header = pb.ShardHeader()
        header.ParseFromString(header_bytes)
        report = _progress_reporter(progress, size, path.name)
        outcome = _UploadOutcome()
        receipt_msg = None
        try:
            for attempt in range(20):
                outcome = _UploadOutcome()
                requests = self._requests(
                    path,
                    header,
                    header_bytes,
                    signature,
                    data_key,
                    resume_from,
                    report,
                    signing_key=self.keys.signing_key,
                    outcome=outcome,
                    before_trailer=before_trailer,
                )
                try:
                    responses = self.stub.Upload(requests, metadata=self.metadata("Upload", b""))
                    for resp in responses:
                        if resp.WhichOneof("kind") == "receipt":
                            receipt_msg = resp.receipt
                    break
                except grpc.RpcError as exc:
                    if outcome.error is not None:
                        raise outcome.error from None
                    # ABORTED: the enclave is still tearing down our previous, broken stream
                    # for this shard; it changed nothing. Retry shortly with a fresh stream.
                    if exc.code() != grpc.StatusCode.ABORTED or attempt == 19:
                        raise
                    time.sleep(0.25)
        except grpc.RpcError as exc:
            err = map_rpc_error(exc, upload=True)
            if isinstance(err, UploadRejectedError | AuthenticationError | PermissionDeniedError):
                self.memory.drop_resume(digest, party, shard_id)
                on_refused()
            elif isinstance(err, ProtocolError):  # the stream broke: what was acked is kept
                again = type(err) if isinstance(err, EnclaveUnavailableError) else ProtocolError
                err = again(f"{err}; run the upload again to resume", code=err.code)
            raise err from None
        except CctrainError:  # before_trailer refused: no trailer went, nothing is kept
            self.memory.drop_resume(digest, party, shard_id)
            raise
        finally:
            report(None, None)
        if outcome.error is not None:
            self.memory.drop_resume(digest, party, shard_id)
            raise outcome.error
        if receipt_msg is None:
            raise ProtocolError("the enclave closed the upload without a receipt")
        receipt = self._check_receipt(
            receipt_msg, shard_id, outcome.commitment, size, sha256(header_bytes)
        )
        self._save_receipt(receipts_dir, receipt)
        self.memory.drop_resume(digest, party, shard_id)
        self._remember(receipt)
        return receipt

    def _remember(self, receipt: Receipt) -> None:
        """Verify the journal holds the shard this receipt is for and remember its head: a
        state restored to before the receipt is then a rollback to this party too."""
        view = self.verified_journal()
        held = view.shard(receipt.party_id, receipt.shard_id)
        if (held is None or held.header_sha256 != receipt.header_sha256) and view.withdrawal(
            receipt.party_id, receipt.shard_id
        ) is None:
            raise ProtocolError(
                f"the enclave gave a receipt for shard {receipt.shard_id!r}, but its journal "
                "does not hold that shard"
            )

    def _enclave_holds(self, shard_id: str) -> bool:
        """Whether the enclave holds an accepted or partial upload of this party's shard id
        (True when it cannot be asked: a grant is then kept, never lost)."""
        try:
            status = self.unary("UploadStatus", pb.UploadStatusRequest(shard_id=shard_id))
        except CctrainError:
            return True
        return bool(status.state != pb.UploadStatusResponse.UNKNOWN)

    def _new_header(
        self, fmt: str, shard_id: str, chunk_size: int, size: int
    ) -> tuple[bytes, bytes, bytes]:
        data_key = os.urandom(32)
        enc = hpke.seal(
            x25519_public_raw(self.enclave.hpke_public_key),
            data_key,
            info=shard_key_info(self.policy.digest, self.keys.party_id, shard_id),
        )
        header = pb.ShardHeader(
            version=HEADER_VERSION,
            policy_digest=self.policy.digest,
            party_id=self.keys.party_id,
            shard_id=shard_id,
            format=fmt,
            encapsulated_key=enc,
            nonce_prefix=os.urandom(NONCE_PREFIX_SIZE),
            chunk_size=chunk_size,
            plaintext_size=size,
            chunk_count=expected_chunk_count(size, chunk_size),
            created_unix_ms=int(time.time() * 1000),
            commitment_key_sealed=hpke.seal(
                self.keys.hpke_key.public_key(),
                commitment_key(data_key),
                info=commitment_opening_info(self.policy.digest, self.keys.party_id, shard_id),
            ),
        )
        header_bytes = header.SerializeToString()
        return header_bytes, sign_header(self.keys.signing_key, header_bytes), data_key

    @staticmethod
    def _requests(
        path: Path,
        header: pb.ShardHeader,
        header_bytes: bytes,
        signature: bytes,
        data_key: bytes,
        resume_from: int,
        report: Callable[[int | None, int | None], None],
        *,
        signing_key: Ed25519PrivateKey,
        outcome: _UploadOutcome,
        before_trailer: Callable[[bytes, bytes], None] | None = None,
    ) -> Iterator[pb.UploadRequest]:
        """The header, the chunks (the file read once, hashed as it is sealed), then the
        party's signed trailer. On a resume the acknowledged prefix is read and hashed first
        (the only bytes read twice)."""
        yield pb.UploadRequest(
            header=pb.UploadHeader(
                header=header_bytes, signature=signature, resume_from=resume_from
            )
        )
        header_sha256 = sha256(header_bytes)
        sealer = StreamSealer(data_key, header.nonce_prefix, header_sha256)
        cs = header.chunk_size
        hasher = hashlib.sha256()
        with open(path, "rb") as fh:
            for _ in range(resume_from):
                hasher.update(fh.read(cs))
            sent = resume_from * cs
            report(sent, None)
            for index in range(resume_from, header.chunk_count):
                block = fh.read(cs)
                hasher.update(block)
                last = index == header.chunk_count - 1
                # Filled in place: a nested message passed to a constructor is copied.
                req = pb.UploadRequest()
                req.chunk.index = index
                req.chunk.last = last
                req.chunk.ciphertext = sealer.seal(index, block, last=last)
                yield req
                sent += len(block)
                report(sent, None)
            if sent != header.plaintext_size or fh.read(1):
                outcome.error = ShardError(
                    f"{path} changed size while it was uploaded; nothing of it was kept"
                )
                return
        plaintext_sha256 = hasher.digest()
        commitment = shard_commitment(data_key, plaintext_sha256)
        if before_trailer is not None:
            try:
                before_trailer(plaintext_sha256, commitment)
            except CctrainError as exc:
                outcome.error = exc  # no trailer: the enclave refuses and keeps nothing
                return
        outcome.commitment = commitment
        outcome.plaintext_sha256 = plaintext_sha256
        yield pb.UploadRequest(
            trailer=sign_trailer(
                signing_key,
                header_sha256=header_sha256,
                plaintext_size=int(header.plaintext_size),
                chunk_count=int(header.chunk_count),
                commitment=commitment,
            )
        )

    def _check_receipt(
        self,
        msg: pb.SignedReceipt,
        shard_id: str,
        commitment: bytes | None,
        size: int,
        header_sha256: bytes | None,
    ) -> Receipt:
        """``commitment``: the one this party signed (None where it cannot know it: a lost
        answer after the upload's data key was forgotten)."""
        r = verify_receipt(
            msg, enclave_key=self.enclave.signing_public_key, policy_digest=self.policy.digest
        )
        problems = []
        if r.party_id != self.keys.party_id:
            problems.append(f"party {r.party_id!r}")
        if r.shard_id != shard_id:
            problems.append(f"shard {r.shard_id!r}")
        if commitment is not None and r.commitment != commitment:
            problems.append("plaintext commitment (the file changed, or another upload)")
        if r.plaintext_size != size:
            problems.append("size")
        if header_sha256 is not None and r.header_sha256 != header_sha256:
            problems.append("header digest")
        if problems:
            raise ReceiptError("receipt does not match this upload: " + ", ".join(problems))
        return r

    @staticmethod
    def _save_receipt(directory: Path, receipt: Receipt) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{receipt.party_id}-{receipt.shard_id}.receipt.json"
        path.write_text(json.dumps(receipt.to_json(), indent=2) + "\n")
        return path

    def approve_release(self) -> list[str]:
        """Verify the release manifest, then approve exactly that manifest, signed with this
        party's key (the enclave journals the signature; every verifier checks it)."""
        self._require_unlocked()
        release = self.release_manifest()
        # Approve only a manifest of a journal that extends what this party saw, and never
        # more releases of this policy than it allows (this party is one of the counters).
        view = self.verified_journal()
        if view.manifest_sha256 != release.manifest_sha256:
            raise ProtocolError(
                "the manifest the enclave offers is not the one its journal records "
                f"(phase {view.phase}); not approving"
            )
        self._grant_release(release.manifest)
        index = self.memory.reserve_approval(
            self.policy, self.keys.party_id, view.run_id, release.manifest_sha256
        )
        approval = sign_approval(
            self.keys.signing_key,
            policy_digest=self.policy.digest,
            party_id=self.keys.party_id,
            manifest_sha256=release.manifest_sha256,
            now_ms=int(self._clock() * 1000),
            release_index=index,
        )
        req = pb.ApproveReleaseRequest(approval=approval)
        resp: pb.ApproveReleaseResponse = self.unary("ApproveRelease", req)
        # Remember the head that holds this approval: a state restored to before it is then
        # a rollback to this party too.
        after = self.verified_journal()
        if self.keys.party_id not in after.approved_by():
            raise ProtocolError("the enclave acknowledged the approval but its journal lacks it")
        return list(resp.approvals)

    def _grant_release(self, manifest: dict[str, Any]) -> None:
        """Before approving: each of this party's datasets in the release must stay within its
        lifetime ε budget, counting this policy (recorded at upload, or now if the upload
        was made from another state directory)."""
        from cctrain.release import unb64

        for r in manifest.get("receipts", []):
            body = pb.ReceiptBody()
            body.ParseFromString(unb64(r["body"]))  # verified with the manifest already
            if body.party_id != self.keys.party_id:
                continue
            commitment = bytes(body.commitment)
            dataset = self.memory.shard_dataset(
                self.policy.digest, body.party_id, body.shard_id, commitment
            ) or self._known_dataset(body.shard_id, commitment)
            self.memory.grant(
                self.policy,
                dataset_sha256=dataset or commitment,
                plaintext_sha256=commitment,
                party_id=body.party_id,
                shard_id=body.shard_id,
                status="approved",
                what="approve this release",
            )

    def _known_dataset(self, shard_id: str, commitment: bytes) -> bytes | None:
        """A dataset of this party's ledger (named by its file's SHA-256) that this shard's
        salted commitment opens to: for a shard uploaded from another machine. Its header in
        the journal carries the commitment key sealed to this party's own key."""
        held = self.verified_journal().shard(self.keys.party_id, shard_id)
        if held is None or not held.header.commitment_key_sealed:
            return None
        try:
            key = hpke.open_sealed(
                self.keys.hpke_key,
                held.header.commitment_key_sealed,
                info=commitment_opening_info(self.policy.digest, self.keys.party_id, shard_id),
            )
        except hpke.HpkeError:
            return None
        known = {g.dataset_sha256 for g in self.memory.grants()}
        known |= {d for d, _eps, _label in self.memory.budgets()}
        for d in sorted(known):
            if opens_commitment(commitment, key, d):
                return d
        return None

    # -- consent

    def withdraw(self, shard_id: str, *, state_dir: str | Path | None = None) -> DeletionReceipt:
        """Withdraw one of this party's accepted shards before training starts: the enclave
        drops it from the run and deletes its ciphertext. Return the verified deletion
        receipt (the enclave-signed journal entry carrying this party's signed withdrawal),
        saved beside the upload receipts.

        A retry after a lost answer finds the shard already withdrawn: the receipt is then
        taken from the journal and verified the same way.
        """
        if not is_shard_id(shard_id):
            raise ShardError(f"shard id {shard_id!r} must match {SHARD_ID.pattern}")
        party = self.keys.party_id
        withdrawal = sign_consent(
            self.keys.signing_key,
            policy_digest=self.policy.digest,
            party_id=party,
            action="withdraw",
            shard_id=shard_id,
            now_ms=int(self._clock() * 1000),
        )
        try:
            resp = self.unary("WithdrawShard", pb.WithdrawShardRequest(withdrawal=withdrawal))
            raw = bytes(resp.deletion_receipt)
        except ProtocolError as exc:
            journaled = (
                self._journaled_withdrawal(shard_id) if exc.code == "ALREADY_EXISTS" else None
            )
            if journaled is None:
                raise
            raw = journaled
        receipt = verify_deletion_receipt(
            raw,
            enclave_key=self.enclave.signing_public_key,
            policy=self.policy,
            party_id=party,
            shard_id=shard_id,
        )
        receipts_dir = self._receipts_dir(state_dir)
        self._check_against_upload_receipt(receipts_dir, receipt)
        path = receipts_dir / f"{party}-{shard_id}.deletion.json"
        receipts_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, (json.dumps(receipt.to_json(), indent=2) + "\n").encode())
        # Remember the head holding the deletion receipt. The shard was never trained on in
        # this journal; its ε is given back in the ledger only where every release needs this
        # party's approval: otherwise a host that restores the state from before the
        # withdrawal could still train on the shard and release it to recipients who never
        # saw the withdrawal, and this party would not be asked.
        self.verified_journal()
        accepted = self.journal_records[receipt.accepted_seq].entry.shard_accepted
        commitment = pb.ReceiptBody.FromString(accepted.receipt.body).commitment
        refunded = party in self.policy.release["approvals_required_from"]
        self.memory.set_status(
            self.policy.digest,
            party,
            shard_id,
            bytes(commitment),
            "withdrawn" if refunded else "withdrawn-counted",
        )
        return receipt

    def _journaled_withdrawal(self, shard_id: str) -> bytes | None:
        """The journal's withdrawal entry of our ``shard_id``, if there is one."""
        for record in self.journal():
            if record.kind != "shard_withdrawn":
                continue
            body = pb.ConsentBody()
            try:
                body.ParseFromString(record.entry.shard_withdrawn.request.body)
            except DecodeError:
                continue  # not ours, whatever it is (the receipt check decides on ours)
            if (body.party_id, body.shard_id) == (self.keys.party_id, shard_id):
                return record.raw
        return None

    def _receipts_dir(self, state_dir: str | Path | None) -> Path:
        root = Path(state_dir) if state_dir is not None else self.state_dir
        return root / "receipts" / self.policy.digest.hex()[:16]

    @staticmethod
    def _check_against_upload_receipt(directory: Path, receipt: DeletionReceipt) -> None:
        """The withdrawn shard must be the one our saved receipt names (same signed header)."""
        path = directory / f"{receipt.party_id}-{receipt.shard_id}.receipt.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # no receipt kept here (uploaded from elsewhere): nothing to compare
        if saved.get("header_sha256") != receipt.header_sha256.hex():
            raise ReceiptError(
                f"the deletion receipt withdraws another upload of {receipt.shard_id!r} than "
                f"the one receipted in {path}"
            )

    def veto_release(self) -> str:
        """Verify the release manifest as :meth:`approve_release` does, then veto exactly that
        manifest, signed with this party's key: the run ends (phase ``vetoed``) and its sealed
        weights are deleted. Possible until the release; refused after it."""
        release = self.release_manifest()
        if self.verified_journal().manifest_sha256 != release.manifest_sha256:
            raise ProtocolError("the manifest the enclave offers is not its journal's; not vetoing")
        veto = sign_consent(
            self.keys.signing_key,
            policy_digest=self.policy.digest,
            party_id=self.keys.party_id,
            action="veto",
            manifest_sha256=release.manifest_sha256,
            now_ms=int(self._clock() * 1000),
        )
        resp: pb.VetoReleaseResponse = self.unary("VetoRelease", pb.VetoReleaseRequest(veto=veto))
        self.verified_journal()
        if resp.phase != "vetoed":
            raise ProtocolError(f"the enclave took the veto, but its phase is {resp.phase!r}")
        return resp.phase

    def receipts(self) -> list[Receipt]:
        """The verified receipts this session received, in upload order."""
        resp = self.unary("ListReceipts", pb.ListReceiptsRequest())
        return [
            verify_receipt(
                r, enclave_key=self.enclave.signing_public_key, policy_digest=self.policy.digest
            )
            for r in resp.receipts
        ]


@dataclass(frozen=True)
class TrainingProgress:
    phase: str
    step: int
    total_steps: int
    epoch: int
    loss: float | None  # None unless the policy releases train_loss, and on phase-only events
    epsilon: float | None
    detail: str


@dataclass(frozen=True)
class FetchedModel:
    weights: bytes  # safetensors
    release: VerifiedRelease

    @property
    def manifest(self) -> dict[str, Any]:
        """The verified release manifest (metrics, DP certificate, receipts, evidence)."""
        return self.release.manifest

    @property
    def dp_tensors(self) -> CertifiedTensors | None:
        """The tensors the DP certificate covers and those released at their initial value
        (None without DP): listed in the manifest, or, for a model package, sealed in the
        weights and checked against the certificate's commitment when they were opened."""
        cert = self.release.dp_certificate
        return None if cert is None else certified_tensors(cert, self.weights)

    def state_dict(self, framework: str = "numpy") -> dict[str, Any]:
        """The weights as arrays: ``"numpy"`` (no torch needed) or ``"pt"`` for torch tensors."""
        if framework == "pt":
            from safetensors.torch import load as load_pt

            return dict(load_pt(self.weights))
        from safetensors.numpy import load as load_np

        return dict(load_np(self.weights))

    def load_into(self, model: Any) -> Any:
        """Load the weights into a torch module of the released architecture (strict)."""
        model.load_state_dict(self.state_dict("pt"), strict=True)
        return model

    def to_torch(self, *, package: str | Path | bytes | None = None) -> Any:
        """The released model as a ``torch.nn.Module`` in eval mode, weights loaded (strict).

        Built-in architectures are rebuilt from the signed manifest's model spec. A model
        owner's package model needs the package (``package``: its file or bytes), which must
        be the one the manifest names (checked before any of its code runs). Needs torch.
        """
        spec = self.manifest.get("model") or {}
        shape, outputs = spec.get("feature_shape"), spec.get("num_outputs")
        if not isinstance(shape, list) or not isinstance(outputs, int):
            raise ReleaseError(
                "this manifest does not record the model's input shape and outputs (a release "
                "made before cctrain recorded them): build the model yourself and load_into it"
            )
        from cctrain_enclave.trainer.train import build_model_from_spec

        data: bytes | None = None
        if spec.get("name") == "package":
            if package is None:
                raise PolicyError(
                    "the released model is a model owner's package: pass package=... (its file)"
                )
            data = package if isinstance(package, bytes) else Path(package).read_bytes()
        elif package is not None:
            raise PolicyError("package= given, but the released model is not a package")
        model = build_model_from_spec(spec, tuple(shape), outputs, model_package=data)
        self.load_into(model)
        return model.eval()


class Recipient(EnclaveSession):
    """A recipient named by the policy: fetches, verifies and unseals the released model."""

    def fetch_release(self) -> pb.FetchReleaseResponse:
        """Fetch the sealed release (manifest, its signature, the release record, the sealed weights); verified by :func:`open_release`."""
        self._require_unlocked()
        resp: pb.FetchReleaseResponse = self.unary("FetchRelease", pb.FetchReleaseRequest())
        return resp

    def fetch_model(
        self, *, save_to: str | Path | None = None, now: _dt.datetime | None = None
    ) -> FetchedModel:
        """Manifest signature → evidence → policy digest → shard set → release record and
        its approvals → unseal → model hash; then hand it back."""
        bundle = ReleaseBundle.from_response(self.fetch_release())
        # The release must be the one of a journal that extends what this party saw: a
        # restored or forked state would otherwise hand it a second model of the same data.
        view = self.verified_journal()
        if view.release_record is None or view.release_record.raw != bundle.release_record:
            raise ReleaseError(
                "the release the enclave sent is not the release its verified journal records "
                f"(phase {view.phase}); refusing it"
            )
        if save_to is not None:
            save_release_bundle(Path(save_to), bundle, recipient_id=self.keys.party_id)
        return open_release(
            bundle,
            policy=self.policy,
            keys=self.keys,
            allow_simulated=self._allow_simulated,
            now=now,
        )


class ModelOwner(DataOwner, Recipient):
    """The model provider: attests the enclave, then uploads its model package (training plan
    and initial weights) the way data is uploaded, encrypted to the attested enclave only.

    The package must be the exact bytes the policy pins (``training.model.package_sha256``):
    this is checked here, before anything is sent, and again by the enclave before it
    receives a byte. No ε ledger entry: a package is code and weights, not data. A model
    owner that the release rule names as a recipient fetches the trained model as any
    recipient does (:meth:`fetch_model`).
    """

    def upload_package(
        self,
        path: str | Path,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: ProgressFn | bool | None = None,
        state_dir: str | Path | None = None,
    ) -> Receipt:
        """Stream the package at ``path``; its verified receipt (resumes like a shard)."""
        from cctrain.package import PACKAGE_SHARD_ID, UPLOAD_FORMAT, check_package_file

        self._require_unlocked()
        path = Path(path)
        pinned = self.policy.model_package
        if pinned is None:
            raise PolicyError("this policy takes no model package (training.model.name)")
        if pinned["provider"] != self.keys.party_id:
            raise PolicyError(
                f"{self.keys.party_id!r} is not the policy's model provider "
                f"({pinned['provider']!r})"
            )
        try:
            commitment, size = file_sha256(path)
        except OSError as exc:
            raise ShardError(f"cannot read model package {path}: {exc.strerror}") from None
        if commitment.hex() != pinned["package_sha256"]:
            raise PolicyError(
                f"{path} has SHA-256 {commitment.hex()}, the policy pins "
                f"{pinned['package_sha256']} (training.model.package_sha256): not sent"
            )
        if size > int(pinned["max_bytes"]):
            raise ShardError(
                f"{path} is {size} bytes, more than training.model.max_bytes = "
                f"{pinned['max_bytes']}"
            )
        check_package_file(path)
        state_dir = Path(state_dir) if state_dir is not None else self.state_dir
        receipt = self._send_file(
            path,
            fmt=UPLOAD_FORMAT,
            shard_id=PACKAGE_SHARD_ID,
            chunk_size=chunk_size,
            progress=progress,
            receipts_dir=state_dir / "receipts" / self.policy.digest.hex()[:16],
            on_refused=lambda: None,
        )
        if receipt.package_sha256 != commitment:
            raise ReceiptError(
                "the enclave's receipt does not name the pinned package's SHA-256 "
                f"({receipt.package_sha256.hex() or 'none'})"
            )
        return receipt

    def upload(self, path: str | Path, **kwargs: Any) -> Receipt:
        """A model owner that is also a data provider uploads data here; its package with
        :meth:`upload_package`."""
        party = self.policy.party(self.keys.party_id)
        if party is None or not party.is_provider:
            raise PolicyError(
                f"{self.keys.party_id!r} is not a data provider: upload the model package "
                "with upload_package()"
            )
        return super().upload(path, **kwargs)


@dataclass(frozen=True)
class ReleaseBundle:
    """What a recipient receives: the manifest, the release record, its sealed weights."""

    manifest: bytes
    manifest_signature: bytes
    release_record: bytes
    encapsulated_key: bytes
    sealed_weights: bytes

    @classmethod
    def from_response(cls, resp: pb.FetchReleaseResponse) -> ReleaseBundle:
        """The bundle of a FetchRelease response."""
        return cls(
            bytes(resp.manifest),
            bytes(resp.manifest_signature),
            bytes(resp.release_record),
            bytes(resp.encapsulated_key),
            bytes(resp.sealed_weights),
        )


def verify_release(
    bundle: ReleaseBundle,
    *,
    policy: Any,
    allow_simulated: bool,
    now: _dt.datetime | None = None,
) -> VerifiedRelease:
    """Everything about a release anyone can check offline (no key needed): the manifest and
    its evidence and shard set, then the release record and every approval it requires."""
    release = verify_manifest(
        bundle.manifest,
        bundle.manifest_signature,
        policy=policy,
        allow_simulated=allow_simulated,
        now=now,
    )
    return verify_release_record(release, bundle.release_record, policy=policy)


def open_release(
    bundle: ReleaseBundle,
    *,
    policy: Any,
    keys: PartyKeys,
    allow_simulated: bool,
    now: _dt.datetime | None = None,
) -> FetchedModel:
    """:func:`verify_release`, then unseal the weights with this recipient's ``keys`` and
    check them against the manifest (hash, and the DP certificate's tensors)."""
    release = verify_release(bundle, policy=policy, allow_simulated=allow_simulated, now=now)
    if keys.party_id not in release.manifest.get("recipients", []):
        raise ReleaseError(f"{keys.party_id!r} is not a recipient named in the manifest")
    weights = unseal_weights(
        release,
        recipient_id=keys.party_id,
        recipient_key=keys.hpke_key,
        encapsulated_key=bundle.encapsulated_key,
        sealed_weights=bundle.sealed_weights,
        policy=policy,
    )
    problems = weights_problems(release.dp_certificate, weights)
    if problems:
        raise ReleaseError("; ".join(problems))
    return FetchedModel(weights, release)


def save_release_bundle(path: str | Path, bundle: ReleaseBundle, *, recipient_id: str) -> None:
    """The sealed release as one JSON file, verifiable offline with `cctrain release verify`."""
    from cctrain.release import b64

    path = Path(path)
    doc = {
        "type": BUNDLE_TYPE,
        "recipient": recipient_id,
        "manifest": b64(bundle.manifest),
        "manifest_signature": b64(bundle.manifest_signature),
        "release_record": b64(bundle.release_record),
        "encapsulated_key": b64(bundle.encapsulated_key),
        "sealed_weights": b64(bundle.sealed_weights),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc) + "\n")


def load_release_bundle(path: str | Path) -> ReleaseBundle:
    """The release bundle :func:`save_release_bundle` wrote (``release fetch`` writes one)."""
    from cctrain.release import unb64

    path = Path(path)
    try:
        doc = loads_json(path.read_bytes())
        if not isinstance(doc, dict) or doc.get("type") != BUNDLE_TYPE:
            got = doc.get("type") if isinstance(doc, dict) else None
            raise ValueError(f"type {got!r}, want {BUNDLE_TYPE!r}")
        return ReleaseBundle(
            unb64(doc["manifest"]),
            unb64(doc["manifest_signature"]),
            unb64(doc["release_record"]),
            unb64(doc["encapsulated_key"]),
            unb64(doc["sealed_weights"]),
        )
    except OSError as exc:
        raise ReleaseFileError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReleaseFileError(
            f"{path} is not a release bundle: {describe_parse_error(exc)}"
        ) from None


def x25519_public_raw(raw: bytes) -> Any:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    return X25519PublicKey.from_public_bytes(raw)


def _progress_reporter(
    progress: ProgressFn | bool | None, total: int, name: str
) -> Callable[[int | None, int | None], None]:
    """A callable(sent, _) fed by the request generator; (None, None) closes it."""
    if callable(progress):
        fn = progress

        def call(sent: int | None, _: int | None) -> None:
            if sent is not None:
                fn(sent, total)

        return call
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return lambda sent, _: None
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    task = bar.add_task(f"upload {name}", total=total)
    bar.start()

    def update(sent: int | None, _: int | None) -> None:
        if sent is None:
            bar.stop()
        else:
            bar.update(task, completed=sent)

    return update


__all__ = [
    "AttestedEnclave",
    "DataOwner",
    "EnclaveSession",
    "FetchedModel",
    "Recipient",
    "ReleaseBundle",
    "TrainingProgress",
    "check_attestation",
    "open_release",
    "verify_release",
]
