"""The gRPC servicer: thin. It converts protobuf, calls the app, maps errors to status codes.

While the enclave is locked (a consortium-held state key, after a restart) only Attest,
GetStatus, GetJournal and Unlock are served; every method that needs the enclave's keys is
marked :func:`_needs_keys` and answers FAILED_PRECONDITION, saying how far the unlock is.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from cctrain.attestation.binding import NONCE_SIZE, EnclaveIdentity, report_data_for, spki_sha256
from cctrain.attestation.nvidia_gpu.composite import gpu_nonce
from cctrain.ids import SHARD_ID, is_shard_id
from cctrain.protocol import evidence_to_pb
from cctrain.v1 import enclave_pb2 as pb
from cctrain.v1 import enclave_pb2_grpc as pb_grpc
from cctrain_enclave.app import EnclaveApp
from cctrain_enclave.auth import current_party
from cctrain_enclave.errors import Refusal
from cctrain_enclave.ingest import UploadSession
from cctrain_enclave.limits import ServerLimits

log = logging.getLogger("cctrain.enclave")


_END = object()


class _ConnectionLost(Exception):
    """The client went away mid-stream."""


def _cancelled_soon(context: grpc.ServicerContext, wait_s: float = 1.0) -> bool:
    """True if the RPC is (or within ``wait_s`` becomes) inactive: cancelled, not half-closed.

    A client that half-closes an incomplete upload waits for our answer, so its RPC stays
    active; only that case is a protocol violation to reject.
    """
    deadline = time.monotonic() + wait_s
    while context.is_active():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


class _Idle(Exception):
    """The client sent nothing for longer than the enclave waits."""


class _Prefetch:
    """Receive the next messages in a thread while this one is decrypted, hashed and written.

    gRPC's receive path (TLS, framing, protobuf parsing) and the upload work then
    overlap; ``depth`` bounds the memory held (depth × chunk size). A client that sends
    nothing for ``idle_s`` raises :class:`_Idle` here: it holds a worker and an upload
    slot, and a stalled upload must not keep them.
    """

    def __init__(self, it: Iterator[pb.UploadRequest], *, idle_s: float, depth: int = 8) -> None:
        self._q: queue.Queue[object] = queue.Queue(depth)
        self._done = threading.Event()
        self._idle_s = idle_s
        self._thread = threading.Thread(
            target=self._pump, args=(it,), name="cctrain-upload-rx", daemon=True
        )
        self._thread.start()

    def _put(self, item: object) -> None:
        while not self._done.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _pump(self, it: Iterator[pb.UploadRequest]) -> None:
        try:
            for msg in it:
                if self._done.is_set():
                    return
                self._put(msg)
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            self._put(exc)

    def next(self) -> pb.UploadRequest | None:
        """The next message, or None at the end of the stream."""
        try:
            item = self._q.get(timeout=self._idle_s)
        except queue.Empty:
            raise _Idle from None
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def __iter__(self) -> Iterator[pb.UploadRequest]:
        while (msg := self.next()) is not None:
            yield msg

    def close(self) -> None:
        self._done.set()


_Handler = TypeVar("_Handler", bound=Callable[..., Any])


def _needs_keys(method: _Handler) -> _Handler:
    """Refuse the RPC (FAILED_PRECONDITION) while the enclave is locked, before it starts."""

    @functools.wraps(method)
    def guarded(self: EnclaveServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            self.app.refuse_if_locked()
        except Refusal as exc:
            context.abort(exc.code, exc.message)
        return method(self, request, context)

    return guarded  # type: ignore[return-value]


class EnclaveServicer(pb_grpc.EnclaveServicer):
    def __init__(self, app: EnclaveApp, limits: ServerLimits | None = None) -> None:
        self.app = app
        self.limits = limits or ServerLimits()

    # -- attestation
    def Attest(self, request: pb.AttestRequest, context: grpc.ServicerContext) -> pb.AttestResponse:
        if len(request.nonce) != NONCE_SIZE:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"nonce must be {NONCE_SIZE} bytes")
        app = self.app
        hpke_public, signing_public, locked = app.attested_keys()
        identity = EnclaveIdentity(
            hpke_public_key=hpke_public,
            signing_public_key=signing_public,
            tls_spki_sha256=spki_sha256(app.tls.cert),
        )
        report_data = report_data_for(
            identity, policy_digest=app.policy.digest, nonce=request.nonce
        )
        evidence = app.provider.get_evidence(report_data)
        gpus: list[Any] = []
        if app.policy.attestation.get("gpu") != "forbidden" and hasattr(
            app.provider, "gpu_evidence"
        ):
            # Each GPU signs the nonce derived from this report_data (composite.gpu_nonce).
            gpus = [evidence_to_pb(e) for e in app.provider.gpu_evidence(gpu_nonce(report_data))]
        return pb.AttestResponse(
            evidence=evidence_to_pb(evidence),
            hpke_public_key=identity.hpke_public_key,
            signing_public_key=identity.signing_public_key,
            tls_certificate=app.tls.cert_der,
            policy_digest=app.policy.digest,
            locked=locked,
            gpu_evidence=gpus,
        )

    def Unlock(self, request: pb.UnlockRequest, context: grpc.ServicerContext) -> pb.UnlockResponse:
        try:
            return self.app.unlock(current_party.get(), request)
        except Refusal as exc:
            context.abort(exc.code, exc.message)

    # -- ingest
    @_needs_keys
    def Upload(
        self, request_iterator: Iterator[pb.UploadRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.UploadResponse]:
        party = current_party.get()
        session: UploadSession | None = None
        incoming = _Prefetch(request_iterator, idle_s=self.limits.upload_idle_s)
        metrics = self.app.observer.metrics
        try:
            first = incoming.next()
            if first is None:
                raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "upload stream is empty")
            if first.WhichOneof("kind") != "header":
                raise Refusal(
                    grpc.StatusCode.INVALID_ARGUMENT, "the first upload message must be the header"
                )
            self.app.state.check_accepting()
            session = UploadSession(
                store=self.app.store,
                state=self.app.state,
                party_id=party,
                upload_header=first.header,
            )
            for msg in incoming:
                kind = msg.WhichOneof("kind")
                if kind == "trailer":
                    session.add_trailer(msg.trailer)
                    continue
                if kind != "chunk":
                    raise Refusal(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"expected a chunk or the trailer, got {kind or 'an empty message'}",
                    )
                if session.trailer is not None:
                    raise Refusal(
                        grpc.StatusCode.INVALID_ARGUMENT, "a chunk arrived after the upload trailer"
                    )
                metrics.ingested_bytes.inc(len(msg.chunk.ciphertext))
                ack = session.add_chunk(msg.chunk)
                if ack is not None:
                    yield pb.UploadResponse(ack=pb.Ack(next_index=ack))
            if not session.finished and _cancelled_soon(context):
                # gRPC can report a client's cancellation as a plain end of stream: a lost
                # connection, not a protocol violation. Keep the acknowledged prefix.
                raise _ConnectionLost
            receipt = session.finish()
            metrics.uploads.labels(outcome="accepted").inc()
            self.app.on_shard_accepted()
            yield pb.UploadResponse(receipt=receipt)
        except Refusal as exc:
            if session is not None:
                session.reject()
            metrics.uploads.labels(outcome="rejected").inc()
            log.warning("upload from %s refused (%s): %s", party, exc.code.name, exc.log_text)
            context.abort(exc.code, exc.message)
        except _Idle:
            if session is not None:
                session.suspend()
            metrics.uploads.labels(outcome="suspended").inc()
            log.info(
                "upload from %s idle for %.0fs; suspended for resume",
                party,
                self.limits.upload_idle_s,
            )
            context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no upload message for {self.limits.upload_idle_s:.0f}s: the enclave closed the "
                "stream and kept the acknowledged prefix; resume the upload",
            )
        except (grpc.RpcError, GeneratorExit, _ConnectionLost):
            # The client went away mid-stream: keep what was acknowledged.
            if session is not None:
                session.suspend()
            metrics.uploads.labels(outcome="suspended").inc()
            log.info("upload from %s interrupted; acknowledged prefix kept for resume", party)
        except Exception as exc:
            if session is not None:
                session.reject()
            metrics.uploads.labels(outcome="rejected").inc()
            from cctrain_enclave.run import _code_locations

            # The type and where, never the message (it may quote the shard's bytes).
            log.error(
                "internal error during upload from %s: %s\n%s",
                party,
                type(exc).__name__,
                "".join(_code_locations(exc)),
            )
            context.abort(grpc.StatusCode.INTERNAL, "internal error; the upload was discarded")
        finally:
            incoming.close()
            if session is not None:
                session.close()

    @_needs_keys
    def UploadStatus(
        self, request: pb.UploadStatusRequest, context: grpc.ServicerContext
    ) -> pb.UploadStatusResponse:
        party = current_party.get()
        if not is_shard_id(request.shard_id):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"shard_id must match {SHARD_ID.pattern}"
            )
        accepted = self.app.state.view.shard(party, request.shard_id)
        if accepted is not None:
            return pb.UploadStatusResponse(
                state=pb.UploadStatusResponse.ACCEPTED, receipt=accepted.receipt
            )
        progress = self.app.store.partial_progress(party, request.shard_id)
        if progress is not None:
            return pb.UploadStatusResponse(
                state=pb.UploadStatusResponse.PARTIAL,
                header_sha256=progress[0],
                next_index=progress[1],
            )
        return pb.UploadStatusResponse(state=pb.UploadStatusResponse.UNKNOWN)

    @_needs_keys
    def ListReceipts(
        self, request: pb.ListReceiptsRequest, context: grpc.ServicerContext
    ) -> pb.ListReceiptsResponse:
        party = current_party.get()
        return pb.ListReceiptsResponse(
            receipts=[s.receipt for s in self.app.state.view.shards if s.party_id == party]
        )

    # -- training and release
    def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetStatusResponse:
        return self.app.status(current_party.get())

    @_needs_keys
    def StartTraining(
        self, request: pb.StartTrainingRequest, context: grpc.ServicerContext
    ) -> pb.StartTrainingResponse:
        try:
            phase = self.app.request_start(current_party.get())
        except Refusal as exc:
            context.abort(exc.code, exc.message)
        return pb.StartTrainingResponse(phase=phase)

    @_needs_keys
    def WatchTraining(
        self, request: pb.WatchTrainingRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.TrainingEvent]:
        yield from self.app.watch(context, current_party.get())

    @_needs_keys
    def ApproveRelease(
        self, request: pb.ApproveReleaseRequest, context: grpc.ServicerContext
    ) -> pb.ApproveReleaseResponse:
        try:
            return self.app.approve(current_party.get(), request.approval)
        except Refusal as exc:
            context.abort(exc.code, exc.message)

    @_needs_keys
    def FetchRelease(
        self, request: pb.FetchReleaseRequest, context: grpc.ServicerContext
    ) -> pb.FetchReleaseResponse:
        try:
            return self.app.fetch_release(current_party.get())
        except Refusal as exc:
            context.abort(exc.code, exc.message)

    @_needs_keys
    def WithdrawShard(
        self, request: pb.WithdrawShardRequest, context: grpc.ServicerContext
    ) -> pb.WithdrawShardResponse:
        party = current_party.get()
        try:
            receipt = self.app.withdraw_shard(party, request.withdrawal)
        except Refusal as exc:
            log.info("withdrawal from %s refused (%s): %s", party, exc.code.name, exc.log_text)
            context.abort(exc.code, exc.message)
        return pb.WithdrawShardResponse(deletion_receipt=receipt)

    @_needs_keys
    def VetoRelease(
        self, request: pb.VetoReleaseRequest, context: grpc.ServicerContext
    ) -> pb.VetoReleaseResponse:
        party = current_party.get()
        try:
            return self.app.veto(party, request.veto)
        except Refusal as exc:
            log.info("veto from %s refused (%s): %s", party, exc.code.name, exc.log_text)
            context.abort(exc.code, exc.message)

    def GetJournal(
        self, request: pb.GetJournalRequest, context: grpc.ServicerContext
    ) -> pb.GetJournalResponse:
        return self.app.journal(int(request.from_seq))
