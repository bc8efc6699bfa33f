"""A consortium trains on a 2-rank cluster: rank 0 is the real gRPC/TLS enclave the parties
attest and upload to; rank 1 a `cctrain-enclave worker` process that joins its rendezvous.
The recipient's verification of the release re-verifies both ranks' evidence; a manifest
whose cluster entry is edited (by anyone who can re-sign it: only the enclave) or stripped is
refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cctrain.client import DataOwner, Recipient
from cctrain.errors import PolicyError, ReleaseError
from cctrain.release import verify_manifest
from tests.cluster.conftest import spawn_worker, worker_argv
from tests.consortium import RECIPIENT, Consortium, make_consortium, running_enclave
from tests.release.test_release import _quiet, upload_all

pytest.importorskip("torch")

DP = {
    "enabled": True,
    "target_epsilon": 6.0,
    "delta": 1e-5,
    "max_grad_norm": 1.0,
    "noise_source": "csprng",
    "grad_sample_mode": "fast",
}


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("cluster")
    c = make_consortium(tmp / "c", privacy=DP, cluster={"ranks": 2, "timeout_s": 60})
    with running_enclave(c, tmp / "state", cluster_listen=("127.0.0.1", 0)) as (address, app):
        port = int(app.cluster_address.rsplit(":", 1)[1])
        worker = spawn_worker(worker_argv(c.policy_path, 1, port, tmp / "rank1"))
        try:
            upload_all(address, c, tmp)
            with _quiet(DataOwner, address, c, "hospital-a") as owner:
                assert owner.wait_for_phase(("released", "failed"), timeout=180) == "released"
            with _quiet(Recipient, address, c, RECIPIENT) as r:
                model = r.fetch_model()
                bundle = r.fetch_release()
            out, _ = worker.communicate(timeout=60)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
        yield {"c": c, "model": model, "bundle": bundle, "worker": (worker.returncode, out)}


def test_both_ranks_trained_and_the_release_lists_them(released: dict[str, Any]) -> None:
    code, out = released["worker"]
    assert code == 0, out[-3000:]
    assert "rank 1: run done" in out
    m = released["model"].manifest
    members = m["cluster"]["members"]
    assert m["cluster"]["ranks"] == 2 and [x["rank"] for x in members] == [0, 1]
    assert m["dp_certificate"]["rank_evidence_sha256"] == [x["evidence_sha256"] for x in members]
    assert m["dp_certificate"]["epsilon"] <= 6.0


def test_a_manifest_without_its_cluster_is_refused(released: dict[str, Any]) -> None:
    from cctrain.release import verify_release_cluster

    c: Consortium = released["c"]
    doc = json.loads(released["bundle"].manifest)
    verified = verify_manifest(
        released["bundle"].manifest,
        released["bundle"].manifest_signature,
        policy=c.signed.policy,
        allow_simulated=True,
    )
    claims = verified.claims
    stripped = dict(doc)
    del stripped["cluster"]
    with pytest.raises(ReleaseError, match="cluster is missing"):
        verify_release_cluster(stripped, claims, c.signed.policy)
    swapped = json.loads(json.dumps(doc))
    a, b = swapped["cluster"]["members"]
    a["evidence"], b["evidence"] = b["evidence"], a["evidence"]
    a["evidence_sha256"], b["evidence_sha256"] = b["evidence_sha256"], a["evidence_sha256"]
    with pytest.raises(ReleaseError, match="rank 0's evidence does not hold"):
        verify_release_cluster(swapped, claims, c.signed.policy)
    other_key = json.loads(json.dumps(doc))
    other_key["cluster"]["members"][1]["link_public_key"] = "11" * 32
    with pytest.raises(ReleaseError, match="rank 1's evidence does not hold"):
        verify_release_cluster(other_key, claims, c.signed.policy)
    one = json.loads(json.dumps(doc))
    one["cluster"]["members"] = one["cluster"]["members"][:1]
    with pytest.raises(ReleaseError, match="ranks 0..1 once each"):
        verify_release_cluster(one, claims, c.signed.policy)
    cert = json.loads(json.dumps(doc))
    cert["dp_certificate"]["rank_evidence_sha256"] = cert["dp_certificate"]["rank_evidence_sha256"][
        :1
    ]
    with pytest.raises(ReleaseError, match="rank_evidence_sha256"):
        verify_release_cluster(cert, claims, c.signed.policy)


def test_serve_needs_the_rendezvous_for_a_cluster_policy(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c", cluster={"ranks": 2})
    with pytest.raises(PolicyError, match="--cluster-listen"):
        with running_enclave(c, tmp_path / "state"):
            pass
    one = make_consortium(tmp_path / "one")
    with pytest.raises(PolicyError, match="one rank"):
        with running_enclave(one, tmp_path / "state1", cluster_listen=("127.0.0.1", 0)):
            pass
