"""``cctrain-enclave serve``: the enclave's own entry point (also ``cctrain enclave serve``).

It refuses to start (exit status 2, one line on stderr) on any setup it could not train
with: the trainer not installed, a policy that is unsigned or whose training plan cannot run,
a platform key (``[state] key = "platform"``) on a platform without a sealing key (TDX), a
custom model source that does not match its pin, an unusable or locked state directory, a
port it cannot listen on. Nothing is served before every check passed.

With a consortium-held state key it starts on an existing journal *locked*: it serves
Attest, GetStatus, GetJournal and Unlock until k parties ran ``cctrain unlock``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from cctrain.commandline import CommandGroup
from cctrain_enclave.platforms import PLATFORMS


def serve_command(
    *,
    policy_file: Path,
    state_dir: Path,
    host: str,
    port: int,
    platform: str,
    model_source: Path | None,
    reflection: bool = False,
    sealing: bool = True,
    cluster_listen: str | None = None,
    log_format: str = "text",
    metrics_host: str = "127.0.0.1",
    metrics_port: int | None = None,
) -> None:
    from cctrain.alloc import tune_for_streaming
    from cctrain_enclave.app import AppConfig
    from cctrain_enclave.limits import ServerLimits
    from cctrain_enclave.metrics import configure_logging
    from cctrain_enclave.server import serve

    configure_logging(log_format)
    tune_for_streaming()  # uploads stream through this process: keep chunk buffers mapped
    hosts = (host,) + tuple(h for h in ("127.0.0.1", "localhost") if h != host)
    config = AppConfig(
        policy_path=policy_file,
        state_dir=state_dir,
        platform=platform,
        hosts=hosts,
        model_source=model_source,
        sealing=sealing,
        cluster_listen=parse_rendezvous(cluster_listen, any_port=True) if cluster_listen else None,
    )
    serve(
        config,
        port=port,
        limits=ServerLimits(reflection=reflection),
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )


@click.group(cls=CommandGroup)
def main() -> None:
    """The cctrain enclave service."""


@main.command("serve")
@click.option(
    "--policy", "policy_file", required=True, type=click.Path(exists=True, path_type=Path)
)
@click.option("--state-dir", required=True, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--platform",
    default="auto",
    show_default=True,
    type=click.Choice(list(PLATFORMS)),
)
@click.option("--model-source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--reflection/--no-reflection",
    default=False,
    show_default=True,
    help="Serve gRPC server reflection (unauthenticated, inside a small budget of its own).",
)
@click.option(
    "--no-sealing-key",
    is_flag=True,
    help="Simulated platform only: run without a sealing key, as on TDX (the policy then "
    'needs [state] key = "consortium").',
)
@click.option(
    "--cluster-listen",
    metavar="HOST:PORT",
    help="Rank 0 of a [cluster] policy: serve the rendezvous the other ranks join there "
    "(port 0: any free port, printed and written to endpoint.json).",
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="Logs on stderr: text lines, or one JSON object a line (ts, level, event, fields).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics over plain HTTP on this port (docs/operations.md).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Where --metrics-port listens.",
)
def serve_cmd(
    policy_file: Path,
    state_dir: Path,
    host: str,
    port: int,
    platform: str,
    model_source: Path | None,
    reflection: bool,
    no_sealing_key: bool,
    cluster_listen: str | None,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Serve the signed policy over gRPC+TLS until SIGTERM.

    Every RPC holds a slot of a bounded budget (docs/hostile.md): floods of streams are
    refused with RESOURCE_EXHAUSTED and health checks keep answering."""
    serve_command(
        policy_file=policy_file,
        state_dir=state_dir,
        host=host,
        port=port,
        platform=platform,
        model_source=model_source,
        reflection=reflection,
        sealing=not no_sealing_key,
        cluster_listen=cluster_listen,
        log_format=log_format,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
    )


def parse_rendezvous(value: str, *, any_port: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for an IPv6 address) as (host, port); a clear usage
    error for anything else. ``any_port``: port 0 (any free one) is allowed, for rank 0's
    ``--cluster-listen``."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    low = 0 if any_port else 1
    if not sep or not host or not port.isdigit() or not low <= int(port) <= 65535:
        raise click.BadParameter(f"got {value!r}, want HOST:PORT with a port in [{low}, 65535]")
    return host, int(port)


def worker_command(
    *, policy_file: Path, rank: int, rendezvous: str, platform: str, state_dir: Path | None
) -> str:
    """A cluster worker's run (``cctrain-enclave worker``): attest to every rank, follow rank
    0's steps until the run ends. Returns how it ended."""
    from cctrain.policy import SignedPolicy
    from cctrain_enclave.cluster.handshake import form_cluster, open_rendezvous
    from cctrain_enclave.cluster.parallel import follow
    from cctrain_enclave.providers.detect import detect_provider

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    host, port = parse_rendezvous(rendezvous)
    signed = SignedPolicy.load(policy_file)
    signed.require_complete()
    policy = signed.policy
    world = int(policy.cluster["ranks"])
    if world < 2:
        raise click.UsageError("the policy's [cluster] has one rank: there are no workers")
    if not 1 <= rank < world:
        raise click.UsageError(f"--rank must be in [1, {world - 1}] for this policy")
    import cctrain_enclave.trainer  # noqa: F401 - torch and Opacus now, not mid-handshake

    provider = detect_provider(platform, state_dir=state_dir)
    if provider.platform not in policy.attestation["platforms"]:
        raise click.UsageError(
            f"this worker runs on {provider.platform!r}, which the policy does not accept"
        )
    store = open_rendezvous(policy, rank=rank, host=host, port=port)
    session = form_cluster(policy=policy, provider=provider, rank=rank, store=store, host=host)
    try:
        return follow(session, policy)
    finally:
        session.close()


@main.command("worker")
@click.option(
    "--policy", "policy_file", required=True, type=click.Path(exists=True, path_type=Path)
)
@click.option("--rank", required=True, type=click.IntRange(1, 63))
@click.option(
    "--rendezvous",
    required=True,
    metavar="HOST:PORT",
    help="Rank 0's cluster rendezvous (its `serve --cluster-listen`).",
    callback=lambda _ctx, _param, value: parse_rendezvous(value) and value,
)
@click.option("--platform", default="auto", show_default=True, type=click.Choice(list(PLATFORMS)))
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    help="Simulated platform only: where its simulated chip key lives (workers keep no run state).",
)
def worker_cmd(
    policy_file: Path, rank: int, rendezvous: str, platform: str, state_dir: Path | None
) -> None:
    """Join rank 0's cluster as rank RANK: attest to every rank, then train its share of each
    step. Keeps no state: a restarted cluster resumes from rank 0's checkpoint."""
    ended = worker_command(
        policy_file=policy_file,
        rank=rank,
        rendezvous=rendezvous,
        platform=platform,
        state_dir=state_dir,
    )
    click.echo(f"rank {rank}: run {ended}")
