"""Bounds on what callers can hold: the enclave answers health checks under any flood.

gRPC's synchronous server gives each RPC a worker thread for as long as it runs, and a
streaming RPC (an upload, a watch, server reflection) can run forever. Without bounds, 32
idle streams from anyone, credentials or not, took every worker and the enclave stopped
answering, health checks included. So every RPC takes a *slot* before its handler runs and
gives it back when the RPC ends; a call over its budget is refused at once
(``RESOURCE_EXHAUSTED``) instead of waiting for a worker. The budgets together stay below
the worker pool, so a worker is always free for the health check and for each party's
short requests:

========================  =========================================================
budget                    what it bounds
========================  =========================================================
``health``                unauthenticated ``Health.Check`` calls at once
``open_streams``          unauthenticated streams (``Health.Watch``, reflection)
``unary``                 authenticated short requests at once, ``unary_per_party`` each
``streams``               authenticated streams (uploads, watches), ``streams_per_party``
                          each, of which ``watches_per_party`` watches
========================  =========================================================

An upload that sends nothing for ``upload_idle_s`` is suspended (its acknowledged prefix
kept for a resume) and its stream closed; keepalive pings find dead peers, whose RPCs gRPC
then cancels. What one *provider* may store (shards, bytes, concurrent uploads) is the
policy's ``[limits]`` (:mod:`cctrain_enclave.quotas`), not the operator's.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServerLimits:
    workers: int = 128
    health: int = 4
    open_streams: int = 2
    unary: int = 24
    unary_per_party: int = 8
    streams: int = 80
    streams_per_party: int = 4
    watches_per_party: int = 2
    #: Seconds an upload may wait for its next message before the enclave suspends it.
    upload_idle_s: float = 120.0
    #: Seconds a unary request's message may take to arrive after its headers.
    request_timeout_s: float = 10.0
    #: Serve gRPC server reflection (unauthenticated; off unless asked for).
    reflection: bool = False
    #: HTTP/2 streams one connection may open at once.
    streams_per_connection: int = 16

    def __post_init__(self) -> None:
        held = self.health + self.open_streams + self.unary + self.streams
        if held >= self.workers:
            raise ValueError(
                f"the budgets ({held} concurrent RPCs) must stay below the worker pool "
                f"({self.workers}), or a flood can still take every worker"
            )

    def grpc_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_concurrent_streams", self.streams_per_connection),
            # Ping idle clients; a peer that does not answer is gone and its RPCs cancelled.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.max_connection_idle_ms", 10 * 60_000),
        ]


class Slots:
    """Counters with limits; a caller takes several at once, all or none."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, wants: list[tuple[str, int]]) -> str | None:
        """Take one unit of each named budget; on failure take none and return its name."""
        with self._lock:
            for name, limit in wants:
                if self._held.get(name, 0) >= limit:
                    return name
            for name, _ in wants:
                self._held[name] = self._held.get(name, 0) + 1
            return None

    def give(self, names: list[str]) -> None:
        with self._lock:
            for name in names:
                left = self._held.get(name, 0) - 1
                if left > 0:
                    self._held[name] = left
                else:
                    self._held.pop(name, None)

    def held(self, name: str) -> int:
        with self._lock:
            return self._held.get(name, 0)


def once(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn``, made safe to call any number of times from any thread: it runs once."""
    lock, done = threading.Lock(), [False]

    def run() -> None:
        with lock:
            if done[0]:
                return
            done[0] = True
        fn()

    return run


def _release_at_end(it: Iterator[Any], give: Callable[[], None]) -> Iterator[Any]:
    """``it``, giving the slots back when it ends, or (if gRPC never starts it: the RPC
    ended first) when it is collected."""
    gen = _released(it, give)
    weakref.finalize(gen, give)
    return gen


def _released(it: Iterator[Any], give: Callable[[], None]) -> Iterator[Any]:
    try:
        yield from it
    finally:
        give()
