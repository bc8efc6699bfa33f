"""What the enclave tells its operator: lifecycle events (logs), Prometheus metrics, health.

Everything here is derived from what every party already sees: the journal (phases, shards
accepted with their party, id, rows and plaintext size, checkpoints with their step and ε,
the release), the progress stream (step and ε, as WatchTraining streams them), the policy,
and the RPCs themselves (which the host sees on its network anyway). No data value, no loss
(it is private unless the policy lists it), no exception text from the training, no code
location of a model package ever reaches a log line or a metric. docs/operations.md maps
each metric to what a party sees.

:class:`RunObserver` is subscribed to the state's transitions: it diffs each new view
against the last to log one event per change and update the gauges, and sets the gRPC health
(NOT_SERVING while the state is locked or once the run failed). Each server has its own
:class:`EnclaveMetrics` (its own registry: tests run several enclaves in one process).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cctrain.journal import RunState

events_log = logging.getLogger("cctrain.enclave.events")

#: Every phase the gauge has a series for (``locked``: a consortium key not yet unlocked).
PHASES = (
    "locked",
    "collecting",
    "training",
    "awaiting_approval",
    "released",
    "vetoed",
    "failed",
    "expired",
)
#: RPC latencies: sub-millisecond status calls up to watches that last the whole run.
RPC_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0)
UNKNOWN_METHOD = "unknown"


def event(name: str, /, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log lifecycle event ``name`` with ``fields`` (identifiers, counts, ε: never data).

    Text: ``event name k=v ...``; the JSON formatter writes ``event`` and ``fields`` as
    they are."""
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    events_log.log(
        level, "%s%s", name, f" {text}" if text else "", extra={"event": name, "fields": fields}
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, event, fields (``log`` and the message for a
    plain log line). An exception is named by its type only: its text and traceback may
    quote private data."""

    def format(self, record: logging.LogRecord) -> str:
        ts = _dt.datetime.fromtimestamp(record.created, _dt.UTC).isoformat(timespec="milliseconds")
        name = getattr(record, "event", None)
        fields = dict(getattr(record, "fields", {})) if name else {"message": record.getMessage()}
        if record.exc_info and record.exc_info[0] is not None:
            fields["exception"] = record.exc_info[0].__name__
        obj = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "event": name or "log",
            "logger": record.name,
            "fields": fields,
        }
        return json.dumps(obj, default=str, sort_keys=False)


LOG_FORMATS = ("text", "json")


def configure_logging(log_format: str = "text") -> None:
    """INFO to stderr, as ``text`` (time, level, logger, message) or ``json`` lines."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format: got {log_format!r}, want one of {list(LOG_FORMATS)}")
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


class EnclaveMetrics:
    """The enclave's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.phase = Gauge(
            "cctrain_enclave_phase", "1 for the run's current phase, 0 for the others",
            ["phase"], registry=r,
        )  # fmt: skip
        self.shards_accepted = Gauge(
            "cctrain_enclave_shards_accepted",
            "Shards in the journal (data shards and the model package)",
            registry=r,
        )
        self.accepted_bytes = Gauge(
            "cctrain_enclave_accepted_plaintext_bytes",
            "Plaintext bytes of the shards in the journal (their receipts' plaintext_size)",
            registry=r,
        )
        self.accepted_rows = Gauge(
            "cctrain_enclave_accepted_rows",
            "Rows of the shards in the journal (their receipts' rows)",
            registry=r,
        )
        self.uploads = Counter(
            "cctrain_enclave_uploads",
            "Upload streams ended by this process, by outcome (accepted, rejected, suspended)",
            ["outcome"],
            registry=r,
        )
        self.ingested_bytes = Counter(
            "cctrain_enclave_ingested_bytes",
            "Ciphertext chunk bytes received by this process (accepted or not)",
            registry=r,
        )
        self.training_step = Gauge(
            "cctrain_enclave_training_step", "The last training step reported", registry=r
        )
        self.training_total_steps = Gauge(
            "cctrain_enclave_training_total_steps", "Steps the training plan runs", registry=r
        )
        self.checkpoint_step = Gauge(
            "cctrain_enclave_checkpoint_step", "Step of the last journaled checkpoint", registry=r
        )
        self.epsilon = Gauge(
            "cctrain_enclave_epsilon_spent",
            "Privacy budget spent (ε) as last reported; -1 when not private or not started",
            registry=r,
        )
        self.journal_seq = Gauge(
            "cctrain_enclave_journal_seq", "Sequence number of the journal's head", registry=r
        )
        self.cluster_ranks = Gauge(
            "cctrain_enclave_cluster_ranks", "Ranks the policy trains on", registry=r
        )
        self.cluster_formed = Gauge(
            "cctrain_enclave_cluster_ranks_formed",
            "Ranks attested and linked in the current cluster (0: none formed)",
            registry=r,
        )
        self.rpcs = Counter(
            "cctrain_enclave_rpcs", "RPCs ended, by method and status code",
            ["method", "code"], registry=r,
        )  # fmt: skip
        self.rpc_seconds = Histogram(
            "cctrain_enclave_rpc_duration_seconds", "RPC durations, by method and status code",
            ["method", "code"], buckets=RPC_BUCKETS, registry=r,
        )  # fmt: skip
        self.epsilon.set(-1)
        for p in PHASES:
            self.phase.labels(phase=p).set(0)

    def set_phase(self, phase: str) -> None:
        for p in PHASES:
            self.phase.labels(phase=p).set(1 if p == phase else 0)

    def observe_rpc(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.rpcs.labels(method=method, code=code.name).inc()
        self.rpc_seconds.labels(method=method, code=code.name).observe(seconds)


class MetricsServer:
    """The Prometheus text exposition on ``host:port`` (plain HTTP: it says nothing a
    party does not see; bind it where only the operator's scraper reaches)."""

    def __init__(self, metrics: EnclaveMetrics, host: str, port: int) -> None:
        try:
            self._server, self._thread = start_http_server(
                port, addr=host, registry=metrics.registry
            )
        except OSError as exc:
            from cctrain.errors import InputError

            raise InputError(
                f"--metrics-port: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.port = int(self._server.server_port)
        self.host = host

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# -- health
SERVING = 1  # grpc.health.v1 HealthCheckResponse.ServingStatus
NOT_SERVING = 2


class RunObserver:
    """Subscribed to the state: one event per change, the gauges, and the health."""

    def __init__(self, metrics: EnclaveMetrics | None = None) -> None:
        self.metrics = metrics or EnclaveMetrics()
        self._lock = threading.Lock()
        self._last: RunState | None = None
        self._locked = False
        self._health: list[Callable[[int], None]] = []
        self._status = SERVING

    # -- health
    @property
    def health(self) -> int:
        """SERVING, or NOT_SERVING while the state is locked or once the run failed."""
        return self._status

    def on_health(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(status)`` now and at every change of the health."""
        with self._lock:
            self._health.append(listener)
            listener(self._status)

    def _set_health(self, status: int) -> None:
        if status != self._status:
            self._status = status
            for listener in self._health:
                listener(status)

    # -- the state
    def locked(self, view: RunState) -> None:
        """The enclave started locked on ``view``: it waits for the consortium's shares."""
        with self._lock:
            self._locked = True
            self.metrics.set_phase("locked")
            self._gauges(view)
            self._set_health(NOT_SERVING)
        event("state locked", phase=view.phase, journal_seq=view.head.seq)

    def opened(self, view: RunState, *, unlocked_by: tuple[str, ...] = ()) -> None:
        """The state is open (at start, or at the k-th share): the baseline to diff from."""
        with self._lock:
            was_locked, self._locked = self._locked, False
            self._last = view
            self._sync(view)
        if was_locked:
            event("state unlocked", by=",".join(unlocked_by), phase=view.phase)
        event(
            "state opened",
            phase=view.phase,
            shards=len(view.shards),
            journal_seq=view.head.seq,
        )

    def __call__(self, view: RunState) -> None:
        """After each journal entry (the state holds its lock)."""
        with self._lock:
            last, self._last = self._last, view
            self._sync(view)
        if last is not None:
            self._events(last, view)

    def _sync(self, view: RunState) -> None:
        self.metrics.set_phase(view.phase)
        self._gauges(view)
        self._set_health(NOT_SERVING if view.phase == "failed" else SERVING)

    def _gauges(self, view: RunState) -> None:
        m = self.metrics
        m.shards_accepted.set(len(view.shards))
        m.accepted_bytes.set(sum(int(s.header.plaintext_size) for s in view.shards))
        m.accepted_rows.set(sum(s.rows for s in view.shards))
        m.journal_seq.set(view.head.seq)
        if view.checkpoint is not None:
            m.checkpoint_step.set(view.checkpoint.step)
        eps = view.epsilon_spent
        if eps is not None:
            m.epsilon.set(eps)

    @staticmethod
    def _events(last: RunState, view: RunState) -> None:
        known = {(s.party_id, s.shard_id) for s in last.shards}
        for s in view.shards:
            if (s.party_id, s.shard_id) not in known:
                event(
                    "shard accepted",
                    party=s.party_id,
                    shard=s.shard_id,
                    rows=s.rows,
                    plaintext_bytes=int(s.header.plaintext_size),
                    package=s.is_model_package,
                )
        gone = {(w.party_id, w.shard_id) for w in last.withdrawn}
        for w in view.withdrawn:
            if (w.party_id, w.shard_id) not in gone:
                event("shard withdrawn", party=w.party_id, shard=w.shard_id)
        if last.uploads_closed is None and view.uploads_closed is not None:
            event(
                "uploads closed",
                shards=len(view.shards),
                requested_by=view.started_by or "start rule",
            )
        if view.checkpoint is not None and view.checkpoint != last.checkpoint:
            eps = view.checkpoint.epsilon
            event(
                "checkpoint",
                step=view.checkpoint.step,
                epsilon=-1.0 if eps is None else round(eps, 6),
            )
        if view.phase != last.phase:
            PHASE_EVENTS.get(view.phase, _phase_changed)(view)

    # -- what the run reports (progress, the cluster)
    def progress(self, *, step: int, total_steps: int, epsilon: float | None) -> None:
        self.metrics.training_step.set(step)
        self.metrics.training_total_steps.set(total_steps)
        if epsilon is not None:
            self.metrics.epsilon.set(epsilon)

    def cluster_formed(self, ranks: int) -> None:
        self.metrics.cluster_formed.set(ranks)
        event("cluster formed", ranks=ranks)

    def cluster_paused(self, stage: str) -> None:
        self.metrics.cluster_formed.set(0)
        event("cluster paused", level=logging.WARNING, stage=stage)


def _phase_changed(view: RunState) -> None:
    event("phase", phase=view.phase)


def _failed(view: RunState) -> None:
    # The journaled reason: every party reads it (failure_report decided what it says).
    event("run failed", level=logging.ERROR, reason=view.detail)


PHASE_EVENTS: dict[str, Callable[[RunState], None]] = {
    "training": lambda v: event("training started", shards=len(v.data_shards)),
    "awaiting_approval": lambda v: event(
        "release awaiting approval", manifest_sha256=v.manifest_sha256.hex()
    ),
    "released": lambda v: event("released", manifest_sha256=v.manifest_sha256.hex()),
    "vetoed": lambda v: event("release vetoed", by=v.vetoed_by),
    "expired": lambda v: event("policy expired", level=logging.WARNING),
    "failed": _failed,
}


# -- RPCs
class MetricsInterceptor(grpc.ServerInterceptor):
    """Count and time every RPC by method and status code. Outermost: it sees the
    refusals of the authentication interceptor too. A method this server does not have
    is counted as ``unknown`` (the name is the caller's: it must not grow the label set)."""

    def __init__(self, metrics: EnclaveMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            self._metrics.observe_rpc(UNKNOWN_METHOD, grpc.StatusCode.UNIMPLEMENTED, 0.0)
            return None
        method = str(details.method)
        observe = self._metrics.observe_rpc
        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        )
        for attr, make in kinds:
            behavior = getattr(handler, attr)
            if behavior is None:
                continue
            timed = _timed_stream if handler.response_streaming else _timed
            return make(
                timed(behavior, method, observe),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _code(context: grpc.ServicerContext, raised: bool) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if raised else grpc.StatusCode.OK


def _timed(behavior: Callable[..., Any], method: str, observe: Any) -> Callable[..., Any]:
    def run(request: Any, context: grpc.ServicerContext) -> Any:
        start, raised = time.monotonic(), True
        try:
            out = behavior(request, context)
            raised = False
            return out
        finally:
            observe(method, _code(context, raised), time.monotonic() - start)

    return run


def _timed_stream(behavior: Callable[..., Any], method: str, observe: Any) -> Callable[..., Any]:
    def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        start, raised = time.monotonic(), True
        try:
            yield from behavior(request, context)
            raised = False
        except GeneratorExit:  # the client went away: gRPC closes the generator
            context_code = context.code()
            if not isinstance(context_code, grpc.StatusCode):
                observe(method, grpc.StatusCode.CANCELLED, time.monotonic() - start)
                start = -1.0
            raise
        finally:
            if start >= 0:
                observe(method, _code(context, raised), time.monotonic() - start)

    return run
