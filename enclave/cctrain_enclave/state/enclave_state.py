"""The enclave's state: one journal, bound sealing, and the run state derived from them.

See :mod:`cctrain_enclave.state` for the picture. This class is the only writer of the
journal and the only holder of the derived :class:`~cctrain.journal.RunState`; every state
transition of the enclave is one of its ``record_*``/``accept_*`` methods, each of which
checks the time (expiry) and the phase, appends a signed entry durably, and only then
changes what the enclave believes, through :func:`cctrain.journal.apply`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cctrain.attestation.binding import EnclaveIdentity, report_data_for
from cctrain.crypto.stream import TAG_SIZE
from cctrain.ids import is_party_id
from cctrain.journal import (
    JOURNAL_VERSION,
    KINDS,
    MAX_ENTRY_BYTES,
    STATE_FORMAT,
    TERMINAL,
    ZERO_HASH,
    AcceptedShard,
    EntryRefused,
    JournalHead,
    Record,
    RunState,
    apply,
    genesis_nonce,
    policy_expiry_ms,
    replay,
    sign_entry,
    verify_approval,
    verify_consent,
)
from cctrain.package import PACKAGE_SHARD_ID
from cctrain.package import UPLOAD_FORMAT as PACKAGE_UPLOAD_FORMAT
from cctrain.policy import Policy
from cctrain.protocol import RECEIPT_SIG_TAG, RECEIPT_VERSION, evidence_to_pb, quoted
from cctrain.v1 import enclave_pb2 as pb
from cctrain.v1 import journal_pb2 as jpb
from cctrain_enclave.errors import Refusal, StateDirectoryError, StateError
from cctrain_enclave.providers._common import own_measurement
from cctrain_enclave.quotas import (
    Holding,
    accepted_holdings,
    check_provider_limits,
    duplicate_tag,
)
from cctrain_enclave.state.journal_file import JournalFile
from cctrain_enclave.state.sealing import STATE_KEY_LABEL, BoundSealer, atomic_write, fsync_dir
from cctrain_enclave.state.state_key import LockedState, new_consortium_key

log = logging.getLogger("cctrain.enclave.state")

Clock = Callable[[], float]

#: Files of the layout before the journal (state format 1): unauthenticated, never upgraded.
OLD_LAYOUT_MARKERS = ("policy.sha256", "policy.signed.json", "enclave-keys.sealed", "run")

#: A failure reason longer than this is cut before it is journaled.
MAX_REASON_CHARS = 4096
_DECISIONS = {
    "upload": "accepts no uploads",
    "start": "starts no training",
    "checkpoint": "continues no training",
    "release": "releases nothing",
    "approval": "takes no approvals",
    "fetch": "releases nothing",
    "withdrawal": "takes no withdrawals (nothing trains after expiry either)",
    "veto": "takes no vetoes (nothing is released after expiry either)",
}


@dataclass(frozen=True)
class StatePaths:
    root: Path

    @property
    def journal(self) -> Path:
        return self.root / "journal.log"

    @property
    def identity(self) -> Path:
        return self.root / "identity.sealed"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def release(self) -> Path:
        return self.root / "release"

    def shard_ciphertext(self, header_sha256: bytes) -> Path:
        return self.shards / f"{header_sha256.hex()}.ct"

    def checkpoint(self, sha256: bytes) -> Path:
        return self.checkpoints / f"{sha256.hex()}.sealed"

    def release_dir(self, manifest_sha256: bytes) -> Path:
        return self.release / manifest_sha256.hex()


@dataclass(frozen=True)
class EnclaveKeys:
    """The enclave's identity for one run: created at genesis, sealed bound to that run."""

    hpke: X25519PrivateKey
    signing: Ed25519PrivateKey

    @property
    def hpke_public(self) -> bytes:
        return self.hpke.public_key().public_bytes_raw()

    @property
    def signing_public(self) -> bytes:
        return self.signing.public_key().public_bytes_raw()

    def seal(self, sealer: BoundSealer, run_id: bytes) -> bytes:
        raw = self.hpke.private_bytes_raw() + self.signing.private_bytes_raw()
        return sealer.seal("identity", (run_id,), raw)

    @classmethod
    def unseal(cls, sealer: BoundSealer, run_id: bytes, blob: bytes) -> EnclaveKeys:
        raw = sealer.unseal("identity", (run_id,), blob)
        return cls(
            X25519PrivateKey.from_private_bytes(raw[:32]),
            Ed25519PrivateKey.from_private_bytes(raw[32:]),
        )


def expected_ciphertext_size(header: pb.ShardHeader) -> int:
    return int(header.plaintext_size) + TAG_SIZE * int(header.chunk_count)


class EnclaveState:
    """The journal, the enclave's keys and the run state derived from them (see module doc)."""

    def __init__(
        self,
        *,
        paths: StatePaths,
        policy: Policy,
        keys: EnclaveKeys,
        sealer: BoundSealer,
        journal: JournalFile,
        records: list[Record],
        view: RunState,
        clock: Clock,
    ) -> None:
        """Use :meth:`open`: ``view`` is ``replay(records, policy)``, done there once."""
        self.paths = paths
        self.policy = policy
        self.keys = keys
        self.sealer = sealer
        self._journal = journal
        self._records = records
        self._view = view
        self._clock = clock
        self._lock = threading.RLock()
        self._listeners: list[Callable[[RunState], None]] = []

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        root: Path,
        policy: Policy,
        provider: Any,
        *,
        tls_spki_sha256: bytes,
        clock: Clock,
    ) -> EnclaveState | LockedState:
        """Verify the journal and everything it vouches for, or begin a new one (genesis).

        With a consortium-held state key and an existing journal the enclave cannot open its
        state yet: this returns the verified journal as a :class:`LockedState`, which opens
        it once k parties have returned their shares.
        """
        try:
            return cls._open(root, policy, provider, tls_spki_sha256=tls_spki_sha256, clock=clock)
        except OSError as exc:
            raise unusable(root, exc) from None

    @classmethod
    def _open(
        cls,
        root: Path,
        policy: Policy,
        provider: Any,
        *,
        tls_spki_sha256: bytes,
        clock: Clock,
    ) -> EnclaveState | LockedState:
        paths = StatePaths(root)
        journal = JournalFile(paths.journal)
        measurement = own_measurement(provider)
        if not journal.exists():
            _refuse_old_layout(paths)
            records, keys, sealer = cls._genesis(
                paths, journal, policy, provider, measurement, tls_spki_sha256, clock
            )
            view = replay(records, policy)
            return cls._opened(paths, policy, keys, sealer, journal, records, view, clock)
        records = journal.load()
        view = replay(records, policy)  # raises JournalError naming the entry
        if view.measurement != measurement or view.platform != provider.platform:
            raise StateError(
                f"the journal in {root} was begun by other enclave code "
                f"({view.platform}, measurement {view.measurement.hex()[:16]}…); this is "
                f"{provider.platform}, measurement {measurement.hex()[:16]}…"
            )
        log.info(
            "journal verified: %d entries, head #%d %s…, phase %s",
            len(records),
            view.head.seq,
            view.head.sha256.hex()[:16],
            view.phase,
        )

        def open_with(sealer: BoundSealer) -> EnclaveState:
            return cls.from_sealer(paths, policy, sealer, journal, records, view, clock)

        if view.state_key_mode == "consortium":
            log.warning(
                "locked: the state key is held by the consortium; waiting for %d of %d shares "
                "(parties unlock with cctrain unlock)",
                view.state_key_threshold,
                len(view.state_key_shares),
            )
            return LockedState(
                policy=policy,
                records=records,
                view=view,
                open_with=open_with,
                measurement=measurement,
            )
        return open_with(
            BoundSealer(
                provider.sealing_key(STATE_KEY_LABEL),
                policy_digest=policy.digest,
                measurement=measurement,
            )
        )

    @classmethod
    def from_sealer(
        cls,
        paths: StatePaths,
        policy: Policy,
        sealer: BoundSealer,
        journal: JournalFile,
        records: list[Record],
        view: RunState,
        clock: Clock,
    ) -> EnclaveState:
        """Open a verified journal's state with its state key: unseal the identity (it must
        be the keys the genesis names), check the files the journal vouches for, remove the
        rest."""
        try:
            blob = paths.identity.read_bytes()
        except FileNotFoundError:
            raise StateError(
                f"{paths.identity.name} is missing: the enclave's keys for this journal are "
                "gone (the state directory was tampered with)"
            ) from None
        keys = EnclaveKeys.unseal(sealer, view.run_id, blob)
        if (keys.signing_public, keys.hpke_public) != (
            view.signing_public_key,
            view.hpke_public_key,
        ):
            raise StateError("the sealed enclave keys are not the keys the journal names")
        return cls._opened(paths, policy, keys, sealer, journal, records, view, clock)

    @classmethod
    def _opened(
        cls,
        paths: StatePaths,
        policy: Policy,
        keys: EnclaveKeys,
        sealer: BoundSealer,
        journal: JournalFile,
        records: list[Record],
        view: RunState,
        clock: Clock,
    ) -> EnclaveState:
        state = cls(
            paths=paths,
            policy=policy,
            keys=keys,
            sealer=sealer,
            journal=journal,
            records=records,
            view=view,
            clock=clock,
        )
        state._check_files()
        state._remove_unvouched()
        return state

    @staticmethod
    def _genesis(
        paths: StatePaths,
        journal: JournalFile,
        policy: Policy,
        provider: Any,
        measurement: bytes,
        tls_spki_sha256: bytes,
        clock: Clock,
    ) -> tuple[list[Record], EnclaveKeys, BoundSealer]:
        expires = policy_expiry_ms(policy)
        if expires is not None and clock() * 1000 >= expires:
            raise StateError(
                f"the policy expired at {policy.expires}; an enclave does not begin a run under it"
            )
        leftovers = [
            p for p in (paths.shards, paths.uploads, paths.checkpoints, paths.release) if p.exists()
        ]
        if leftovers or paths.identity.exists():
            log.warning(
                "no journal in %s: beginning a new run; the %s left there belong to no verified "
                "history and are removed unread",
                paths.root,
                ", ".join(p.name for p in leftovers) or "files",
            )
        for p in leftovers:
            shutil.rmtree(p)
        run_id = os.urandom(16)
        state_key, custody = _genesis_state_key(policy, provider, run_id)
        sealer = BoundSealer(state_key, policy_digest=policy.digest, measurement=measurement)
        del state_key
        keys = EnclaveKeys(X25519PrivateKey.generate(), Ed25519PrivateKey.generate())
        atomic_write(paths.identity, keys.seal(sealer, run_id))
        identity = EnclaveIdentity(keys.hpke_public, keys.signing_public, tls_spki_sha256)
        evidence = provider.get_evidence(
            report_data_for(identity, policy_digest=policy.digest, nonce=genesis_nonce(run_id))
        )
        entry = jpb.JournalEntry(
            version=JOURNAL_VERSION,
            seq=0,
            prev_sha256=ZERO_HASH,
            policy_digest=policy.digest,
            time_unix_ms=int(clock() * 1000),
            genesis=jpb.Genesis(
                state_format=STATE_FORMAT,
                run_id=run_id,
                platform=provider.platform,
                measurement=measurement,
                hpke_public_key=keys.hpke_public,
                signing_public_key=keys.signing_public,
                tls_spki_sha256=tls_spki_sha256,
                evidence=evidence_to_pb(evidence),
                state_key=custody,
            ),
        )
        record = sign_entry(entry, keys.signing)
        if len(record.raw) > MAX_ENTRY_BYTES:
            raise StateError(
                f"the genesis entry would be {len(record.raw)} bytes (its evidence is too long), "
                f"more than a journal entry may be ({MAX_ENTRY_BYTES})"
            )
        journal.create(record)
        log.info(
            "genesis: run %s, enclave key %s…, state key held by %s",
            run_id.hex(),
            keys.signing_public.hex()[:16],
            "the platform"
            if custody.mode == "platform"
            else f"the consortium ({custody.threshold} of {len(custody.shares)} shares)",
        )
        return [record], keys, sealer

    def _check_files(self) -> None:
        """What the journal vouches for must be there as it says; otherwise stop."""
        view, paths = self._view, self.paths
        if view.phase in ("collecting", "training"):
            for s in view.shards:
                path = paths.shard_ciphertext(s.header_sha256)
                want = expected_ciphertext_size(s.header)
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    size = -1
                if size != want:
                    raise StateError(
                        f"shard {s.party_id}/{s.shard_id} (journal entry #{s.seq}) is "
                        + ("missing" if size < 0 else f"{size} bytes, not {want}")
                        + " in the state directory: it was tampered with; nothing is trained"
                    )
        if view.phase == "training" and view.checkpoint is not None:
            mark = view.checkpoint
            try:
                digest = hashlib.sha256(paths.checkpoint(mark.sha256).read_bytes()).digest()
            except FileNotFoundError:
                digest = b""
            if digest != mark.sha256:
                raise StateError(
                    f"the checkpoint of step {mark.step} that journal entry #{mark.seq} records "
                    "is missing or altered: resuming from anything else would retrain steps "
                    "with fresh noise; refusing"
                )
        if view.manifest and view.phase not in ("failed", "expired", "vetoed"):
            d = paths.release_dir(view.manifest_sha256)
            for rid in self.policy.recipients:
                if not ((d / f"{rid}.enc").is_file() and (d / f"{rid}.sealed").is_file()):
                    raise StateError(
                        f"the sealed release for {rid!r} of the manifest in journal entry "
                        f"#{self._manifest_seq()} is missing from the state directory"
                    )

    def _manifest_seq(self) -> int:
        return next(r.seq for r in self._records if r.kind == "manifest")

    def _remove_unvouched(self) -> None:
        """Files the journal does not vouch for are never read; remove them (among them the
        ciphertext of a withdrawn shard and the sealed weights of a vetoed release, when a
        crash came between their entry and their deletion)."""
        view, paths = self._view, self.paths
        keep = {paths.shard_ciphertext(s.header_sha256).name for s in view.shards}
        if view.phase == "training" and view.checkpoint is not None:
            keep.add(paths.checkpoint(view.checkpoint.sha256).name)
        if view.manifest and view.phase != "vetoed":  # a vetoed release is never served
            keep.add(paths.release_dir(view.manifest_sha256).name)
        removed = []
        for d in (paths.shards, paths.checkpoints, paths.release):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            for p in d.iterdir():
                if p.name not in keep:
                    removed.append(p)
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        if removed:
            log.warning(
                "removed %d file(s) the journal does not vouch for: %s",
                len(removed),
                ", ".join(str(p.relative_to(paths.root)) for p in removed[:10]),
            )

    # ------------------------------------------------------------------ reading

    @property
    def view(self) -> RunState:
        return self._view

    @property
    def head(self) -> JournalHead:
        return self._view.head

    def entries(self, from_seq: int, *, max_bytes: int = 2 << 20) -> list[bytes]:
        """Serialized entries from ``from_seq`` on, at most ``max_bytes`` (at least one)."""
        with self._lock:
            return journal_page(self._records, from_seq, max_bytes=max_bytes)

    def subscribe(self, listener: Callable[[RunState], None]) -> None:
        """Call ``listener`` (holding the state lock) after every transition."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------ time

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def check_time(self, decision: str) -> None:
        """Refuse ``decision`` once the policy expired (journaling the expiry, once)."""
        expires = policy_expiry_ms(self.policy)
        if expires is None or self.now_ms() < expires:
            return
        with self._lock:
            if self._view.phase not in TERMINAL:
                self._append(
                    "expired", jpb.PolicyExpired(expires_unix_ms=expires, refused=decision)
                )
        raise Refusal(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"the policy expired at {self.policy.expires}; the enclave "
            f"{_DECISIONS.get(decision, 'decides nothing')} after expiry",
        )

    # ------------------------------------------------------------------ transitions

    def _append(self, field: str, body: Any) -> Record:
        with self._lock:
            head = self._view.head
            entry = jpb.JournalEntry(
                version=JOURNAL_VERSION,
                seq=head.seq + 1,
                prev_sha256=head.sha256,
                policy_digest=self.policy.digest,
                time_unix_ms=self.now_ms(),
            )
            getattr(entry, field).CopyFrom(body)
            record = sign_entry(entry, self.keys.signing)
            if len(record.raw) > MAX_ENTRY_BYTES:
                # Written, it would stop the enclave at its next start (no journal reader
                # takes it) and no page could carry it: refuse it instead.
                raise Refusal(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the {KINDS.get(field, field)} entry would be {len(record.raw)} bytes, "
                    f"more than a journal entry may be ({MAX_ENTRY_BYTES}); nothing was written",
                )
            view = apply(self._view, record, self.policy)  # our own entries pass the same rules
            self._journal.append(record)
            self._records.append(record)
            self._view = view
            log.info("journal #%d %s (phase %s)", record.seq, record.kind, view.phase)
            for listener in self._listeners:
                listener(view)
            return record

    def check_accepting(self) -> None:
        self.check_time("upload")
        phase = self._view.phase
        if phase != "collecting":
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION, f"uploads are closed (phase: {phase})"
            )

    def accept_shard(
        self,
        *,
        header_raw: bytes,
        header_signature: bytes,
        header: pb.ShardHeader,
        rows: int,
        trailer: pb.UploadTrailer,
        plaintext_sha256: bytes,
        package_sha256: bytes = b"",
    ) -> pb.SignedReceipt:
        """Journal an upload that passed every check and return its signed receipt.

        ``trailer`` is the party's signed commitment (checked against what was decrypted);
        ``plaintext_sha256`` the plain hash of that plaintext, which is never published: it
        only enters the entry's duplicate tag, keyed by the enclave.

        Under the state lock, so an upload either lands before uploads close (and is in the
        training set) or is refused: never a receipt for a shard training does not use.
        """
        with self._lock:
            self.check_time("upload")
            view = self._view
            if view.phase != "collecting":
                raise Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"uploads closed while this upload was in flight (phase: {view.phase}); "
                    "it was not accepted and nothing of it was kept",
                )
            if view.shard(header.party_id, header.shard_id) is not None:
                raise Refusal(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"shard {header.shard_id!r} was already accepted; fetch its receipt with "
                    "UploadStatus",
                )
            refuse_withdrawn_id(view, header.party_id, header.shard_id)
            # Checked at the header already; again here, atomically with the entry, for
            # concurrent uploads of one provider.
            tag = duplicate_tag(self.keys.signing, header.party_id, plaintext_sha256)
            if header.format != PACKAGE_UPLOAD_FORMAT:
                check_provider_limits(
                    self.policy,
                    Holding.of(header, duplicate_tag=tag),
                    accepted_holdings(view.shards, header.party_id),
                )
            body = pb.ReceiptBody(
                version=RECEIPT_VERSION,
                policy_digest=self.policy.digest,
                party_id=header.party_id,
                shard_id=header.shard_id,
                commitment=bytes(trailer.commitment),
                rows=rows,
                plaintext_size=header.plaintext_size,
                header_sha256=hashlib.sha256(header_raw).digest(),
                accepted_unix_ms=self.now_ms(),
                enclave_signing_key=self.keys.signing_public,
                journal_seq=view.head.seq + 1,
                journal_prev_sha256=view.head.sha256,
                package_sha256=package_sha256,
            ).SerializeToString()
            receipt = pb.SignedReceipt(
                body=body, signature=self.keys.signing.sign(RECEIPT_SIG_TAG + body)
            )
            self._append(
                "shard_accepted",
                jpb.ShardAccepted(
                    header=pb.UploadHeader(header=header_raw, signature=header_signature),
                    receipt=receipt,
                    trailer=trailer,
                    duplicate_tag=tag,
                ),
            )
            return receipt

    def close_uploads(self, *, requested_by: str | None) -> bool:
        """Close uploads if the start rule holds; True only for the call that closed them."""
        with self._lock:
            self.check_time("start")
            view = self._view
            if view.phase != "collecting":
                return False
            missing = view.providers_missing(self.policy)
            if missing:
                if requested_by is not None:
                    raise Refusal(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"the start rule does not hold yet: no receipt from {', '.join(missing)}",
                    )
                return False
            if requested_by is None and not self.policy.start["auto_start"]:
                return False
            refs = [
                jpb.ShardRef(
                    party_id=s.party_id,
                    shard_id=s.shard_id,
                    header_sha256=s.header_sha256,
                    accepted_seq=s.seq,
                )
                for s in view.shards
            ]
            self._append(
                "uploads_closed", jpb.UploadsClosed(shards=refs, requested_by=requested_by or "")
            )
            return True

    def record_checkpoint(self, *, step: int, epsilon: float | None, sha256: bytes) -> None:
        self.check_time("checkpoint")
        self._append(
            "checkpoint",
            jpb.CheckpointSaved(
                step=step, epsilon=-1.0 if epsilon is None else epsilon, checkpoint_sha256=sha256
            ),
        )

    def record_manifest(self, manifest: bytes, signature: bytes) -> None:
        self.check_time("release")
        with self._lock:
            self._append(
                "manifest", jpb.ManifestBuilt(manifest=manifest, manifest_signature=signature)
            )
            self._release_if_ready()

    def _release_if_ready(self) -> None:
        view = self._view
        if view.phase == "awaiting_approval" and not view.approvals_missing(self.policy):
            self._append(
                "released",
                jpb.Released(
                    manifest_sha256=view.manifest_sha256,
                    approvals=[a for _, a in view.approvals],
                ),
            )

    def resume_release(self) -> None:
        """After a crash between the manifest and its release entry: finish the release."""
        with self._lock:
            if self._view.phase == "awaiting_approval":
                self.check_time("release")
                self._release_if_ready()

    def approve(self, party: str, signed: pb.SignedApproval) -> RunState:
        """Journal ``party``'s signed approval of the current manifest (idempotent)."""
        policy = self.policy
        if party not in policy.release["approvals_required_from"]:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{party!r} is not a data provider whose approval the policy requires",
            )
        with self._lock:
            self.check_time("approval")
            view = self._view
            if view.phase == "released" and party in view.approved_by():
                return view
            if view.phase != "awaiting_approval":
                raise Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"the release was vetoed by {view.vetoed_by}: there is nothing to approve"
                    if view.phase == "vetoed"
                    else f"there is no release to approve (phase: {view.phase})",
                )
            who, problems = verify_approval(
                signed, policy=policy, manifest_sha256=view.manifest_sha256
            )
            if not who and problems:  # no body to read a party from (malformed, too long)
                raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
            if who != party:
                raise Refusal(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"the approval is signed for {quoted(who)}, but the request is from {party!r}",
                )
            if problems:
                code = (
                    grpc.StatusCode.FAILED_PRECONDITION
                    if problems == ["approval is for another manifest"]
                    else grpc.StatusCode.INVALID_ARGUMENT
                )
                raise Refusal(code, "; ".join(problems))
            if party not in view.approved_by():
                # Exactly as signed: unknown fields beside the body and signature stay out.
                approval = pb.SignedApproval(body=signed.body, signature=signed.signature)
                self._append("approval", jpb.ReleaseApproved(approval=approval))
            self._release_if_ready()
            return self._view

    # ------------------------------------------------------------------ consent

    def withdraw_shard(self, party: str, signed: pb.SignedConsent) -> Record:
        """Journal ``party``'s signed withdrawal of one of its shards, then delete the shard's
        ciphertext; the entry (returned) is the deletion receipt.

        Only while collecting: once uploads closed, the shard is in the training set the
        journal fixed, and its rows may already be in the weights. The entry is the commit:
        from it on the shard is in no shard set, no start rule, no quota and no manifest; a
        crash before the file is gone leaves a ciphertext no entry vouches for, which the
        next start removes unread. The caller keeps uploads of the shard id out meanwhile
        (:meth:`ShardStore.no_upload`).
        """
        body = checked_consent(signed, party, self.policy, "withdraw")
        with self._lock:
            self.check_time("withdrawal")
            view = self._view
            if view.phase != "collecting":
                raise Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"uploads are closed (phase: {view.phase}): training started on the shards "
                    "they closed on, so a shard can no longer be withdrawn",
                )
            shard = view.shard(party, body.shard_id)
            if shard is None:
                raise _no_such_shard(view, party, body.shard_id)
            limit = int(self.policy.limits["withdrawals_per_provider"])
            if sum(w.party_id == party for w in view.withdrawn) >= limit:
                raise Refusal(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"you already withdrew {limit} shard(s) in this run, the most the policy "
                    "allows (limits.withdrawals_per_provider)",
                )
            record = self._append_consent(
                "shard_withdrawn",
                jpb.ShardWithdrawn(
                    request=_as_signed(signed),
                    header_sha256=shard.header_sha256,
                    accepted_seq=shard.seq,
                ),
                "withdrawal",
            )
            self._delete_ciphertext(shard)
            return record

    def _delete_ciphertext(self, shard: AcceptedShard) -> None:
        path = self.paths.shard_ciphertext(shard.header_sha256)
        try:
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)
        except OSError as exc:  # the host's disk: the entry is committed, the next start retries
            log.warning(
                "could not delete the ciphertext of withdrawn shard %s/%s (%s); it is removed "
                "at the next start",
                shard.party_id,
                shard.shard_id,
                exc.strerror or exc,
            )
        log.info("shard %s/%s withdrawn; its ciphertext deleted", shard.party_id, shard.shard_id)

    def veto(self, party: str, signed: pb.SignedConsent) -> RunState:
        """Journal ``party``'s signed veto of the manifest awaiting approval: the run ends
        (``vetoed``, terminal) and its sealed weights are deleted. Idempotent once vetoed.

        A provider may veto even after approving: until the release entry, nothing has left
        the enclave, and consent given can be taken back. After it, recipients may have
        fetched the weights: too late, and the refusal says so.
        """
        if party not in self.policy.release["approvals_required_from"]:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{party!r} is not a data provider the release rule names "
                "(release.approvals_required_from): only they can veto the release",
            )
        body = checked_consent(signed, party, self.policy, "veto")
        with self._lock:
            self.check_time("veto")
            view = self._view
            if view.phase == "vetoed":
                return view
            if view.phase == "released":
                raise Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "the release already happened (every required approval was given); too "
                    "late to veto: recipients may have fetched the weights",
                )
            if view.phase != "awaiting_approval":
                raise Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"there is no release to veto (phase: {view.phase})",
                )
            if body.manifest_sha256 != view.manifest_sha256:
                raise Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "the veto is for another manifest than the one awaiting approval "
                    f"({view.manifest_sha256.hex()[:16]}…); verify that one and veto it",
                )
            self._append_consent("vetoed", jpb.ReleaseVetoed(veto=_as_signed(signed)), "veto")
            self._delete_release(view.manifest_sha256)
            return self._view

    def _delete_release(self, manifest_sha256: bytes) -> None:
        try:
            shutil.rmtree(self.paths.release_dir(manifest_sha256))
        except FileNotFoundError:
            pass
        except OSError as exc:  # removed at the next start: nothing vouches for it any more
            log.warning("could not delete the vetoed release (%s)", exc.strerror or exc)
        log.info("release vetoed by %s; its sealed weights deleted", self._view.vetoed_by)

    def _append_consent(self, field: str, body: Any, what: str) -> Record:
        """Append a consent entry. The callers checked what they answer with a specific
        status; the journal's own rules (:func:`cctrain.journal.apply`, the same in every
        audit) remain the authority: what they still refuse, the caller is told, and
        nothing is written."""
        try:
            return self._append(field, body)
        except EntryRefused as exc:
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the {what} is refused: {'; '.join(exc.problems)}",
            ) from None

    def record_failure(self, reason: str) -> None:
        with self._lock:
            if self._view.phase in ("collecting", "training", "awaiting_approval"):
                if len(reason) > MAX_REASON_CHARS:
                    reason = reason[:MAX_REASON_CHARS] + " …(cut)"
                self._append("failed", jpb.RunFailed(reason=reason))


def journal_page(records: list[Record], from_seq: int, *, max_bytes: int = 2 << 20) -> list[bytes]:
    """Serialized ``records`` from ``from_seq`` on, at most ``max_bytes`` (at least one)."""
    out: list[bytes] = []
    size = 0
    for r in records[from_seq:]:
        if out and size + len(r.raw) > max_bytes:
            break
        out.append(r.raw)
        size += len(r.raw)
    return out


def _genesis_state_key(policy: Policy, provider: Any, run_id: bytes) -> tuple[bytes, jpb.StateKey]:
    """The new run's state key and how it is held: the platform's sealing key, or a fresh
    key split among the parties (:func:`~cctrain_enclave.state.state_key.new_consortium_key`)."""
    if policy.state["key"] == "consortium":
        return new_consortium_key(policy, run_id)
    return provider.sealing_key(STATE_KEY_LABEL), jpb.StateKey(mode="platform")


def checked_consent(
    signed: pb.SignedConsent, party: str, policy: Policy, action: str
) -> pb.ConsentBody:
    """The body of ``party``'s signed consent, refused unless it names ``party`` (a party
    decides only for itself: another's signed consent, replayed, is not its own) and holds
    as far as it stands alone (:func:`cctrain.journal.verify_consent`)."""
    what = "withdrawal" if action == "withdraw" else action
    body, problems = verify_consent(signed, policy=policy, action=action)
    if body is None:
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"the {what} is refused: {problems[0]}")
    if body.party_id != party:
        raise Refusal(
            grpc.StatusCode.PERMISSION_DENIED,
            f"the {what} is signed for "
            + (quoted(body.party_id) if is_party_id(body.party_id) else "an invalid party id")
            + f", but the request is from {party!r}; a party decides only for its own shards "
            "and approvals",
        )
    if problems:
        raise Refusal(
            grpc.StatusCode.INVALID_ARGUMENT, f"the {what} is refused: {'; '.join(problems)}"
        )
    return body


def _as_signed(signed: pb.SignedConsent) -> pb.SignedConsent:
    """The consent exactly as signed, and nothing else: unknown fields a request carried
    beside the body and signature are not written into the journal."""
    return pb.SignedConsent(body=signed.body, signature=signed.signature)


def refuse_withdrawn_id(view: RunState, party: str, shard_id: str) -> None:
    """A withdrawn shard id stays taken (see :class:`cctrain.journal.WithdrawnShard`)."""
    gone = view.withdrawal(party, shard_id)
    if gone is not None and shard_id == PACKAGE_SHARD_ID:
        raise Refusal(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"the model package was withdrawn (journal entry #{gone.seq}): this run cannot "
            "take another, so it will not start; the consortium needs a new policy",
        )
    if gone is not None:
        raise Refusal(
            grpc.StatusCode.ALREADY_EXISTS,
            f"shard {shard_id!r} was withdrawn (journal entry #{gone.seq}); a withdrawn shard "
            "id is not used again: upload under a new shard id",
        )


def _no_such_shard(view: RunState, party: str, shard_id: str) -> Refusal:
    gone = view.withdrawal(party, shard_id)
    if gone is not None:
        return Refusal(
            grpc.StatusCode.ALREADY_EXISTS,
            f"shard {shard_id!r} was already withdrawn: journal entry #{gone.seq} is its "
            "deletion receipt (GetJournal)",
        )
    mine = [s.shard_id for s in view.shards if s.party_id == party]
    return Refusal(
        grpc.StatusCode.NOT_FOUND,
        f"you have no accepted shard {quoted(shard_id)} "
        f"(yours: {', '.join(mine) or 'none'}); only an accepted shard can be withdrawn",
    )


def unusable(root: Path, exc: OSError) -> StateError:
    """The host's files are input: an OS error on them is a clear refusal, never a traceback."""
    return StateDirectoryError(
        f"the state directory {root} cannot be used: {exc.strerror or exc} "
        f"({exc.filename or 'a state file'})"
    )


def _refuse_old_layout(paths: StatePaths) -> None:
    found = [m for m in OLD_LAYOUT_MARKERS if (paths.root / m).exists()]
    if found:
        raise StateError(
            f"{paths.root} was written by an earlier cctrain (state format 1: {', '.join(found)}), "
            "whose files nothing authenticates; it cannot be upgraded safely. Serve this policy "
            "from a new, empty state directory (the providers upload again)"
        )
