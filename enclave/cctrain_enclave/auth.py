"""Server interceptor: every RPC (but health and reflection) must come from a party of the policy.

A party signs (method, party, time, nonce, policy digest, request digest) with
its Ed25519 identity key; for unary requests the digest covers the exact
request bytes, which this interceptor receives undeserialized so it can check
them before any handler sees the request.  Stale (outside ±window) or replayed
(party, nonce) pairs are refused.

The signature also covers the hash of this process's TLS key, which is new at every
start: a request signed before a restart (or for another enclave process serving the
same policy) never verifies here, so the replay cache needs to remember nothing across
restarts. Within a process, it never forgets a nonce whose time could still pass: its
pruning raises a floor below which every request is refused, whatever the host's clock
later says.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from cctrain.crypto.keys import ed25519_public
from cctrain.policy import Policy
from cctrain.protocol import (
    AUTH_WINDOW_MS,
    MD_BODY,
    MD_NONCE,
    MD_PARTY,
    MD_POLICY,
    MD_SIG,
    MD_TIME,
    quoted,
    request_signing_bytes,
    sha256,
)
from cctrain_enclave.errors import Refusal
from cctrain_enclave.limits import ServerLimits, Slots, _release_at_end, once

#: The authenticated party of the RPC being handled.
current_party: contextvars.ContextVar[str] = contextvars.ContextVar("cctrain_party")

UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

#: gRPC itself answers a request message that does not parse with INTERNAL and logs a
#: traceback, for anyone who sends one: every handler here parses its requests itself.
MALFORMED = "malformed request message"


class AuthError(Exception):
    def abort(self, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, str(self))


class ReplayCache:
    """Remembers (party, nonce) until its timestamp leaves the freshness window.

    Pruning forgets the nonces older than a cutoff taken from the host's clock; the cutoff
    becomes a floor, and a request signed at or below it is refused however the clock moves
    afterwards (a host that moves its clock forward to prune, then back, replays nothing).
    """

    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._seen: dict[tuple[str, bytes], int] = {}
        self._floor = -(2**63)
        self._prune_at = self.MAX_ENTRIES
        self._lock = threading.Lock()

    def check_and_add(self, party: str, nonce: bytes, time_ms: int, now_ms: int) -> bool:
        with self._lock:
            if len(self._seen) > self._prune_at:
                cutoff = now_ms - AUTH_WINDOW_MS
                self._floor = max(self._floor, cutoff)
                self._seen = {k: t for k, t in self._seen.items() if t > self._floor}
                # Amortised: when most nonces are still inside the window, pruning again at
                # the next request would rebuild the whole table for every caller.
                self._prune_at = max(self.MAX_ENTRIES, 2 * len(self._seen))
            key = (party, nonce)
            if time_ms <= self._floor or key in self._seen:
                return False
            self._seen[key] = time_ms
            return True


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        policy: Policy,
        *,
        tls_spki_sha256: bytes,
        clock_ms: Callable[[], int] | None = None,
        limits: ServerLimits | None = None,
        health: Callable[[], int] | None = None,
    ) -> None:
        self._policy = policy
        #: The serving status Health.Check answers (a HealthCheckResponse.ServingStatus):
        #: the run's (:class:`cctrain_enclave.metrics.RunObserver`); SERVING without one.
        self._health = health or (lambda: 1)
        self._keys: dict[str, Ed25519PublicKey] = {
            p.id: ed25519_public(p.signing_key) for p in policy.parties
        }
        self._clock = clock_ms or (lambda: int(time.time() * 1000))
        self._replay = ReplayCache()
        self._tls_spki_sha256 = tls_spki_sha256
        self._limits = limits or ServerLimits()
        #: Concurrent RPCs held, per budget (see :mod:`cctrain_enclave.limits`).
        self._slots = Slots()

    def _authenticate(self, method: str, metadata: dict[str, Any], body_sha256: bytes) -> str:
        try:
            party = str(metadata[MD_PARTY])
            time_ms = int(metadata[MD_TIME])
            nonce = bytes.fromhex(str(metadata[MD_NONCE]))
            sig = metadata[MD_SIG]
        except (KeyError, ValueError, TypeError):
            raise AuthError("missing or malformed authentication metadata") from None
        key = self._keys.get(party)
        if key is None:
            raise AuthError(f"party {quoted(party)} is not in the policy")
        if len(nonce) != 16 or not isinstance(sig, bytes):
            raise AuthError("authentication nonce must be 16 bytes and the signature binary")
        now = self._clock()
        if abs(now - time_ms) > AUTH_WINDOW_MS:
            raise AuthError(
                f"request time is {abs(now - time_ms) / 1000:.0f}s off (stale or clock skew)"
            )

        def signed_for(policy_digest: bytes) -> bytes:
            return request_signing_bytes(
                method=method,
                party=party,
                time_ms=time_ms,
                nonce=nonce,
                policy_digest=policy_digest,
                tls_spki_sha256=self._tls_spki_sha256,
                body_sha256=body_sha256,
            )

        try:
            key.verify(sig, signed_for(self._policy.digest))
        except InvalidSignature:
            self._maybe_policy_mismatch(metadata.get(MD_POLICY), key, sig, signed_for)
            raise AuthError(
                "request signature does not verify (signed for another policy, or for another "
                "enclave process: this one restarted, or is not the one attested)"
            ) from None
        if not self._replay.check_and_add(party, nonce, time_ms, now):
            raise AuthError("replayed request (nonce already used)")
        return party

    def _maybe_policy_mismatch(
        self,
        theirs: Any,
        key: Ed25519PublicKey,
        sig: bytes,
        signed_for: Callable[[bytes], bytes],
    ) -> None:
        """Say "policy mismatch" with both digests, to a party's key holder only.

        The request names the policy it was signed for (``cctrain-policy``); if its
        signature verifies over *that* digest, the caller holds the party's key and merely
        serves another policy, and may learn which one this enclave serves. A stranger's
        claim is never answered with the digest."""
        try:
            digest = bytes.fromhex(str(theirs)) if theirs is not None else b""
        except ValueError:
            return
        if len(digest) != 32 or digest == self._policy.digest:
            return
        try:
            key.verify(sig, signed_for(digest))
        except InvalidSignature:
            return
        raise AuthError(
            f"policy mismatch: the request is for policy {digest.hex()}, "
            f"this enclave serves {self._policy.digest.hex()}"
        )

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        """Authenticate and take the RPC's slots here, before it gets a worker thread.

        gRPC's synchronous server runs this on its polling thread, then hands the RPC to
        a worker, which for a unary method waits for the request message, without a
        timeout. Everything that decides whether a caller may hold a worker therefore
        happens here, from the metadata alone: a unary request's signature covers the
        digest of its body, which the client also sends (``cctrain-body-sha256``), so a
        stranger never reaches a worker, and a party holds at most its own budget. Every
        handler is then served as a client stream, so its behaviour starts at once and
        waits a bounded time for the one request message of a unary method (the health
        check at most 0.5 s); its slots come back when its worker is done with it.
        """
        method = details.method
        handler = continuation(details)
        if handler is None:
            return None
        lim = self._limits
        if method == HEALTH_CHECK:
            give = self._take([("health", lim.health)])
            if isinstance(give, str):
                return _refusal_handler(handler, grpc.StatusCode.RESOURCE_EXHAUSTED, give)
            return _health_check_handler(handler, give, self._health)
        if method.startswith(UNAUTHENTICATED_PREFIXES):
            give = self._take([("open_streams", lim.open_streams)])
            if isinstance(give, str):
                return _refusal_handler(handler, grpc.StatusCode.RESOURCE_EXHAUSTED, give)
            return _served(handler, give=give, timeout_s=lim.request_timeout_s, ours=False)
        metadata = dict(details.invocation_metadata or ())
        try:
            body = sha256(b"") if handler.request_streaming else _claimed_body(metadata)
            party = self._authenticate(method, metadata, body)
        except AuthError as exc:
            return _refusal_handler(handler, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        streams = bool(handler.request_streaming or handler.response_streaming)
        give = self._take(
            self._stream_budgets(method, party)
            if streams
            else [("unary", lim.unary), (f"unary/{party}", lim.unary_per_party)]
        )
        if isinstance(give, str):
            return _refusal_handler(handler, grpc.StatusCode.RESOURCE_EXHAUSTED, give)
        return _served(
            handler,
            give=give,
            timeout_s=lim.request_timeout_s,
            ours=True,
            party=party,
            body_sha256=None if handler.request_streaming else body,
        )

    def _take(self, budgets: list[tuple[str, int]]) -> Callable[[], None] | str:
        """Take one slot of each budget: a function that gives them back (once), or the
        refusal to send when one is full."""
        full = self._slots.take(budgets)
        if full is not None:
            kind, _, party = full.partition("/")
            scope = f" from party {party!r}" if party else " in total"
            return (
                f"the enclave is at its limit of {dict(budgets)[full]} concurrent "
                f"{_BUDGET_WORDS[kind]}{scope}; retry when one has finished"
            )
        return once(lambda: self._slots.give([n for n, _ in budgets]))

    def _stream_budgets(self, method: str, party: str) -> list[tuple[str, int]]:
        lim = self._limits
        budgets = [("streams", lim.streams), (f"streams/{party}", lim.streams_per_party)]
        if method.endswith("/WatchTraining"):
            budgets.append((f"watches/{party}", lim.watches_per_party))
        return budgets


HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def _claimed_body(metadata: dict[str, Any]) -> bytes:
    try:
        digest = bytes.fromhex(str(metadata[MD_BODY]))
    except (KeyError, ValueError):
        digest = b""
    if len(digest) != 32:
        raise AuthError(f"missing or malformed authentication metadata ({MD_BODY})")
    return digest


def _stream_handler(handler: Any, behavior: Callable[..., Any]) -> Any:
    """``behavior`` as a client-streaming handler of ``handler``'s response arity. A
    single response is serialized by the behaviour itself (so that its slot covers that
    work too); a stream of responses by gRPC, between the generator's steps."""
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            behavior,
            request_deserializer=None,  # raw bytes: parsed (or refused) by the behaviour
            response_serializer=handler.response_serializer,
        )
    return grpc.stream_unary_rpc_method_handler(
        behavior, request_deserializer=None, response_serializer=None
    )


def _refusal_handler(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """Refuse at once, without waiting for (or reading) any request message."""

    def refuse(_requests: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    return _stream_handler(handler, refuse)


#: How long a health check waits for its request (to learn which service it asks about).
#: Short: the message normally comes with the headers, and a check that sends none must not
#: hold its slot; it is then answered for the server as a whole.
HEALTH_READ_S = 0.5
HEALTH_SERVICES = frozenset({"", "cctrain.v1.Enclave", "grpc.health.v1.Health"})


def _health_check_handler(
    handler: Any, give: Callable[[], None], status: Callable[[], int] = lambda: 1
) -> Any:
    """``Health.Check``: the run's status (``status()``: SERVING, or NOT_SERVING while the
    state is locked or once the run failed) for the server and its services, NOT_FOUND for
    others (as the health protocol says), answered within ``HEALTH_READ_S`` whatever the
    caller sends."""
    from grpc_health.v1 import health_pb2

    def check(requests: Any, context: grpc.ServicerContext) -> Any:
        try:
            raw = _one_message(requests, context, HEALTH_READ_S, on_timeout=None)
            if raw is not None:
                try:
                    service = health_pb2.HealthCheckRequest.FromString(raw).service
                except DecodeError:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED)
                if service not in HEALTH_SERVICES:
                    context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
            return health_pb2.HealthCheckResponse(status=status()).SerializeToString()
        finally:
            give()

    return _stream_handler(handler, check)


def _served(
    handler: Any,
    *,
    give: Callable[[], None],
    timeout_s: float,
    ours: bool,
    party: str | None = None,
    body_sha256: bytes | None = None,
) -> Any:
    """``handler`` served with its slots, given back when its worker is done with it.

    Not when gRPC reports the RPC ended: a cancelled RPC ends at once, while its worker may
    still be inside the handler, and a slot given back then would let a party that opens and
    cancels watches in a loop hold far more workers than its budget. So: when the behaviour
    returns (a single response is serialized before that), when a response stream's
    generator ends, or when a generator gRPC never started is collected.
    """
    deserialize = handler.request_deserializer
    serialize = handler.response_serializer
    response_streaming = bool(handler.response_streaming)

    def finish(result: Any) -> Any:
        if response_streaming:
            return _release_at_end(result, give)
        try:
            return serialize(result)
        finally:
            give()

    if handler.request_streaming:
        inner = handler.stream_unary or handler.stream_stream

        def stream_behavior(requests: Any, context: grpc.ServicerContext) -> Any:
            try:
                if party is not None:
                    current_party.set(party)
                decoded = (
                    _decoded_stream(requests, deserialize)
                    if ours
                    else _aborting_stream(requests, deserialize, context)
                )
                result = inner(decoded, context)
            except BaseException:
                give()
                raise
            return finish(result)

        return _stream_handler(handler, stream_behavior)

    inner_unary = handler.unary_unary or handler.unary_stream

    def unary_behavior(requests: Any, context: grpc.ServicerContext) -> Any:
        try:
            raw = _one_message(requests, context, timeout_s)
            assert raw is not None
            if body_sha256 is not None and sha256(raw) != body_sha256:
                context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "the request message is not the one its signature covers",
                )
            try:
                request = deserialize(raw)
            except DecodeError:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED)
            if party is not None:
                current_party.set(party)
            result = inner_unary(request, context)
        except BaseException:
            give()
            raise
        return finish(result)

    return _stream_handler(handler, unary_behavior)


def _one_message(
    requests: Iterator[bytes],
    context: grpc.ServicerContext,
    timeout_s: float,
    *,
    on_timeout: str | None = "abort",
) -> bytes | None:
    """The single request message of a unary method, waited for at most ``timeout_s``."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def read() -> None:
        try:
            box["message"] = next(requests, None)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the handler's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=read, name="cctrain-rpc-rx", daemon=True).start()
    if not done.wait(timeout_s):
        if on_timeout is None:
            return None
        context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the request message did not arrive within {timeout_s:.0f}s",
        )
    if "error" in box:
        raise box["error"]
    if box.get("message") is None:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request message is missing")
    message: bytes = box["message"]
    return message


def _decoded_stream(raw: Iterator[bytes], deserialize: Callable[[bytes], Any]) -> Iterator[Any]:
    """A client stream's messages, parsed; one that does not parse is a refusal, which the
    handler answers (INVALID_ARGUMENT) as it answers every other refusal of its input."""
    for data in raw:
        try:
            message = deserialize(data)
        except DecodeError:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED) from None
        yield message


def _aborting_stream(
    raw: Iterator[bytes], deserialize: Callable[[bytes], Any], context: grpc.ServicerContext
) -> Iterator[Any]:
    """The same for a handler that is not ours (reflection): it ends the RPC there."""
    for data in raw:
        try:
            message = deserialize(data)
        except DecodeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED)
        yield message


_BUDGET_WORDS = {
    "health": "health checks",
    "open_streams": "unauthenticated streams",
    "unary": "requests",
    "streams": "streams (uploads and watches)",
    "watches": "watches",
}
