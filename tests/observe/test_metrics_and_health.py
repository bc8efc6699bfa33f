"""What the operator sees of a real run: the Prometheus metrics scraped over HTTP while it
runs, the lifecycle events in the log (text and JSON), and gRPC health through phases."""

from __future__ import annotations

import json
import logging
import sys
import urllib.request
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from cctrain_enclave.metrics import JsonFormatter, MetricsServer
from tests.consortium import PROVIDERS, make_consortium, running_enclave
from tests.hostile.helpers import health_check
from tests.state.conftest import upload, upload_all, wait_phase

pytestmark = pytest.mark.filterwarnings("ignore::cctrain.client.SimulatedEvidenceWarning")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the metrics page, by (name, labels), fetched over HTTP."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:  # noqa: S310
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def phase_of(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> list[str]:
    return [
        dict(labels)["phase"]
        for (name, labels), v in samples.items()
        if name == "cctrain_enclave_phase" and v == 1
    ]


def rpcs(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], method: str) -> float:
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "cctrain_enclave_rpcs_total" and dict(labels)["method"].endswith(method)
    )


def test_metrics_follow_a_real_run_and_the_log_has_its_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cctrain.enclave.events")
    c = make_consortium(tmp_path / "c")
    with running_enclave(c, tmp_path / "state") as (address, app):
        metrics = MetricsServer(app.observer.metrics, "127.0.0.1", 0)
        try:
            before = scrape(metrics.port)
            assert phase_of(before) == ["collecting"]
            assert before[("cctrain_enclave_shards_accepted", ())] == 0
            assert before[("cctrain_enclave_epsilon_spent", ())] == -1
            assert before[("cctrain_enclave_cluster_ranks", ())] == 1
            assert health_check(address) == SERVING

            first = upload(address, c, PROVIDERS[0], tmp_path / "up", seed=0)
            mid = scrape(metrics.port)
            assert mid[("cctrain_enclave_shards_accepted", ())] == 1
            assert mid[("cctrain_enclave_accepted_rows", ())] == first.rows
            assert mid[("cctrain_enclave_uploads_total", (("outcome", "accepted"),))] == 1
            assert mid[("cctrain_enclave_ingested_bytes_total", ())] > first.plaintext_size
            assert rpcs(mid, "/Upload") >= 1 and rpcs(mid, "/Attest") >= 1

            for i, pid in enumerate(PROVIDERS[1:], start=1):
                upload(address, c, pid, tmp_path / "up", seed=i)
            assert wait_phase(address, c, "released", "failed") == "released"
            after = scrape(metrics.port)
        finally:
            metrics.close()
    assert phase_of(after) == ["released"]
    assert after[("cctrain_enclave_shards_accepted", ())] == len(PROVIDERS)
    steps = after[("cctrain_enclave_training_step", ())]
    assert steps > 0 and steps == after[("cctrain_enclave_training_total_steps", ())]
    assert after[("cctrain_enclave_journal_seq", ())] > mid[("cctrain_enclave_journal_seq", ())]
    ok = (("code", "OK"), ("method", "/cctrain.v1.Enclave/Upload"))
    assert after[("cctrain_enclave_rpcs_total", ok)] == len(PROVIDERS)
    assert after[("cctrain_enclave_rpc_duration_seconds_count", ok)] == len(PROVIDERS)

    events = [r for r in caplog.records if r.name == "cctrain.enclave.events"]
    names = [getattr(r, "event", None) for r in events]
    for expected in ("state opened", "shard accepted", "uploads closed", "training started"):
        assert expected in names, names
    assert names[-1] == "released", names
    accepted = [r for r in events if getattr(r, "event", None) == "shard accepted"]
    assert {r.fields["party"] for r in accepted} == set(PROVIDERS)  # type: ignore[attr-defined]
    line = json.loads(JsonFormatter().format(accepted[0]))
    assert set(line) == {"ts", "level", "event", "logger", "fields"}
    assert line["event"] == "shard accepted" and line["level"] == "INFO"
    assert set(line["fields"]) == {"party", "shard", "rows", "plaintext_bytes", "package"}


def test_health_is_not_serving_once_the_run_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = make_consortium(tmp_path / "c")
    with running_enclave(c, tmp_path / "state") as (address, app):
        assert health_check(address) == SERVING
        monkeypatch.setitem(sys.modules, "cctrain_enclave.trainer", None)  # a broken install
        upload_all(address, c, tmp_path / "up")
        assert wait_phase(address, c, "released", "failed") == "failed"
        assert health_check(address) == NOT_SERVING
        assert app.observer.metrics.phase.labels(phase="failed")._value.get() == 1


def test_json_log_lines_never_carry_an_exception_text() -> None:
    try:
        raise ValueError("row 7: age=93, diagnosis=positive")
    except ValueError:
        record = logging.LogRecord(
            "cctrain.enclave", logging.ERROR, __file__, 1, "upload failed", (), sys.exc_info()
        )
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "log" and line["level"] == "ERROR"
    assert line["fields"] == {"message": "upload failed", "exception": "ValueError"}
    assert "93" not in json.dumps(line)


def test_serve_logs_json_lines_and_serves_metrics_on_the_port_it_was_given(
    tmp_path: Path,
) -> None:
    """The real command: ``--log-format json`` writes nothing on stderr that is not one JSON
    object per line, and ``--metrics-port 0`` serves the metrics (endpoint.json says where)."""
    from cctrain.local import LocalEnclave

    c = make_consortium(tmp_path / "c")
    log = tmp_path / "enclave.log"
    enclave = LocalEnclave(
        policy=c.policy_path,
        state_dir=tmp_path / "state",
        log=log,
        extra_args=("--log-format", "json", "--metrics-port", "0"),
    )
    enclave.start(timeout=120)
    try:
        endpoint = json.loads((tmp_path / "state" / "endpoint.json").read_text())
        port = int(endpoint["metrics"].rpartition(":")[2])
        assert phase_of(scrape(port)) == ["collecting"]
        assert health_check(enclave.address) == SERVING
        assert rpcs(scrape(port), "/Check") >= 1
    finally:
        assert enclave.stop(grace_s=30) == 0
    lines = log.read_text().splitlines()
    printed = [ln for ln in lines if ln.startswith(("listening on ", "metrics on http://"))]
    assert len(printed) == 2, lines
    objects = [json.loads(ln) for ln in lines if ln not in printed]
    assert all(set(o) == {"ts", "level", "event", "logger", "fields"} for o in objects)
    events = [o["event"] for o in objects]
    assert "serving" in events and events[-1] == "stopped", events
    serving = objects[events.index("serving")]["fields"]
    assert serving["metrics"] == endpoint["metrics"] and serving["platform"] == "simulated"
