"""The in-process replay cache against a host that moves its clock to make it forget."""

from __future__ import annotations

import os

from cctrain.protocol import AUTH_WINDOW_MS
from cctrain_enclave.auth import ReplayCache


def test_a_nonce_is_accepted_once() -> None:
    cache = ReplayCache()
    nonce = os.urandom(16)
    assert cache.check_and_add("hospital-a", nonce, 1_000, 1_000)
    assert not cache.check_and_add("hospital-a", nonce, 1_000, 1_000)
    assert cache.check_and_add("hospital-b", nonce, 1_000, 1_000)  # nonces are per party


def test_pruning_by_a_clock_moved_forward_then_back_replays_nothing() -> None:
    """The host moves its clock forward (inside the freshness window, so honest requests
    still pass) to make the cache prune, then back to the time of a captured request."""
    cache = ReplayCache()
    cache.MAX_ENTRIES = 3
    captured = os.urandom(16)
    t0 = 10_000_000
    assert cache.check_and_add("hospital-a", captured, t0, t0)
    later = t0 + 33 * 60_000
    for i in range(4):
        assert cache.check_and_add("hospital-a", os.urandom(16), later + i, later + i)
    forward = later + AUTH_WINDOW_MS - 10_000
    assert cache.check_and_add("hospital-a", os.urandom(16), forward, forward)  # prunes
    assert not cache.check_and_add("hospital-a", captured, t0, t0)  # the clock moved back
    assert cache.check_and_add("hospital-a", os.urandom(16), later + 10, later + 10)
