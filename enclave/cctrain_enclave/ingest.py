"""Encrypted shard ingest: the upload state machine and the shard store.

Design (see DESIGN.md, protocol step 2):

* The enclave decrypts each chunk as it arrives (STREAM over AES-256-GCM) to
  reject tampering at once and to hash the plaintext for the commitment.
* What it writes to disk is the *received ciphertext*, and nothing else of the
  key: the data key is recovered from the signed header (HPKE-wrapped to the
  enclave key) whenever it is needed.  So shards are encrypted at rest at no
  extra cost, a partial upload is resumable after a crash, and a stored shard
  opens only under the header the journal recorded for it.
* Progress is acknowledged only after it is durable (fsync), so an owner that
  resumes from the last ack never skips a chunk the enclave lost.
* Any rejection deletes every byte of the upload; a lost connection keeps the
  acknowledged prefix for resumption (until ``PARTIAL_TTL_S``).
* A format whose structure is at its end (Parquet) cannot be judged chunk by chunk:
  its parser records each chunk's SHA-256 as it streams, and once the commitment matched
  reads the file by random access to the stored chunks (:class:`StoredPieces`), each
  decrypted, authenticated and compared with that digest again.
* The commitment is not in the header (the owner would have to read its shard twice to
  sign it first) but in the owner's signed :class:`UploadTrailer` after the last chunk,
  bound to the header by its SHA-256: the enclave computes the same (size, chunk count,
  the salted commitment of the SHA-256 of what it decrypted) and accepts only on equality.
  A model package's plain SHA-256 is checked against the policy's pin the same way.
* Only after the whole plaintext matches the signed commitment and the schema
  is the ciphertext moved (one rename) to ``shards/<header sha256>.ct`` and the
  shard journaled (:meth:`EnclaveState.accept_shard`), which signs the receipt.
  The journal, not the file, makes it accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from google.protobuf.message import DecodeError

from cctrain.crypto import hpke
from cctrain.crypto.keys import ed25519_public
from cctrain.crypto.stream import NONCE_PREFIX_SIZE, TAG_SIZE, StreamOpener
from cctrain.errors import ShardError
from cctrain.ids import is_shard_id, path_component
from cctrain.journal import AcceptedShard
from cctrain.policy import Policy
from cctrain.protocol import (
    HEADER_SIG_TAG,
    HEADER_VERSION,
    MAX_CHUNK_SIZE,
    MAX_HEADER_BYTES,
    SHARD_ID,
    expected_chunk_count,
    quoted,
    shard_commitment,
    shard_key_info,
    verify_signature,
    verify_trailer,
)
from cctrain.v1 import enclave_pb2 as pb
from cctrain_enclave.errors import Refusal, StoredShardError
from cctrain_enclave.package import PACKAGE_FORMAT_NAME, PACKAGE_SHARD_ID, PackageParser
from cctrain_enclave.quotas import Holding, accepted_holdings, check_provider_limits
from cctrain_enclave.shards import (
    PieceSource,
    ShardArrays,
    ShardChangedError,
    ShardParser,
    ShardSummary,
    checked_rows,
    empty_arrays,
    open_parser,
)
from cctrain_enclave.state import (
    EnclaveState,
    StatePaths,
    atomic_write,
    fsync_dir,
    refuse_withdrawn_id,
)

log = logging.getLogger("cctrain.enclave.ingest")

MIN_CHUNK_SIZE = 4096
#: What the enclave's log says of a shard refused for its content: the uploader hears which
#: values broke which rule, the host (which reads the log) only that something did.
CONTENT_REFUSED = (
    "its content does not meet the policy's data schema (details went to the uploader only)"
)
#: Acknowledge (after fsync) at least every this many bytes of ciphertext. Larger means fewer
#: fsyncs (faster) but more to resend after a crash; 64 MiB costs well under a second to resend.
ACK_EVERY_BYTES = int(os.environ.get("CCTRAIN_ACK_EVERY_BYTES", 64 << 20))
PARTIAL_TTL_S = 24 * 3600


@dataclass(frozen=True)
class ParsedHeader:
    raw: bytes
    msg: pb.ShardHeader
    sha256: bytes

    @property
    def chunk_count(self) -> int:
        return int(self.msg.chunk_count)

    def chunk_plain_size(self, index: int) -> int:
        size, cs = int(self.msg.plaintext_size), int(self.msg.chunk_size)
        if index < self.chunk_count - 1:
            return cs
        return size - cs * (self.chunk_count - 1)

    def chunk_offset(self, index: int) -> int:
        """Byte offset of ciphertext chunk ``index`` in chunks.bin."""
        return index * (int(self.msg.chunk_size) + TAG_SIZE)


def read_committed(
    path: Path,
    header: ParsedHeader,
    key: bytes,
    consume: Callable[[bytes], None],
    *,
    commitment: bytes,
    what: str,
) -> None:
    """Decrypt a stored shard once, in order, handing each chunk's plaintext to ``consume``
    (a shard parser) as soon as it authenticates; return only if the whole plaintext is what
    the receipt commits to (``commitment``: the salted commitment of its SHA-256). Whatever is checked or trained must be these bytes:
    reading the file a second time would let a host that owns the disk, with a provider that
    holds the data key, swap it in between. So what ``consume`` built may be used only once
    this returned: a chunk that fails, or a commitment that does not match, raises."""
    opener = StreamOpener(key, header.msg.nonce_prefix, header.sha256)
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        for i in range(header.chunk_count):
            last = i == header.chunk_count - 1
            pt = opener.open(i, fh.read(header.chunk_plain_size(i) + TAG_SIZE), last=last)
            if pt is None:
                raise ShardError(f"{what} does not authenticate (altered at rest)")
            hasher.update(pt)
            consume(pt)
        if fh.read(1):
            raise ShardError(f"{what} is longer than its header says (altered at rest)")
    if not hmac.compare_digest(shard_commitment(key, hasher.digest()), commitment):
        raise ShardError(
            f"{what} does not match the plaintext commitment of its receipt (re-encrypted at rest)"
        )


class StoredPieces:
    """Random access to a stored shard's plaintext, chunk by chunk (a parser's
    :class:`~cctrain_enclave.shards.PieceSource`): chunk i is read from the ciphertext file,
    authenticated under its index and last flag, and handed over. That the chunk is the one
    the committed pass hashed, the parser checks against the digest it recorded then: the
    host owns the file and could change it between two reads."""

    def __init__(self, path: Path, header: ParsedHeader, key: bytes, *, what: str) -> None:
        self._path, self._header, self._what = path, header, what
        self._opener = StreamOpener(key, header.msg.nonce_prefix, header.sha256)

    def piece(self, index: int) -> bytes:
        header = self._header
        if not 0 <= index < header.chunk_count:
            raise ShardError(f"{self._what}: no chunk {index}")
        try:
            with open(self._path, "rb") as fh:
                fh.seek(header.chunk_offset(index))
                ct = fh.read(header.chunk_plain_size(index) + TAG_SIZE)
        except OSError:
            raise ShardChangedError(f"{self._what} cannot be read (altered at rest)") from None
        pt = self._opener.open(index, ct, last=index == header.chunk_count - 1)
        if pt is None:
            raise ShardChangedError(f"{self._what} does not authenticate (altered at rest)")
        return pt


class ShardStore:
    """Shard bytes on the host's disk: partial uploads, and the ciphertext of accepted shards.

    ``uploads/<party>/<shard>/`` holds a partial upload (header.bin, chunks.bin,
    progress.json); ``shards/<header sha256>.ct`` the ciphertext of a shard the journal
    accepted. Which shards exist, and what their headers are, only the journal says.
    """

    def __init__(self, paths: StatePaths, hpke_key: X25519PrivateKey, policy: Policy) -> None:
        self.paths = paths
        self.uploads = paths.uploads
        self._hpke_key = hpke_key
        self._policy = policy
        for d in (paths.uploads, paths.shards):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        #: Uploads in progress, per provider: what each would add to the provider's holdings.
        self._inflight: dict[str, dict[str, Holding]] = {}

    # -- paths and locks
    def partial_dir(self, party: str, shard: str) -> Path:
        return self.uploads / path_component("party", party) / path_component("shard", shard)

    def try_lock(self, party: str, shard: str) -> bool:
        """Take the shard's upload lock if no other upload of it holds it."""
        with self._locks_guard:
            return self._locks.setdefault((party, shard), threading.Lock()).acquire(blocking=False)

    @contextmanager
    def no_upload(self, party: str, shard: str) -> Iterator[None]:
        """Hold the shard's upload lock: no upload of ``party/shard`` runs meanwhile.

        A withdrawal takes it, so an upload of the same shard id cannot be accepted while
        the shard is withdrawn (nor half of it be in flight): the withdrawal waits for no
        one and is refused instead (ABORTED) while the upload streams."""
        if not self.try_lock(party, shard):
            raise Refusal(
                grpc.StatusCode.ABORTED,
                f"an upload of shard {quoted(shard)} is in progress: wait for its receipt, "
                "then withdraw it",
            )
        try:
            yield
        finally:
            self.unlock(party, shard)

    def unlock(self, party: str, shard: str) -> None:
        """Release the shard's lock and forget it (taking and releasing happen under one
        guard): the table must not grow with every shard id a party ever tried."""
        with self._locks_guard:
            self._locks.pop((party, shard)).release()

    # -- a provider's share (policy [limits])
    def admit(
        self, party: str, header: pb.ShardHeader, accepted: tuple[AcceptedShard, ...]
    ) -> None:
        """Count a new upload against the provider's limits before receiving any of it.

        Its holdings are its accepted shards, its partial uploads on disk and its uploads in
        progress; this upload's own earlier partial (same shard id) is replaced, not counted.
        """
        with self._locks_guard:
            inflight = self._inflight.setdefault(party, {})
            limit = int(self._policy.limits["concurrent_uploads_per_provider"])
            if len(inflight) >= limit:
                raise Refusal(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"you have {len(inflight)} upload(s) in progress; the policy allows {limit} "
                    "at once (limits.concurrent_uploads_per_provider)",
                )
            new = Holding.of(header)
            if header.format != PACKAGE_FORMAT_NAME:
                holdings = {h.shard_id: h for h in accepted_holdings(accepted, party)}
                for h in (*self._partial_holdings(party), *inflight.values()):
                    if h.shard_id != PACKAGE_SHARD_ID:
                        holdings.setdefault(h.shard_id, h)
                check_provider_limits(self._policy, new, holdings.values())
            inflight[header.shard_id] = new

    def release_admission(self, party: str, shard: str) -> None:
        with self._locks_guard:
            self._inflight.get(party, {}).pop(shard, None)

    def _partial_holdings(self, party: str) -> list[Holding]:
        """The provider's partial uploads on disk (the host can edit them: a header that does
        not parse still takes a slot, of size 0)."""
        out = []
        party_dir = self.uploads / party
        if not party_dir.is_dir():
            return out
        for pdir in party_dir.iterdir():
            if not is_shard_id(pdir.name):
                continue
            msg = pb.ShardHeader()
            try:
                msg.ParseFromString((pdir / "header.bin").read_bytes())
            except (OSError, DecodeError):
                pass
            out.append(Holding.of(msg, shard_id=pdir.name))
        return out

    def data_key(self, header: pb.ShardHeader) -> bytes:
        """The owner's data key, unwrapped from its header with the enclave's HPKE key."""
        try:
            key = hpke.open_sealed(
                self._hpke_key,
                header.encapsulated_key,
                info=shard_key_info(self._policy.digest, header.party_id, header.shard_id),
            )
        except hpke.HpkeError:
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the data key does not open with the enclave key for this policy, party and shard",
            ) from None
        if len(key) != 32:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "data key must be 32 bytes")
        return key

    # -- crash recovery
    def recover(self, *, collecting: bool) -> None:
        """After a crash: drop temp dirs, stale partials, and un-acked tails of partials.

        Once uploads are closed no partial upload can ever be accepted: all are dropped.
        """
        now = time.time()
        for tmp in self.uploads.glob("**/.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        for party_dir in list(self.uploads.iterdir()):
            if not party_dir.is_dir() or party_dir.is_symlink():
                party_dir.unlink(missing_ok=True)
                continue
            for pdir in list(party_dir.iterdir()):
                try:
                    if not collecting:
                        raise ValueError("uploads are closed")
                    progress = json.loads((pdir / "progress.json").read_text())
                    if now - float(progress["updated"]) > PARTIAL_TTL_S:
                        raise ValueError("expired")
                    with open(pdir / "chunks.bin", "r+b") as fh:
                        fh.truncate(int(progress["offset"]))
                        os.fsync(fh.fileno())
                except (OSError, ValueError, KeyError, TypeError):
                    log.info(
                        "discarding unresumable partial upload %s", pdir.relative_to(self.uploads)
                    )
                    shutil.rmtree(pdir, ignore_errors=True)

    # -- queries
    def partial_progress(self, party: str, shard: str) -> tuple[bytes, int] | None:
        """(header digest, chunks acknowledged) of a resumable partial upload, or None.

        The host can edit these files: a progress record that does not fit its header is no
        resume point (the owner then uploads from chunk 0)."""
        pdir = self.partial_dir(party, shard)
        try:
            progress = json.loads((pdir / "progress.json").read_text())
            raw = (pdir / "header.bin").read_bytes()
            header = pb.ShardHeader()
            header.ParseFromString(raw)
            parsed = ParsedHeader(raw, header, hashlib.sha256(raw).digest())
            next_index, offset = int(progress["next_index"]), int(progress["offset"])
        except (OSError, ValueError, KeyError, TypeError, DecodeError):
            return None
        if not 0 <= next_index < parsed.chunk_count or offset != parsed.chunk_offset(next_index):
            return None
        return parsed.sha256, next_index

    def read_accepted(self, shard: AcceptedShard, consume: Callable[[bytes], None]) -> None:
        """Feed the plaintext of an accepted shard, exactly what its receipt commits to, to
        ``consume`` chunk by chunk; return once the whole of it matched the commitment.

        The chunks' authentication shows only that they were sealed under the owner's data
        key, which the owner holds: a provider working with the host could put other bytes
        under the same key after its receipt. The commitment in the journaled header is what
        binds the trained bytes to the receipt, and these very bytes (not a second read of
        the file) are what gets parsed.
        """
        read_committed(
            self.paths.shard_ciphertext(shard.header_sha256),
            ParsedHeader(shard.header_raw, shard.header, shard.header_sha256),
            self.data_key(shard.header),
            consume,
            commitment=shard.commitment,
            what="its stored ciphertext",
        )

    def accepted_pieces(self, shard: AcceptedShard) -> PieceSource:
        """Random access to an accepted shard's chunks (for a parser that reads it again,
        checking each chunk against what :meth:`read_accepted` fed it)."""
        return StoredPieces(
            self.paths.shard_ciphertext(shard.header_sha256),
            ParsedHeader(shard.header_raw, shard.header, shard.header_sha256),
            self.data_key(shard.header),
            what="its stored ciphertext",
        )

    def load_dataset(
        self, shards: tuple[AcceptedShard, ...], schema: Mapping[str, Any]
    ) -> ShardArrays:
        """The shards uploads were closed on, pooled in the journal's order (for the trainer).

        The pooled arrays are allocated once from the receipts' row counts; each shard is
        decrypted chunk by chunk into the same parser that validated it at upload, which
        writes its rows into its slice. No shard's plaintext is ever held whole."""
        if not shards:
            raise ShardError("no accepted shards")
        pooled = empty_arrays(sum(s.rows for s in shards), schema)
        at = 0
        for shard in shards:

            def fail(
                reason: object, *, at_rest: bool, s: AcceptedShard = shard
            ) -> StoredShardError:
                return StoredShardError(s.party_id, s.shard_id, s.seq, str(reason), at_rest=at_rest)

            out = ShardArrays(
                pooled.features[at : at + shard.rows], pooled.labels[at : at + shard.rows]
            )
            # A parser refusal waits for the end of the pass: if the bytes are not the committed
            # ones, the failure is the host's (at rest), and its text must not be the parser's.
            check = _StreamingCheck(open_parser(shard.header.format, schema, out=out))
            try:
                self.read_accepted(shard, check.feed)
            except (ShardError, OSError) as exc:
                raise fail(exc, at_rest=True) from None
            check.attach(self.accepted_pieces(shard))
            try:
                rows = checked_rows(check.finish(), schema)
            except ShardChangedError as exc:  # a chunk read again is not the committed one
                raise fail(exc, at_rest=True) from None
            except ShardError as exc:
                raise fail(exc, at_rest=False) from None
            if rows != shard.rows:  # the parsers enforce it already; a second line of defence
                raise fail(f"{rows} rows, its receipt says {shard.rows}", at_rest=False)
            at += shard.rows
        return pooled


class _ChunkSink:
    """Checks plaintext and stores ciphertext on two worker threads, each in arrival order.

    The *check* thread hashes each chunk's plaintext and feeds the streaming validator; the
    *store* thread appends the ciphertext and fsyncs it for acknowledgements. ``hashlib``,
    file writes and fsync release the GIL, so the two overlap with each other and with
    receiving and decrypting the next chunks (one thread doing both was the slowest stage of
    the pipeline: ``benchmarks/bench_ingest.py`` prints each stage's cost). An ack is
    reported only once its fsync completed; the commitment and the validator's verdict are
    read at ``finish``, after both threads drained, so neither depends on their interleaving.
    """

    _STOP = object()

    def __init__(
        self, fh: Any, hasher: Any, on_sync: Any, validator: Any = None, depth: int = 8
    ) -> None:
        self._fh, self._hasher, self._on_sync = fh, hasher, on_sync
        self._validator = validator
        self._check_q: queue.Queue[Any] = queue.Queue(depth)
        self._store_q: queue.Queue[Any] = queue.Queue(depth)
        self._durable: list[int] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, args=(q, do), name=name, daemon=True)
            for q, do, name in (
                (self._check_q, self._check_chunk, "cctrain-upload-check"),
                (self._store_q, self._store, "cctrain-upload-store"),
            )
        ]
        for t in self._threads:
            t.start()

    def _check_chunk(self, pt: bytes) -> None:
        self._hasher.update(pt)
        if self._validator is not None:
            self._validator.feed(pt)

    def _store(self, item: Any) -> None:
        if isinstance(item, int):
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._on_sync(item)
            with self._lock:
                self._durable.append(item)
        else:
            self._fh.write(item)

    def _work(self, q: queue.Queue[Any], do: Callable[[Any], None]) -> None:
        while True:
            item = q.get()
            if item is self._STOP:
                return
            if self._error is not None:
                continue  # drain without doing more work after a failure
            try:
                do(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the handler thread
                self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise Refusal(grpc.StatusCode.INTERNAL, "the enclave could not store the upload")

    def add(self, plaintext: bytes, ciphertext: bytes) -> None:
        self._check()
        self._store_q.put(ciphertext)
        self._check_q.put(plaintext)

    def sync(self, next_index: int) -> None:
        self._check()
        self._store_q.put(next_index)

    def take_durable(self) -> int | None:
        """The newest acknowledgement index made durable since the last call."""
        self._check()
        with self._lock:
            newest = self._durable[-1] if self._durable else None
            self._durable.clear()
        return newest

    def close(self, *, drain: bool) -> None:
        if not drain:
            self._error = self._error or InterruptedError("upload abandoned")
        self._check_q.put(self._STOP)
        self._store_q.put(self._STOP)
        for t in self._threads:
            t.join()
        if drain:
            self._check()


class _StreamingCheck:
    """A shard parser fed on the sink thread, which must not raise there: the parser keeps
    its first refusal (``error``, read by the handler) and raises it again at ``finish``."""

    def __init__(self, parser: ShardParser) -> None:
        self._parser = parser

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed(data)
        except ShardError:
            pass  # kept by the parser

    @property
    def error(self) -> ShardError | None:
        return self._parser.error

    def attach(self, source: PieceSource) -> None:
        """Random access for a parser that reads the shard again at finish (Parquet)."""
        if getattr(self._parser, "random_access", False):
            self._parser.attach(source)

    def finish(self) -> ShardSummary:
        return self._parser.finish()


class UploadSession:
    """One Upload stream. ``begin`` → ``add_chunk``* → ``finish``; or ``reject`` / ``suspend``."""

    def __init__(
        self,
        *,
        store: ShardStore,
        state: EnclaveState,
        party_id: str,
        upload_header: pb.UploadHeader,
    ) -> None:
        self.store = store
        self.state = state
        self.policy = state.policy
        self.party_id = party_id
        self.header = self._check_header(upload_header)
        self.header_signature = bytes(upload_header.signature)
        msg = self.header.msg
        self.shard_id = msg.shard_id
        if not store.try_lock(party_id, self.shard_id):
            raise Refusal(
                grpc.StatusCode.ABORTED, f"shard {self.shard_id!r} is already being uploaded"
            )
        self._locked = True
        try:
            if state.view.shard(party_id, self.shard_id) is not None:
                raise Refusal(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"shard {self.shard_id!r} was already accepted; fetch its receipt with UploadStatus",
                )
            refuse_withdrawn_id(state.view, party_id, self.shard_id)
            store.admit(party_id, msg, state.view.shards)
            self._admitted = True
            self.key = store.data_key(msg)
            self.opener = StreamOpener(self.key, msg.nonce_prefix, self.header.sha256)
            self.hasher = hashlib.sha256()
            # The shard's parser, fed each chunk as it is decrypted: its verdict is the one the
            # receipt records (there is no second pass), and training runs the same parser.
            self.check = _StreamingCheck(self._parser(msg.format))
            self.dir = store.partial_dir(party_id, self.shard_id)
            self.next_index = self._prepare(int(upload_header.resume_from))
            self.finished = False
            self._unacked = 0
            self._sink = _ChunkSink(self._fh, self.hasher, self._record_progress, self.check)
        except BaseException:
            self.close()
            raise

    # -- header
    def _check_header(self, uh: pb.UploadHeader) -> ParsedHeader:
        bad = grpc.StatusCode.INVALID_ARGUMENT
        if not uh.header or not uh.signature:
            raise Refusal(bad, "upload header: header and signature are required")
        if len(uh.header) > MAX_HEADER_BYTES:
            raise Refusal(
                bad,
                f"upload header: {len(uh.header)} bytes, more than {MAX_HEADER_BYTES} (a "
                "header is a few hundred bytes; it is journaled as signed)",
            )
        party = self.policy.party(self.party_id)
        if party is None or not verify_signature(
            ed25519_public(party.signing_key), HEADER_SIG_TAG, uh.header, uh.signature
        ):
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                f"upload header is not signed by the policy key of party {self.party_id!r}",
            )
        msg = pb.ShardHeader()
        try:
            msg.ParseFromString(uh.header)
        except DecodeError:
            raise Refusal(bad, "upload header: malformed ShardHeader bytes") from None
        if msg.version != HEADER_VERSION:
            raise Refusal(
                bad,
                f"upload header: ShardHeader version {msg.version} is not supported, this "
                f"enclave takes version {HEADER_VERSION} (the commitment in a signed trailer); "
                "upgrade the client",
            )
        if msg.policy_digest != self.policy.digest:
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"upload header is for policy {msg.policy_digest.hex()[:16]}…, this enclave serves "
                f"{self.policy.digest.hex()[:16]}…",
            )
        if msg.party_id != self.party_id:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"upload header names party {quoted(msg.party_id)} but the request is from "
                f"{self.party_id!r}",
            )
        if msg.format == PACKAGE_FORMAT_NAME:
            max_bytes = self._check_package_header(msg)
        else:
            max_bytes = self._check_data_header(msg, party.is_provider)
        if not MIN_CHUNK_SIZE <= msg.chunk_size <= MAX_CHUNK_SIZE:
            raise Refusal(
                bad, f"upload header: chunk_size must be in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]"
            )
        if msg.plaintext_size > max_bytes:
            what = "training.model" if msg.format == PACKAGE_FORMAT_NAME else "data"
            raise Refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"upload of {msg.plaintext_size} bytes exceeds {what}.max_bytes = {max_bytes}",
            )
        if msg.plaintext_size == 0:
            raise Refusal(bad, "upload header: empty shard")
        if msg.chunk_count != expected_chunk_count(msg.plaintext_size, msg.chunk_size):
            raise Refusal(
                bad, "upload header: chunk_count does not match plaintext_size/chunk_size"
            )
        if len(msg.nonce_prefix) != NONCE_PREFIX_SIZE:
            raise Refusal(bad, "upload header: nonce_prefix must be 7 bytes")
        return ParsedHeader(bytes(uh.header), msg, hashlib.sha256(uh.header).digest())

    def _check_data_header(self, msg: pb.ShardHeader, is_provider: bool) -> int:
        """A data shard's header: a data provider, a shard id, a format the policy allows."""
        bad = grpc.StatusCode.INVALID_ARGUMENT
        if not is_provider:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED, f"{self.party_id!r} is not a data_provider"
            )
        if not is_shard_id(msg.shard_id) or msg.shard_id == PACKAGE_SHARD_ID:
            raise Refusal(
                bad,
                f"upload header: shard_id must match {SHARD_ID.pattern} and not be "
                f"{PACKAGE_SHARD_ID!r} (the model package's)",
            )
        schema = self.policy.data
        if msg.format not in schema["formats"]:
            raise Refusal(
                bad,
                f"upload header: format {quoted(msg.format)} not allowed "
                f"(policy: {list(schema['formats'])})",
            )
        return int(schema["max_bytes"])

    def _check_package_header(self, msg: pb.ShardHeader) -> int:
        """A model package's header: from the policy's model provider, under the package's
        shard id. That it is exactly the pinned bytes is checked at :meth:`finish`, on the
        plain SHA-256 of what was decrypted, before anything of it is accepted: a package the
        policy does not pin is then refused and nothing of it kept, so it is never run."""
        pkg = self.policy.model_package
        if pkg is None:
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this policy takes no model package (training.model.name is not 'package')",
            )
        if self.party_id != pkg["provider"]:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{self.party_id!r} is not the model provider (training.model.provider = "
                f"{pkg['provider']!r})",
            )
        if msg.shard_id != PACKAGE_SHARD_ID:
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"upload header: a model package is uploaded as {PACKAGE_SHARD_ID!r}",
            )
        return int(pkg["max_bytes"])

    def _check_package_pin(self, plaintext_sha256: bytes) -> None:
        pkg = self.policy.model_package
        assert pkg is not None  # checked with the header
        if not hmac.compare_digest(plaintext_sha256.hex(), str(pkg["package_sha256"])):
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model package has SHA-256 {plaintext_sha256.hex()}, the policy pins "
                f"{pkg['package_sha256']} (training.model.package_sha256); nothing of it was "
                "kept",
            )

    def _parser(self, fmt: str) -> Any:
        if fmt == PACKAGE_FORMAT_NAME:
            pkg = self.policy.model_package
            assert pkg is not None  # checked with the header
            return PackageParser(max_bytes=int(pkg["max_bytes"]))
        return open_parser(fmt, self.policy.data)

    def _prepare(self, resume_from: int) -> int:
        existing = self.store.partial_progress(self.party_id, self.shard_id)
        if resume_from:
            if existing is None or existing[0] != self.header.sha256:
                raise Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "nothing to resume for this header; start the upload from chunk 0",
                )
            if existing[1] != resume_from:
                raise Refusal(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"resume_from {resume_from}, but the enclave holds chunks [0, {existing[1]})",
                )
            # Re-hash the durable prefix so the commitment covers the whole shard.
            with open(self.dir / "chunks.bin", "rb") as fh:
                for i in range(resume_from):
                    ct = fh.read(self.header.chunk_plain_size(i) + TAG_SIZE)
                    pt = self.opener.open(i, ct, last=False)
                    if pt is None:
                        raise Refusal(grpc.StatusCode.DATA_LOSS, "stored partial upload is corrupt")
                    self.hasher.update(pt)
                    self.check.feed(pt)
            self._fh = open(self.dir / "chunks.bin", "ab")  # noqa: SIM115
            return resume_from
        # A fresh upload replaces any earlier partial of the same shard.
        if self.dir.exists():
            shutil.rmtree(self.dir)
        tmp = self.dir.parent / f".tmp-{self.shard_id}-{os.getpid()}"
        tmp.mkdir(parents=True, mode=0o700)
        (tmp / "header.bin").write_bytes(self.header.raw)
        (tmp / "chunks.bin").write_bytes(b"")
        (tmp / "progress.json").write_text(
            json.dumps({"next_index": 0, "offset": 0, "updated": time.time()})
        )
        for name in ("header.bin", "chunks.bin", "progress.json"):
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, self.dir)
        fsync_dir(self.dir.parent)
        self._fh = open(self.dir / "chunks.bin", "ab")  # noqa: SIM115
        return 0

    # -- chunks
    def add_chunk(self, chunk: pb.Chunk) -> int | None:
        """Check, decrypt and store one chunk; return the new ack index when one is due."""
        bad = grpc.StatusCode.INVALID_ARGUMENT
        if self.finished:
            raise Refusal(bad, f"chunk {chunk.index} arrived after the final chunk")
        if chunk.index != self.next_index:
            raise Refusal(
                bad,
                f"chunk out of order: got index {chunk.index}, want {self.next_index} "
                "(reordered, duplicated or dropped chunk)",
            )
        last_expected = chunk.index == self.header.chunk_count - 1
        if chunk.last != last_expected:
            raise Refusal(
                bad,
                f"chunk {chunk.index}: last flag is {chunk.last}, but the header announces "
                f"{self.header.chunk_count} chunks",
            )
        want_len = self.header.chunk_plain_size(chunk.index) + TAG_SIZE
        ciphertext = chunk.ciphertext  # each protobuf field read copies it: read once
        if len(ciphertext) != want_len:
            raise Refusal(bad, f"chunk {chunk.index}: {len(ciphertext)} bytes, want {want_len}")
        pt = self.opener.open(chunk.index, ciphertext, last=chunk.last)
        if pt is None:
            raise Refusal(
                bad,
                f"chunk {chunk.index} failed authentication (ciphertext, header or key tampered)",
            )
        self._sink.add(pt, ciphertext)
        if self.check.error is not None:
            # The parser refused a chunk already received: the shard can no longer be
            # accepted, so the rest of it is not worth receiving or storing.
            raise Refusal(bad, str(self.check.error), log=CONTENT_REFUSED)
        self.next_index += 1
        self._unacked += len(ciphertext)
        if chunk.last:
            self.finished = True
        elif self._unacked >= ACK_EVERY_BYTES:
            self._sink.sync(self.next_index)
            self._unacked = 0
        return self._sink.take_durable()

    def _record_progress(self, next_index: int) -> None:
        """Called by the sink after chunks [0, next_index) are fsynced."""
        atomic_write(
            self.dir / "progress.json",
            json.dumps(
                {
                    "next_index": next_index,
                    "offset": self.header.chunk_offset(next_index),
                    "updated": time.time(),
                }
            ).encode(),
        )

    # -- the trailer
    trailer: pb.UploadTrailer | None = None

    def add_trailer(self, trailer: pb.UploadTrailer) -> None:
        """The party's signed commitment, after the last chunk and only once. Its signature
        and its header fields are checked now; the commitment itself at :meth:`finish`, once
        every chunk was hashed."""
        bad = grpc.StatusCode.INVALID_ARGUMENT
        if self.trailer is not None:
            raise Refusal(bad, "upload trailer: a second trailer (send exactly one)")
        if not self.finished:
            raise Refusal(
                bad,
                f"upload trailer before the final chunk (got {self.next_index} of "
                f"{self.header.chunk_count} chunks)",
            )
        party = self.policy.party(self.party_id)
        assert party is not None  # the header was signed by it
        if not verify_trailer(ed25519_public(party.signing_key), trailer):
            raise Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                f"upload trailer is not signed by the policy key of party {self.party_id!r}",
            )
        msg = self.header.msg
        if (
            not hmac.compare_digest(bytes(trailer.header_sha256), self.header.sha256)
            or trailer.plaintext_size != msg.plaintext_size
            or trailer.chunk_count != msg.chunk_count
        ):
            raise Refusal(
                bad,
                "upload trailer is for another upload (its header digest, plaintext size or "
                "chunk count is not this upload's)",
            )
        self.trailer = trailer

    # -- endings
    def finish(self) -> pb.SignedReceipt:
        """Check the commitment and the schema, then journal the shard: the receipt."""
        bad = grpc.StatusCode.INVALID_ARGUMENT
        if not self.finished:
            raise Refusal(
                bad,
                f"stream ended before the final chunk (got {self.next_index} of {self.header.chunk_count})",
            )
        if self.trailer is None:
            raise Refusal(
                bad,
                "stream ended without the upload trailer (the party's signed commitment); "
                "nothing of the upload was kept",
            )
        self._sink.close(drain=True)
        plaintext_sha256 = self.hasher.digest()
        commitment = shard_commitment(self.key, plaintext_sha256)
        if not hmac.compare_digest(commitment, bytes(self.trailer.commitment)):
            raise Refusal(
                bad, "decrypted shard does not match the plaintext commitment in the trailer"
            )
        is_package = self.header.msg.format == PACKAGE_FORMAT_NAME
        if is_package:
            self._check_package_pin(plaintext_sha256)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        # A format whose structure is at its end (Parquet) is read now, by random access to
        # the chunks just stored, each checked against the digest of the one received.
        self.check.attach(
            StoredPieces(self.dir / "chunks.bin", self.header, self.key, what="the upload")
        )
        try:
            rows = self._validate()
        except ShardError as exc:
            raise Refusal(bad, str(exc), log=CONTENT_REFUSED) from None
        # The ciphertext moves to its place first; the journal entry is what accepts it (a
        # crash in between leaves a file no entry vouches for, removed at the next start).
        dest = self.store.paths.shard_ciphertext(self.header.sha256)
        os.replace(self.dir / "chunks.bin", dest)
        fsync_dir(dest.parent)
        self._moved_to = dest
        receipt = self.state.accept_shard(
            header_raw=self.header.raw,
            header_signature=self.header_signature,
            header=self.header.msg,
            rows=rows,
            trailer=self.trailer,
            plaintext_sha256=plaintext_sha256,
            package_sha256=plaintext_sha256 if is_package else b"",
        )
        self._moved_to = None
        shutil.rmtree(self.dir, ignore_errors=True)
        log.info("accepted shard %s/%s (%d rows)", self.party_id, self.shard_id, rows)
        return receipt

    def _validate(self) -> int:
        """Rows of the shard: the streaming parser's verdict, then the schema check (a model
        package has no rows: its parser checked its structure)."""
        if self.header.msg.format == PACKAGE_FORMAT_NAME:
            self.check.finish()
            return 0
        return checked_rows(self.check.finish(), self.policy.data)

    _moved_to: Path | None = None

    def reject(self) -> None:
        """Keep nothing of a rejected upload."""
        if self._moved_to is not None:
            self._moved_to.unlink(missing_ok=True)
        self._sink.close(drain=False)
        if not self._fh.closed:
            self._fh.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def suspend(self) -> None:
        """The connection dropped: keep the acknowledged prefix for a resume."""
        self._sink.close(drain=False)
        if not self._fh.closed:
            self._fh.close()
        try:
            progress = json.loads((self.dir / "progress.json").read_text())
            with open(self.dir / "chunks.bin", "r+b") as fh:
                fh.truncate(int(progress["offset"]))
                os.fsync(fh.fileno())
        except (OSError, ValueError, KeyError):
            shutil.rmtree(self.dir, ignore_errors=True)

    _admitted = False
    _locked = False

    def close(self) -> None:
        if self._admitted:
            self.store.release_admission(self.party_id, self.shard_id)
            self._admitted = False
        if self._locked:
            self._locked = False
            self.store.unlock(self.party_id, self.shard_id)
