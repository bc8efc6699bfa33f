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
from cctrain_enclave.limits import ServerLimits, Slots, guarded

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
    ) -> None:
        self._policy = policy
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
        method = details.method
        handler = continuation(details)
        if handler is None:
            return None
        if method.startswith(UNAUTHENTICATED_PREFIXES):
            return self._unauthenticated(method, handler)
        metadata = dict(details.invocation_metadata or ())

        if handler.request_streaming:
            try:
                party = self._authenticate(method, metadata, sha256(b""))
            except AuthError as exc:
                return _deny_handler(handler, exc)
            inner = _guard(
                handler.stream_unary or handler.stream_stream,
                self._slots,
                self._stream_budgets(method, party),
                bool(handler.response_streaming),
            )

            deserialize_stream = handler.request_deserializer

            def stream_behavior(request_iterator: Any, context: grpc.ServicerContext) -> Any:
                current_party.set(party)
                return inner(_decoded_stream(request_iterator, deserialize_stream), context)

            factory = (
                grpc.stream_stream_rpc_method_handler
                if handler.response_streaming
                else grpc.stream_unary_rpc_method_handler
            )
            return factory(
                stream_behavior,
                request_deserializer=None,  # raw bytes: a message that does not parse is refused
                response_serializer=handler.response_serializer,
            )

        inner_unary = handler.unary_unary or handler.unary_stream
        deserialize = handler.request_deserializer
        streaming_response = bool(handler.response_streaming)

        def unary_behavior(raw: bytes, context: grpc.ServicerContext) -> Any:
            try:
                party = self._authenticate(method, metadata, sha256(raw))
            except AuthError as exc:
                exc.abort(context)
            try:
                request = deserialize(raw)
            except DecodeError:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED)
            current_party.set(party)
            budgets = (
                self._stream_budgets(method, party)
                if streaming_response
                else [
                    ("unary", self._limits.unary),
                    (f"unary/{party}", self._limits.unary_per_party),
                ]
            )
            return _guard(inner_unary, self._slots, budgets, streaming_response)(request, context)

        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return factory(
            unary_behavior,
            request_deserializer=None,  # raw bytes: the digest is checked first
            response_serializer=handler.response_serializer,
        )

    def _stream_budgets(self, method: str, party: str) -> list[tuple[str, int]]:
        lim = self._limits
        budgets = [("streams", lim.streams), (f"streams/{party}", lim.streams_per_party)]
        if method.endswith("/WatchTraining"):
            budgets.append((f"watches/{party}", lim.watches_per_party))
        return budgets

    def _unauthenticated(self, method: str, handler: Any) -> Any:
        """Health and reflection answer anyone, from budgets of their own."""
        streaming = bool(handler.request_streaming or handler.response_streaming)
        budgets = (
            [("open_streams", self._limits.open_streams)]
            if streaming
            else [("health", self._limits.health)]
        )
        kind = (bool(handler.request_streaming), bool(handler.response_streaming))
        inner = {
            (False, False): handler.unary_unary,
            (False, True): handler.unary_stream,
            (True, False): handler.stream_unary,
            (True, True): handler.stream_stream,
        }[kind]
        factory = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[kind]
        deserialize = handler.request_deserializer

        def decoded(request: Any, context: grpc.ServicerContext) -> Any:
            if kind[0]:
                return inner(_aborting_stream(request, deserialize, context), context)
            try:
                message = deserialize(request)
            except DecodeError:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED)
            return inner(message, context)

        return factory(
            _guard(decoded, self._slots, budgets, bool(handler.response_streaming)),
            request_deserializer=None,  # raw bytes: a message that does not parse is refused
            response_serializer=handler.response_serializer,
        )


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


def _guard(
    behavior: Callable[..., Any],
    slots: Slots,
    budgets: list[tuple[str, int]],
    streaming_response: bool,
) -> Callable[..., Any]:
    def refusal(full: str) -> str:
        kind, _, party = full.partition("/")
        scope = f" from party {party!r}" if party else " in total"
        return (
            f"the enclave is at its limit of {dict(budgets)[full]} concurrent "
            f"{_BUDGET_WORDS[kind]}{scope}; retry when one has finished"
        )

    return guarded(
        behavior,
        slots=slots,
        wants=lambda: budgets,
        streaming_response=streaming_response,
        refusal=refusal,
    )


def _deny_handler(handler: Any, error: AuthError) -> Any:
    def deny(_request: Any, context: grpc.ServicerContext) -> Any:
        error.abort(context)

    factory = {
        (True, True): grpc.stream_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
    }[(True, bool(handler.response_streaming))]
    return factory(deny, request_deserializer=None, response_serializer=handler.response_serializer)
