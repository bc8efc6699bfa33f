"""The party dashboard: its server's guards against other local users and pages, and the page
itself in a real headless Chromium against a real enclave that uploads, trains and releases."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cctrain.cli.main import main as cli
from cctrain.client import DataOwner
from cctrain.dashboard import DashboardServer, PartyView
from cctrain.dashboard.server import CSP
from cctrain.errors import InputError
from tests.consortium import PROVIDERS, RECIPIENT, Consortium, make_consortium, running_enclave
from tests.ingest.conftest import write_shard

REPO = Path(__file__).resolve().parents[1]


class FixedView:
    """A snapshot source with fixed content: the server, not the view, is under test here."""

    def snapshot(self) -> dict[str, Any]:
        return {"party": {"id": "hospital-a", "roles": ["data_provider"]}, "status": {}}


@pytest.fixture
def server() -> Iterator[DashboardServer]:
    with DashboardServer(FixedView(), token="t" * 43) as s:
        s.start()
        yield s


def get(
    s: DashboardServer, path: str, *, host: str | None = None, method: str = "GET", **headers: str
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    conn.putrequest(method, path, skip_host=True)
    conn.putheader("Host", host if host is not None else f"127.0.0.1:{s.port}")
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def test_every_request_needs_the_launch_token(server: DashboardServer) -> None:
    tok = server.token
    for path in ("/", "/static/app.js", "/api/state", "/api/status"):
        assert get(server, path).status == 403, path
        assert get(server, f"{path}?token={'u' * 43}").status == 403, path
        assert get(server, f"{path}?token={tok[:-1]}").status == 403, path
        assert get(server, f"{path}?token={tok}").status == 200, path
    assert get(server, "/api/state", **{"X-Cctrain-Token": tok}).status == 200
    assert get(server, "/api/state", **{"X-Cctrain-Token": "nope"}).status == 403


def test_a_rebound_host_name_is_refused(server: DashboardServer) -> None:
    tok = server.token
    for host in (f"evil.example:{server.port}", "127.0.0.1", f"127.0.0.1:{server.port + 1}", ""):
        assert get(server, f"/api/state?token={tok}", host=host).status == 421, host
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}"):
        assert get(server, f"/api/state?token={tok}", host=host).status == 200, host


def test_read_only_and_headers(server: DashboardServer) -> None:
    tok = server.token
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        assert get(server, f"/api/state?token={tok}", method=method).status == 405
    assert get(server, f"/nothing?token={tok}").status == 404
    resp = get(server, f"/?token={tok}")
    assert resp.getheader("Content-Security-Policy") == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert resp.getheader("Referrer-Policy") == "no-referrer"
    assert resp.getheader("Cache-Control") == "no-store"
    assert resp.getheader("X-Content-Type-Options") == "nosniff"
    # Refused answers carry the same headers, and say nothing of the run.
    refused = get(server, "/api/state")
    assert refused.getheader("Content-Security-Policy") == CSP


def test_serves_only_on_loopback() -> None:
    for host in ("0.0.0.0", "192.0.2.1", "localhost", "::"):  # noqa: S104 (refused, the point)
        with pytest.raises(InputError, match="--host: got"):
            DashboardServer(FixedView(), host=host)
    result = CliRunner().invoke(
        cli,
        ["dashboard", "--enclave", "127.0.0.1:1", "--policy", "p", "--key", "k"]
        + ["--host", "0.0.0.0"],  # noqa: S104
    )
    assert result.exit_code == 2, result.output
    assert "--host: got '0.0.0.0', want a loopback address" in result.output


# --------------------------------------------------------------------------- in a browser


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    return found


def dump_dom(browser: str, url: str, profile: Path, *, budget_ms: int = 4000) -> str:
    """The page's DOM after ``budget_ms`` of virtual time: its script has polled the API."""
    out = subprocess.run(
        [
            browser,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def wait_for(cond: Callable[[], bool], what: str, view: PartyView, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            snap = view.snapshot()
            seen = {
                k: snap.get(k) for k in ("status", "release", "release_error", "error", "alarm")
            }
            raise AssertionError(f"timed out waiting for {what}; the view has {seen}")
        time.sleep(0.1)


def party_view(address: str, c: Consortium, party: str, home: Path) -> PartyView:
    return PartyView(
        address,
        policy=c.signed,
        key=c.keys[party],
        allow_simulated=True,
        state_dir=home / party,
        interval=0.2,
    )


# The views attest (and re-attest) on their own threads: the warning is expected there.
@pytest.mark.filterwarnings("ignore::cctrain.client.SimulatedEvidenceWarning")
def test_page_shows_the_run_as_it_goes(tmp_path: Path) -> None:
    browser = chromium()
    c = make_consortium(tmp_path / "c", training={**_training(), "epochs": 2})
    with running_enclave(c, tmp_path / "state") as (address, _app):
        provider = party_view(address, c, "hospital-a", tmp_path)
        recipient = party_view(address, c, RECIPIENT, tmp_path)
        with provider, recipient:
            provider.start()
            recipient.start()
            with DashboardServer(provider) as ps, DashboardServer(recipient) as rs:
                ps.start()
                rs.start()
                html = dump_dom(browser, ps.url, tmp_path / "profile")
                assert 'id="phase" data-phase="collecting"' in html
                assert "hospital-a" in html and "test-consortium" in html
                assert "genesis" in html  # the verified journal's first entry
                assert "<td>hospital-a</td>" in html  # the policy's parties

                for i, pid in enumerate(PROVIDERS):
                    with DataOwner(
                        address, policy=c.signed, key=c.keys[pid], allow_simulated=True
                    ) as owner:
                        owner.upload(
                            write_shard(tmp_path / f"{pid}.npz", seed=i), state_dir=tmp_path / pid
                        )
                wait_for(
                    lambda: (recipient.snapshot().get("release") or {}).get("unsealed", False),
                    "the recipient's view to unseal the release",
                    recipient,
                )
                wait_for(
                    lambda: provider.snapshot()["status"]["phase"] == "released",
                    "the provider's view to see the release",
                    provider,
                )

                html = dump_dom(browser, ps.url, tmp_path / "profile")
                assert 'id="phase" data-phase="released"' in html
                snap = provider.snapshot()
                last = snap["progress"]["last"]
                assert last is not None and last["step"] > 0
                assert f'data-step="{last["step"]}"' in html
                assert 'data-series="loss"' in html  # the policy releases train_loss
                assert "shard accepted" in html and "released" in html
                # Its own receipt, and only its own.
                assert [r["shard"] for r in snap["receipts"]] == ["hospital-a"]
                assert snap["receipts"][0]["commitment"] in html
                assert (
                    "VERIFICATION FAILED" not in html or 'id="alarm" class="alarm" hidden' in html
                )

                html = dump_dom(browser, rs.url, tmp_path / "profile-r")
                rel = recipient.snapshot()["release"]
                assert 'data-verified="true"' in html
                assert rel["model_sha256"] in html
                assert "weights opened with your key" in html


def _training() -> dict[str, Any]:
    return {
        "model": {"name": "logreg"},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "epochs": 1,
        "batch_size": 16,
    }


def test_cli_serves_the_state(tmp_path: Path) -> None:
    """``cctrain dashboard`` as a user runs it: attests, prints the URL, serves, stops on ^C."""
    c = make_consortium(tmp_path / "c")
    key_path, _ = c.keys["hospital-a"].save(tmp_path / "keys")
    with running_enclave(c, tmp_path / "state") as (address, _app):
        proc = subprocess.Popen(
            [sys.executable, "-m", "cctrain.cli", "dashboard", "--enclave", address]
            + ["--policy", str(c.policy_path), "--key", str(key_path), "--allow-simulated"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=dict(os.environ, CCTRAIN_HOME=str(tmp_path / "home")),
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("dashboard of hospital-a: http://127.0.0.1:"), line
            url = line.split(": ", 1)[1].strip()
            port = int(url.split(":")[2].split("/")[0])
            token = url.split("token=")[1]
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", f"/api/status?token={token}")
            doc = json.loads(conn.getresponse().read())
            assert doc["status"]["phase"] == "collecting"
            assert doc["status"]["providers_missing"] == list(PROVIDERS)
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "SIMULATED" in err
