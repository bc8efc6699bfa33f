"""``cctrain dashboard``: a local web page with what this party may see of the run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cctrain.commandline import format_option


@click.command("dashboard")
@click.option("--enclave", "address", required=True, help="host:port of the enclave")
@click.option("--policy", "policy_file", required=True, type=click.Path(path_type=Path))
@click.option("--key", "key_file", required=True, type=click.Path(path_type=Path))
@click.option("--allow-simulated", is_flag=True, help="Accept simulated evidence (insecure).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Loopback address to serve on (127.0.0.1 or ::1; nothing else is accepted).",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0: any free port."
)
@click.option(
    "--interval",
    type=click.FloatRange(0.2, 60),
    default=1.0,
    show_default=True,
    help="Seconds between two polls of the enclave.",
)
@format_option
def dashboard_cmd(
    fmt: str,
    address: str,
    policy_file: Path,
    key_file: Path,
    allow_simulated: bool,
    host: str,
    port: int,
    interval: float,
) -> None:
    """Serve a local page showing this party's view of the run.

    Attests the enclave first (as every command does), then serves on HOST:PORT, this
    machine only, a page with the policy and its parties, your receipts, the phase, the
    progress (a loss/ε chart where the policy releases them), the verified journal and the
    release (verified, and unsealed for a recipient). Open the printed URL: it holds a
    token made for this launch, without which the server answers nothing. Ctrl-C stops it.
    """
    from cctrain.dashboard import DashboardServer, PartyView, is_loopback
    from cctrain.errors import InputError

    if not is_loopback(host):  # before attesting: nothing to undo
        raise InputError(
            f"--host: got {host!r}, want a loopback address (127.0.0.1 or ::1): the "
            "dashboard is served to this machine only"
        )
    if allow_simulated:
        from cctrain.cli.main import _simulated_banner

        _simulated_banner()
    view = PartyView(
        address,
        policy=policy_file,
        key=key_file,
        allow_simulated=allow_simulated,
        interval=interval,
    )
    try:
        view.start()  # attests: the SDK's errors end the command with their exit status
        try:
            server = DashboardServer(view, host=host, port=port)
        except OSError as exc:
            raise InputError(f"--port: cannot listen on {host}:{port}: {exc.strerror}") from None
        assert view.party is not None
        if fmt == "json":  # one document when serving starts (it runs until Ctrl-C)
            click.echo(json.dumps({"party": view.party.id, "url": server.url}))
        else:
            click.echo(f"dashboard of {view.party.id}: {server.url}", nl=True)
            click.echo("(the URL's token is this launch's secret: do not share it; Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            if fmt == "text":
                click.echo("stopped")
        finally:
            server.close()
    finally:
        view.close()
