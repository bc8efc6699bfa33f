"""``cctrain-enclave serve``: the enclave's own entry point (also ``cctrain enclave serve``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from cctrain.errors import CctrainError


def serve_command(
    *,
    policy_file: Path,
    state_dir: Path,
    host: str,
    port: int,
    platform: str,
    model_source: Path | None,
) -> None:
    from cctrain_enclave.app import AppConfig
    from cctrain_enclave.server import serve

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    hosts = (host,) + tuple(h for h in ("127.0.0.1", "localhost") if h != host)
    config = AppConfig(
        policy_path=policy_file,
        state_dir=state_dir,
        platform=platform,
        hosts=hosts,
        model_source=model_source,
    )
    try:
        serve(config, port=port)
    except CctrainError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


@click.group()
def main() -> None:
    """The cctrain enclave service."""


@main.command("serve")
@click.option(
    "--policy", "policy_file", required=True, type=click.Path(exists=True, path_type=Path)
)
@click.option("--state-dir", required=True, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=0, show_default=True)
@click.option(
    "--platform",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "simulated", "sev-snp", "tdx", "sgx"]),
)
@click.option("--model-source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def serve_cmd(
    policy_file: Path,
    state_dir: Path,
    host: str,
    port: int,
    platform: str,
    model_source: Path | None,
) -> None:
    """Serve the signed policy over gRPC+TLS until SIGTERM."""
    serve_command(
        policy_file=policy_file,
        state_dir=state_dir,
        host=host,
        port=port,
        platform=platform,
        model_source=model_source,
    )
