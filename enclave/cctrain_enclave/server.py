"""Build the enclave's gRPC server (apart from running it), and run it until SIGTERM."""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cctrain.attestation.binding import spki_sha256
from cctrain.errors import InputError
from cctrain.protocol import MAX_MESSAGE_SIZE
from cctrain.v1 import enclave_pb2, enclave_pb2_grpc
from cctrain_enclave.app import AppConfig, EnclaveApp
from cctrain_enclave.auth import AuthInterceptor
from cctrain_enclave.limits import ServerLimits
from cctrain_enclave.metrics import MetricsInterceptor, MetricsServer, event
from cctrain_enclave.providers.base import EvidenceProvider
from cctrain_enclave.service import EnclaveServicer
from cctrain_enclave.state import atomic_write, unusable

log = logging.getLogger("cctrain.enclave")

SERVICE_NAME = enclave_pb2.DESCRIPTOR.services_by_name["Enclave"].full_name
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
    ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
    ("grpc.so_reuseport", 0),
]


def make_provider(platform: str, state_dir: Path, *, sealing: bool = True) -> EvidenceProvider:
    """The platform's provider; ``sealing=False`` (simulated only) has no sealing key."""
    if platform == "simulated":
        from cctrain_enclave.providers.simulated import SimulatedProvider

        return SimulatedProvider(state_dir, sealing=sealing)
    if not sealing:
        raise InputError(
            "--no-sealing-key simulates a platform without a sealing key: it is for "
            f"--platform simulated only, not {platform!r}"
        )
    from cctrain_enclave.providers.detect import detect_provider

    provider: EvidenceProvider = detect_provider(platform, state_dir=state_dir)
    return provider


def check_listen_address(host: str, port: int) -> None:
    """Refuse, naming why, an address this host cannot listen on (gRPC would only log it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            sock.bind(address)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def create_server(
    config: AppConfig, *, port: int = 0, limits: ServerLimits | None = None
) -> tuple[grpc.Server, int, EnclaveApp]:
    """A started-not server bound to ``host:port`` (port 0: any free port) with TLS.

    ``limits`` bound what callers can hold (:mod:`cctrain_enclave.limits`); reflection is
    served only if they ask for it."""
    limits = limits or ServerLimits()
    check_listen_address(config.hosts[0], port)
    try:
        provider = make_provider(config.platform, config.state_dir, sealing=config.sealing)
    except OSError as exc:
        raise unusable(config.state_dir, exc) from None
    app = EnclaveApp(config, provider)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="cctrain-rpc"),
        interceptors=[
            MetricsInterceptor(app.observer.metrics),  # first: it sees auth's refusals too
            AuthInterceptor(
                app.policy,
                tls_spki_sha256=spki_sha256(app.tls.cert),
                clock_ms=lambda: int(config.clock() * 1000),
                limits=limits,
                health=lambda: app.observer.health,
            ),
        ],
        options=GRPC_OPTIONS + limits.grpc_options(),
    )
    enclave_pb2_grpc.add_EnclaveServicer_to_server(EnclaveServicer(app, limits), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    def set_health(status: int) -> None:  # Watch streams it; Check asks the observer
        for name in (SERVICE_NAME, ""):
            health_servicer.set(name, status)  # type: ignore[arg-type]

    app.observer.on_health(set_health)
    if limits.reflection:
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
    creds = grpc.ssl_server_credentials([(app.tls.key_pem, app.tls.cert_pem)])
    try:
        bound = server.add_secure_port(f"{config.hosts[0]}:{port}", creds)
    except RuntimeError:  # taken between the check above and now
        bound = 0
    if bound == 0:
        app.shutdown()
        raise InputError(f"cannot listen on {config.hosts[0]}:{port}")
    return server, bound, app


def serve(
    config: AppConfig,
    *,
    port: int = 0,
    grace_s: float = 10.0,
    limits: ServerLimits | None = None,
    metrics_host: str = "127.0.0.1",
    metrics_port: int | None = None,
) -> None:
    """Run until SIGTERM/SIGINT; then stop accepting, let RPCs finish for ``grace_s``.

    ``metrics_port``: serve the Prometheus metrics on ``metrics_host:metrics_port``."""
    if metrics_port is not None:
        check_listen_address(metrics_host, metrics_port)
    server, bound, app = create_server(config, port=port, limits=limits)
    metrics = None
    if metrics_port is not None:
        try:
            metrics = MetricsServer(app.observer.metrics, metrics_host, metrics_port)
        except BaseException:
            app.shutdown()
            raise
    server.start()
    endpoint = {"address": f"{config.hosts[0]}:{bound}", "policy_digest": app.policy.digest.hex()}
    if app.cluster_address is not None:
        endpoint["cluster_rendezvous"] = app.cluster_address
        log.info("cluster rendezvous for the other ranks on %s", app.cluster_address)
        print(f"cluster rendezvous on {app.cluster_address}", flush=True)
    if metrics is not None:
        endpoint["metrics"] = f"{metrics.host}:{metrics.port}"
    atomic_write(config.state_dir / "endpoint.json", (json.dumps(endpoint) + "\n").encode())
    event(
        "serving",
        address=endpoint["address"],
        policy_digest=app.policy.digest.hex(),
        platform=config.platform,
        metrics=f"{metrics.host}:{metrics.port}" if metrics else "off",
    )
    print(f"listening on {endpoint['address']}", flush=True)
    if metrics is not None:
        print(f"metrics on http://{metrics.host}:{metrics.port}/metrics", flush=True)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down gracefully", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    event("stopping", grace_s=grace_s)
    server.stop(grace_s).wait()
    app.shutdown()
    if metrics is not None:
        metrics.close()
    (config.state_dir / "endpoint.json").unlink(missing_ok=True)
    event("stopped")
