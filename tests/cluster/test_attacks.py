"""The host against the cluster: it owns the network, the rendezvous store, the workers'
command lines and restarts, and may run a rank of its own. Every attack here runs against real
processes over real gloo on loopback and must end in a clear refusal, never a hang, never a
step trained on what the host touched."""

from __future__ import annotations

import datetime as _dt
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cctrain.policy import thaw
from tests.cluster.conftest import DP, _env, spawn_worker, worker_argv
from tests.consortium import Consortium, make_consortium

torch = pytest.importorskip("torch")
from cctrain_enclave.cluster.handshake import (  # noqa: E402
    ClusterError,
    form_cluster,
    open_rendezvous,
)
from cctrain_enclave.cluster.links import LinkError  # noqa: E402
from cctrain_enclave.cluster.parallel import Coordinator  # noqa: E402
from cctrain_enclave.providers.simulated import SimulatedProvider  # noqa: E402
from cctrain_enclave.trainer.train import TrainingRandomness, train  # noqa: E402

PLAIN = {"enabled": False}
TRAINING = {
    "model": {"name": "mlp", "params": {"hidden": [8]}},
    "optimizer": {"name": "sgd", "lr": 0.2},
    "epochs": 1,
    "batch_size": 32,
    "seed": 5,
}
#: How long a rank waits for the others: a safety net only, no test below waits it out
#: except the one about a worker that never comes (whose own policy says 2 s).
TIMEOUT_S = 10
#: A worker process imports torch before it joins: on a loaded 2-core machine, seconds.
START_S = 60
#: How long rank 0's rendezvous outlives a refusal, for the workers to read what they need.
GRACE_S = 5


def _consortium(
    tmp: Path, *, ranks: int = 2, privacy: dict[str, Any] | None = None, **cluster: Any
) -> Consortium:
    return make_consortium(
        tmp / "c",
        training=TRAINING,
        privacy=privacy or {"enabled": False},
        cluster={"ranks": ranks, "timeout_s": TIMEOUT_S} | cluster,
    )


def _data(rows: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    return x, (x[:, 0] - x[:, 2] > 0).astype(np.int64)


def _train(session: Any, c: Consortium, data: Any = None) -> Any:
    """The consortium's own (normalised) plan, which every worker checks against its copy."""
    x, y = _data() if data is None else data
    return train(
        x,
        y,
        num_classes=2,
        training=thaw(c.signed.policy.training),
        privacy=thaw(c.signed.policy.privacy),
        simulated_platform=True,
        checkpoint=None,
        progress=None,
        randomness=TrainingRandomness.fixed_for_tests(3),
        cluster=Coordinator(session),
    )


@dataclass
class Outcome:
    """How a cluster run ended, on every rank."""

    error: BaseException | None  # what rank 0 raised (None: it went through)
    result: Any
    codes: list[int | None] = field(default_factory=list)  # the workers' exit statuses
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def worker(self, i: int = 0) -> str:
        return self.outputs[i]


def _without_frames(exc: BaseException) -> BaseException:
    """``exc`` and the exceptions it chains, without their tracebacks: their frames would
    keep rank 0's store alive, and a worker waiting on it would wait out its timeout."""
    seen: BaseException | None = exc
    while seen is not None:
        seen.__traceback__ = None
        seen = seen.__cause__ or seen.__context__
    return exc


def run_cluster(
    c: Consortium,
    tmp: Path,
    *,
    body: Callable[[Any], Any] | None = None,
    host_store: Callable[[Any], Any] | None = None,
    argv_for: Callable[[int, list[str]], list[str]] | None = None,
    workers: int | None = None,
) -> Outcome:
    """Rank 0 in this process, each worker a real ``cctrain-enclave worker`` process.

    Rank 0 joins once every worker's hello is in the store (so the short policy timeout
    never races a worker's start); ``host_store`` wraps the store rank 0 reads (the host
    between rank 0 and its rendezvous); ``body`` runs on the formed session. The workers'
    exit statuses are always collected: a worker still running 20 s after rank 0 ended is a
    hang, killed and reported as ``None``."""
    policy = c.signed.policy
    world = int(policy.cluster["ranks"])
    store: Any = open_rendezvous(policy, rank=0, host="127.0.0.1", port=0)
    procs = []
    for r in range(1, world if workers is None else workers + 1):
        argv = worker_argv(c.policy_path, r, store.port, tmp / f"rank{r}")
        if argv_for is not None:
            argv = argv_for(r, argv)
        procs.append(spawn_worker(argv))
    deadline = time.monotonic() + START_S
    pending = [f"hello/{r}" for r in range(1, len(procs) + 1)]
    while pending and time.monotonic() < deadline:
        pending = [k for k in pending if not store.check([k])]
        if any(p.poll() is not None for p in procs):
            break  # a worker ended before it said hello: rank 0 joins and sees
        time.sleep(0.02)
    session = None
    error: BaseException | None = None
    result = None
    started = time.monotonic()
    try:
        session = form_cluster(
            policy=policy,
            provider=SimulatedProvider(tmp / "rank0"),
            rank=0,
            store=store if host_store is None else host_store(store),
            host="127.0.0.1",
        )
        if body is not None:
            result = body(session)
    except Exception as exc:  # noqa: BLE001 - what rank 0 raised is what the test asserts on
        error = _without_frames(exc)
    finally:
        seconds = time.monotonic() - started
        if session is not None:
            session.close()
    if error is not None:
        # Rank 0 gave up. A worker that can see why (the evidence rank 0 published) ends
        # on its own; one that still waits on the store after GRACE_S learns it when the
        # rendezvous goes away, rather than at its timeout.
        grace = time.monotonic() + GRACE_S
        while any(p.poll() is None for p in procs) and time.monotonic() < grace:
            time.sleep(0.05)
        session = store = None
        gc.collect()
    codes: list[int | None] = []
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=20)
            codes.append(p.returncode)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            codes.append(None)
        outputs.append(out)
    del store
    return Outcome(error, result, codes, outputs, seconds)


def _error_line(out: str) -> str:
    """The worker's one ``error: ...`` line (its log lines interleave with it)."""
    lines = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


# --------------------------------------------------------------------------- 1. measurements


def test_a_worker_whose_measurement_is_not_allowed_is_refused(tmp_path: Path) -> None:
    c = _consortium(tmp_path, measurements=["00" * 48])
    out = run_cluster(c, tmp_path, body=lambda s: pytest.fail("the cluster formed"))
    assert isinstance(out.error, ClusterError), out.error
    assert "rank 1's evidence is refused" in str(out.error)
    assert "measurement" in str(out.error)
    # The worker holds itself to the same list: it refuses its own evidence, exits 1.
    assert out.codes == [1], out.worker()
    assert _error_line(out.worker()).startswith("error: rank 1's evidence is refused")


# --------------------------------------------------------------------------- 3. who joins


def test_a_rank_outside_the_policy_is_a_usage_error(tmp_path: Path) -> None:
    c = _consortium(tmp_path)
    argv = worker_argv(c.policy_path, 2, 1, tmp_path / "rank2")
    p = subprocess.run(argv, env=_env(), text=True, capture_output=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "--rank must be in [1, 1] for this policy" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("rendezvous", ["nohost", "127.0.0.1:abc", "127.0.0.1:99999", ":1234"])
def test_a_malformed_rendezvous_is_a_usage_error(tmp_path: Path, rendezvous: str) -> None:
    c = _consortium(tmp_path)
    argv = worker_argv(c.policy_path, 1, 1, tmp_path / "rank1")
    argv[argv.index("--rendezvous") + 1] = rendezvous
    p = subprocess.run(argv, env=_env(), text=True, capture_output=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith(
        f"error: Invalid value for '--rendezvous': got {rendezvous!r}, want HOST:PORT"
    ), p.stderr
    assert "Traceback" not in p.stderr


def test_rank_0_without_its_worker_stops_at_the_timeout(tmp_path: Path) -> None:
    c = _consortium(tmp_path, timeout_s=2)
    out = run_cluster(c, tmp_path, workers=0)
    assert isinstance(out.error, ClusterError), out.error
    assert str(out.error).startswith("rank 1 did not join")
    assert 1.5 < out.seconds < 10, out.seconds


# --------------------------------------------------------------------------- 2. the links


def _flip(frame: bytes, at: int) -> bytes:
    b = bytearray(frame)
    b[at % len(b)] ^= 0x01
    return bytes(b)


class TamperingTransport:
    """The network between rank 0 and its workers, wrapped around rank 0's real
    :class:`GlooTransport`: frame ``at`` (counted per direction, all peers together) is
    replayed (the previous frame goes in its place), swapped with the next, dropped or
    bit-flipped. Every frame that does cross is recorded."""

    def __init__(self, inner: Any, *, direction: str, mode: str, at: int) -> None:
        self.inner, self.direction, self.mode, self.at = inner, direction, mode, at
        self.sent: list[bytes] = []  # what rank 0 sealed, in order
        self.received: list[bytes] = []  # what reached rank 0, in order
        self._held: tuple[int, bytes] | None = None
        self.peers: list[int] = []

    def send(self, peer: int, frame: bytes) -> None:
        n = len(self.sent)
        self.sent.append(frame)
        if self.direction != "send" or n not in (self.at, self.at + 1):
            self.inner.send(peer, frame)
        elif self.mode == "replay" and n == self.at:
            self.inner.send(peer, self.sent[n - 1])
        elif self.mode == "flip" and n == self.at:
            self.inner.send(peer, _flip(frame, len(frame) // 2))
        elif self.mode == "drop" and n == self.at:
            pass
        elif self.mode == "swap" and n == self.at:
            self._held = (peer, frame)
        elif self.mode == "swap" and self._held is not None:
            self.inner.send(peer, frame)
            self.inner.send(*self._held)
        else:
            self.inner.send(peer, frame)

    def recv(self, peer: int, max_bytes: int) -> bytes:
        n = len(self.received)
        here = self.direction == "recv" and n == self.at
        if here and self.mode == "replay":
            frame = self.received[n - 1]  # the real one stays on the wire, unread
        elif here and self.mode == "cross":  # another worker's frame in its place
            frame = self.inner.recv(next(p for p in self.peers if p != peer), max_bytes)
        else:
            frame = self.inner.recv(peer, max_bytes)
            if here and self.mode == "flip":
                frame = _flip(frame, -1)  # the last byte: the tag
            elif here and self.mode == "drop":  # wait for one more, which never comes
                frame = self.inner.recv(peer, max_bytes)
        self.received.append(frame)
        return frame


def _tampered_run(
    tmp: Path, privacy: dict[str, Any], *, ranks: int = 2, timeout_s: int = TIMEOUT_S, **tamper: Any
) -> tuple[Outcome, Any]:
    c = _consortium(tmp, privacy=privacy, ranks=ranks, timeout_s=timeout_s)
    taps: list[TamperingTransport] = []

    def body(session: Any) -> Any:
        tap = TamperingTransport(session.links._transport, **tamper)
        tap.peers = session.links.peers
        session.links._transport = tap
        taps.append(tap)
        return _train(session, c)

    return run_cluster(c, tmp, body=body), taps[0]


# rank 0 sends: 0 setup, 1 rows (one chunk), 2 step 0, 3 step 1...
@pytest.mark.parametrize(
    ("mode", "at", "expect"),
    [
        ("replay", 1, "message 1 ('rows')"),
        ("flip", 1, "message 1 ('rows')"),
        ("drop", 0, "message 0 ('setup')"),
        ("swap", 0, "message 0 ('setup')"),
        ("replay", 3, "message 3 ('step')"),
        ("flip", 3, "message 3 ('step')"),
    ],
)
def test_a_tampered_frame_to_a_worker_stops_the_run(
    tmp_path: Path, mode: str, at: int, expect: str
) -> None:
    out, tap = _tampered_run(tmp_path, PLAIN, direction="send", mode=mode, at=at)
    assert isinstance(out.error, LinkError), out.error
    assert out.result is None
    assert out.codes == [1], out.worker()
    line = _error_line(out.worker())
    assert line == (
        f"error: {expect} from rank 0 failed authentication: altered, replayed, reordered, "
        "dropped before it, or not from that rank"
    ), line
    assert "run done" not in out.worker()


# rank 0 receives: 0 ready, 1 the sums of step 0, 2 of step 1... (3 ranks: 0 and 1 the
# readies, then rank 1's and rank 2's sums of each step in turn)
@pytest.mark.parametrize(
    ("mode", "at", "ranks", "expect"),
    [
        ("replay", 1, 2, "message 1 ('sums') from rank 1"),
        ("flip", 0, 2, "message 0 ('ready') from rank 1"),
        ("flip", 2, 2, "message 2 ('sums') from rank 1"),
        ("cross", 2, 3, "message 1 ('sums') from rank 1"),
    ],
)
def test_a_tampered_frame_from_a_worker_stops_the_run(
    tmp_path: Path, mode: str, at: int, ranks: int, expect: str
) -> None:
    out, tap = _tampered_run(tmp_path, PLAIN, direction="recv", mode=mode, at=at, ranks=ranks)
    assert isinstance(out.error, LinkError), out.error
    assert str(out.error).startswith(f"{expect} failed authentication"), out.error
    assert out.result is None
    # Rank 0 stopped at the tampered frame: nothing after it was read, let alone summed.
    assert len(tap.received) == at + 1
    # Rank 0 gives up on a link that failed at once: it does not wait out the timeout on a
    # worker that is not listening (gloo's send blocks until the peer receives).
    assert out.seconds < TIMEOUT_S
    # The workers end when rank 0 closes the group: non-zero, nothing finished.
    for code, text in zip(out.codes, out.outputs, strict=True):
        assert code == 1, text[-3000:]
        assert "error: rank 0 " in _error_line(text), text[-3000:]
        assert "run done" not in text


def test_a_frame_from_a_worker_that_never_comes_ends_at_the_timeout(tmp_path: Path) -> None:
    out, tap = _tampered_run(tmp_path, PLAIN, direction="recv", mode="drop", at=1, timeout_s=2)
    assert isinstance(out.error, LinkError), out.error
    assert str(out.error).startswith("rank 1 went away"), out.error
    assert out.codes[0] is not None, "the worker hung"


# --------------------------------------------------------------------------- 4. the store


class HostStore:
    """The rendezvous as rank 0 reaches it through the host: every call goes to the real
    store (which the workers share), and the host's edit for a key runs on the real store
    just before rank 0 sets or gets that key (so the workers see the edit too)."""

    def __init__(
        self,
        real: Any,
        *,
        before_set: dict[str, Callable[[Any], None]] | None = None,
        before_get: dict[str, Callable[[Any], None]] | None = None,
    ) -> None:
        self.real = real
        self._before_set = dict(before_set or {})
        self._before_get = dict(before_get or {})

    def set(self, key: str, value: bytes) -> None:
        if key in self._before_set:
            self._before_set.pop(key)(self.real)
        self.real.set(key, value)

    def get(self, key: str) -> bytes:
        if key in self._before_get:
            self._before_get.pop(key)(self.real)
        return bytes(self.real.get(key))


def _wait(store: Any, *keys: str) -> None:
    store.wait(list(keys), _dt.timedelta(seconds=START_S))


def _edit_hello(store: Any, rank: int, **fields: Any) -> None:
    hello = json.loads(bytes(store.get(f"hello/{rank}")))
    store.set(f"hello/{rank}", json.dumps(hello | fields, sort_keys=True).encode())


def _another_link_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    raw = (
        X25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return raw.hex()


@pytest.mark.parametrize(
    ("edit", "rank0_says", "worker_says"),
    [
        (
            {"link_key": _another_link_key()},
            "rank 1's evidence is refused: ",
            "error: rank 0's evidence is refused: ",
        ),
        (
            {"nonce": "ab" * 32},
            "rank 1's evidence is refused: ",
            "error: rank 0's evidence is refused: ",
        ),
        (
            {"policy": "cd" * 32},
            "rank 1 runs under another policy (cdcdcdcdcdcdcdcd…, this rank ",
            "error: rank 0 sent no evidence: ",
        ),
    ],
    ids=["link-key", "nonce", "policy"],
)
def test_a_hello_edited_in_the_store_is_refused(
    tmp_path: Path, edit: dict[str, Any], rank0_says: str, worker_says: str
) -> None:
    c = _consortium(tmp_path)

    def host(real: Any) -> Any:  # every worker said hello: the host rewrites rank 1's
        _edit_hello(real, 1, **edit)
        return real

    out = run_cluster(c, tmp_path, host_store=host)
    assert isinstance(out.error, ClusterError), out.error
    assert str(out.error).startswith(rank0_says), out.error
    if "evidence is refused" in rank0_says:
        assert "report_data" in str(out.error)
    assert out.codes == [1], out.worker()
    assert _error_line(out.worker()).startswith(worker_says)


def test_evidence_swapped_between_ranks_is_refused_by_every_rank(tmp_path: Path) -> None:
    c = _consortium(tmp_path, ranks=3)

    def swap(real: Any) -> None:  # both workers published theirs; rank 0 is about to
        _wait(real, "evidence/1", "evidence/2")
        one, two = bytes(real.get("evidence/1")), bytes(real.get("evidence/2"))
        real.set("evidence/1", two)
        real.set("evidence/2", one)

    out = run_cluster(
        c, tmp_path, host_store=lambda real: HostStore(real, before_set={"evidence/0": swap})
    )
    assert isinstance(out.error, ClusterError), out.error
    assert str(out.error).startswith("rank 1's evidence is refused: "), out.error
    assert "report_data" in str(out.error)
    assert out.codes == [1, 1], out.outputs
    assert _error_line(out.worker(0)).startswith("error: rank 2's evidence is refused: ")
    assert _error_line(out.worker(1)).startswith("error: rank 1's evidence is refused: ")


def test_evidence_of_an_earlier_cluster_is_refused(tmp_path: Path) -> None:
    c = _consortium(tmp_path)
    first = run_cluster(c, tmp_path / "first", body=lambda s: bytes(s.store.get("evidence/1")))
    assert first.error is None, first.error
    old = first.result

    def replay(real: Any) -> None:
        _wait(real, "evidence/1")
        real.set("evidence/1", old)

    out = run_cluster(
        c,
        tmp_path / "again",
        host_store=lambda real: HostStore(real, before_set={"evidence/0": replay}),
    )
    assert isinstance(out.error, ClusterError), out.error
    assert str(out.error).startswith("rank 1's evidence is refused: "), out.error
    assert "report_data" in str(out.error)
    assert out.codes == [1], out.worker()


# --------------------------------------------------------------------------- 5. the wire

#: A training row no real data holds: its 16 bytes must never cross the wire in clear.
MARKER_ROW = np.array([1234.5678, -8765.4321, 0.000123, 31415.926], dtype=np.float32)
MARKER = MARKER_ROW.tobytes()


class _Capture:
    """Every packet on loopback while it runs (AF_PACKET: Linux, root)."""

    def __init__(self) -> None:
        import socket
        import threading

        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        self._sock.bind(("lo", 0))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._chunks.append(self._sock.recv(1 << 17))
            except TimeoutError:
                continue

    def __enter__(self) -> _Capture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    @property
    def packets(self) -> list[bytes]:
        return list(self._chunks)


def _capture_allowed() -> str | None:
    if not sys.platform.startswith("linux"):
        return "capturing loopback needs Linux's AF_PACKET sockets"
    import os

    if os.geteuid() != 0:
        return "capturing loopback needs root (CAP_NET_RAW)"
    return None


@pytest.mark.skipif(_capture_allowed() is not None, reason=str(_capture_allowed()))
def test_no_row_crosses_the_wire_in_clear(tmp_path: Path) -> None:
    x, y = _data()
    x[::3] = MARKER_ROW  # a third of the rows, so each worker's slice holds it many times
    assert x.tobytes().count(MARKER) >= 60
    c = _consortium(tmp_path, privacy=DP)
    taps: list[TamperingTransport] = []

    def body(session: Any) -> Any:
        tap = TamperingTransport(session.links._transport, direction="none", mode="", at=-1)
        session.links._transport = tap
        taps.append(tap)
        return _train(session, c, (x, y))

    with _Capture() as cap:
        out = run_cluster(c, tmp_path, body=body)
    assert out.error is None, out.error
    assert out.codes == [0], out.worker()
    assert out.result.metrics["steps"] > 0
    wire = b"".join(cap.packets)
    # Positive control: what rank 0 sealed did cross, and the capture saw it (the rows
    # frame, which holds the marker rows in clear before sealing; 64 bytes from its start
    # and from its middle, each in one TCP segment on loopback's 64 KiB MTU).
    rows_frame = taps[0].sent[1]
    assert len(rows_frame) > 100 * 16
    for at in (0, len(rows_frame) // 2):
        assert rows_frame[at : at + 64] in wire, f"sealed rows frame at {at} not captured"
    # A worker's sums crossed too (sealed): the capture saw both directions.
    assert taps[0].received[1][:64] in wire, "a worker's sealed sums not captured"
    assert wire.count(MARKER) == 0, "a training row crossed loopback in clear"
    # Nor a row split across two packets: no 8-byte half of it either.
    assert wire.count(MARKER[:8]) == wire.count(MARKER[8:]) == 0, "half a row in clear"


# --------------------------------------------------------------------------- 6. other ranks


def test_a_worker_started_with_another_signed_policy_is_refused(tmp_path: Path) -> None:
    from tests.consortium import another_policy

    c = _consortium(tmp_path)
    other = another_policy(
        c,
        training=TRAINING | {"epochs": 2},
        privacy=PLAIN,
        cluster={"ranks": 2, "timeout_s": TIMEOUT_S},
    )
    other_path = tmp_path / "other.signed.json"
    other_path.write_text(other.envelope.to_json())

    def argv_for(rank: int, argv: list[str]) -> list[str]:
        argv[argv.index("--policy") + 1] = str(other_path)
        return argv

    out = run_cluster(c, tmp_path, argv_for=argv_for)
    assert isinstance(out.error, ClusterError), out.error
    assert str(out.error).startswith(
        f"rank 1 runs under another policy ({other.policy.digest.hex()[:16]}…"
    ), out.error
    assert out.codes == [1], out.worker()
    assert _error_line(out.worker()).startswith("error: rank 0 runs under another policy")


#: The host starts the worker's trust domain in debug mode (the simulated chip says so).
_DEBUG_WORKER = (
    "import functools, sys\n"
    "from cctrain_enclave.providers import simulated\n"
    "simulated.SimulatedProvider.__init__ = functools.partialmethod("
    "simulated.SimulatedProvider.__init__, debug=True)\n"
    "from cctrain_enclave.cli import main\n"
    "sys.argv[0] = 'cctrain-enclave'\n"
    "main()\n"
)


def test_a_worker_in_debug_mode_is_refused(tmp_path: Path) -> None:
    c = _consortium(tmp_path)
    out = run_cluster(
        c, tmp_path, argv_for=lambda r, argv: [sys.executable, "-c", _DEBUG_WORKER, *argv[3:]]
    )
    assert isinstance(out.error, ClusterError), out.error
    assert str(out.error).startswith("rank 1's evidence is refused: "), out.error
    assert "debug" in str(out.error)
    assert out.codes == [1], out.worker()
