"""Replay protection that survives restarts: a durable per-party fence on request times.

Within one run of the process, a signed request is accepted once: the replay cache holds
every (party, nonce) until its time leaves the freshness window. The cache is memory, so a
restart would forget it. The fence closes that gap without writing every nonce to disk:

* the enclave keeps, sealed on disk, for each party a time ``lease`` that is never below the
  signed time of any request it accepted from that party; it raises the lease (to the
  request's time plus ``LEASE_MS``, one write per party per ``LEASE_MS`` at most) *before*
  the request is handled;
* at start it loads the leases as the fence: a request signed at or before its party's fence
  was signed before the restart, so it is refused (with the time to wait: a party's fresh
  request passes once its clock is past the fence, at most ``LEASE_MS`` after its last
  request before the restart; the SDK waits and retries by itself).

The fence compares a party's signed times only with that party's own earlier signed times,
so the host's clock plays no part in it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from cctrain_enclave.state.sealing import BoundSealer, SealingError, atomic_write

LEASE_MS = 1_000
KIND = "request-fence"


class FenceError(Exception):
    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class RequestFence:
    def __init__(self, path: Path, sealer: BoundSealer, run_id: bytes) -> None:
        self.path = path
        self._sealer = sealer
        self._ids: tuple[bytes | str, ...] = (run_id,)
        self._lock = threading.Lock()
        self._leases: dict[str, int] = {}
        self._fence: dict[str, int] = {}

    def create(self) -> None:
        """A fresh fence (at genesis): nobody has sent anything yet."""
        self._leases, self._fence = {}, {}
        self._write()

    def load(self) -> None:
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            raise SealingError(
                f"the request replay fence {self.path.name} is missing although the journal "
                "exists: the state directory was tampered with or partly restored"
            ) from None
        doc = json.loads(self._sealer.unseal(KIND, self._ids, blob))
        self._leases = {str(k): int(v) for k, v in doc.items()}
        self._fence = dict(self._leases)

    def _write(self) -> None:
        data = json.dumps(self._leases, sort_keys=True).encode()
        atomic_write(self.path, self._sealer.seal(KIND, self._ids, data))

    def admit(self, party: str, time_ms: int) -> None:
        """Refuse a request signed before the restart; otherwise make its time durable."""
        with self._lock:
            fence = self._fence.get(party)
            if fence is not None and time_ms <= fence:
                raise FenceError(
                    f"request signed at {time_ms} ms precedes the enclave's restart "
                    f"(fence {fence} ms for {party!r}): a replay, or sent just before the "
                    "restart; sign it again",
                    retry_after_ms=fence - time_ms + 1,
                )
            if time_ms > self._leases.get(party, -1):
                self._leases[party] = time_ms + LEASE_MS
                self._write()
