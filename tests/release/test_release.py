"""Joint training and sealed release against a real enclave; every misuse of the issue refused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cctrain.client import (
    DataOwner,
    Recipient,
    ReleaseBundle,
    SimulatedEvidenceWarning,
    open_release,
)
from cctrain.crypto.keys import PartyKeys
from cctrain.errors import PermissionDeniedError, PolicyError, ProtocolError, ReleaseError
from cctrain.protocol import MANIFEST_SIG_TAG
from cctrain.release import canonical_json, seal_weights, verify_manifest
from tests.consortium import PROVIDERS, RECIPIENT, Consortium, make_consortium, running_enclave
from tests.ingest.conftest import write_shard


def _quiet(cls: Any, address: str, c: Consortium, party: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulatedEvidenceWarning)
        return cls(address, policy=c.signed, key=c.keys[party], allow_simulated=True)


def upload_all(address: str, c: Consortium, tmp: Path) -> None:
    for i, pid in enumerate(PROVIDERS):
        with _quiet(DataOwner, address, c, pid) as owner:
            owner.upload(write_shard(tmp / f"{pid}.npz", seed=i), state_dir=tmp / pid)


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Consortium, Any]]:
    tmp = tmp_path_factory.mktemp("released")
    c = make_consortium(tmp / "c")
    with running_enclave(c, tmp / "state") as (address, app):
        upload_all(address, c, tmp)
        with _quiet(DataOwner, address, c, "hospital-a") as owner:
            assert owner.wait_for_phase(("released",), timeout=120) == "released"
        with _quiet(Recipient, address, c, RECIPIENT) as r:
            resp = r.fetch_release()
        yield address, c, resp


def test_recipient_fetches_verified_model(released: Any) -> None:
    address, c, _ = released
    with _quiet(Recipient, address, c, RECIPIENT) as r:
        model = r.fetch_model()
    m = model.manifest
    assert m["policy_digest"] == c.signed.digest.hex()
    assert len(m["receipts"]) == 3
    assert set(m["metrics"]) == {"train_loss"}  # only what the policy releases
    assert hashlib.sha256(model.weights).hexdigest() == m["model_sha256"]
    assert m["training_device"] == "cpu" and "gpu_evidence" not in m  # the default device
    sd = model.state_dict()
    assert sd["1.weight"].shape == (2, 4)
    # The recipient rebuilds the built-in architecture from the signed manifest alone.
    net = model.to_torch()
    assert not net.training
    assert net[1].weight.detach().numpy().tobytes() == sd["1.weight"].tobytes()


def test_manifest_with_one_flipped_byte(released: Any) -> None:
    _, c, resp = released
    manifest = bytearray(resp.manifest)
    manifest[manifest.index(b'"train_loss"') + 15] ^= 0x01
    with pytest.raises(ReleaseError, match="signature does not verify"):
        verify_manifest(
            bytes(manifest), resp.manifest_signature, policy=c.signed.policy, allow_simulated=True
        )


def test_release_sealed_to_another_key(released: Any) -> None:
    _, c, resp = released
    impostor = PartyKeys(RECIPIENT, c.keys[RECIPIENT].signing_key, PartyKeys.generate("x").hpke_key)
    with pytest.raises(ReleaseError, match="not sealed to this recipient key"):
        open_release(
            ReleaseBundle.from_response(resp),
            policy=c.signed.policy,
            keys=impostor,
            allow_simulated=True,
        )


def test_manifest_from_another_policy(released: Any, tmp_path: Path) -> None:
    _, _, resp = released
    other = make_consortium(tmp_path / "other")
    with pytest.raises(ReleaseError, match="manifest is for policy"):
        verify_manifest(
            resp.manifest, resp.manifest_signature, policy=other.signed.policy, allow_simulated=True
        )


def test_manifest_from_another_enclave(released: Any) -> None:
    """A manifest re-signed by a key the hardware evidence does not bind."""
    _, c, resp = released
    doc = json.loads(resp.manifest)
    rogue = Ed25519PrivateKey.generate()
    doc["enclave"]["signing_key"] = rogue.public_key().public_bytes_raw().hex()
    forged = canonical_json(doc)
    sig = rogue.sign(MANIFEST_SIG_TAG + forged)
    with pytest.raises(ReleaseError, match="evidence does not hold.*report_data"):
        verify_manifest(forged, sig, policy=c.signed.policy, allow_simulated=True)


def test_model_whose_hash_does_not_match(released: Any) -> None:
    _, c, resp = released
    manifest_sha = hashlib.sha256(resp.manifest).digest()
    party = c.signed.policy.party(RECIPIENT)
    from cctrain.crypto.keys import x25519_public

    enc, sealed = seal_weights(
        b"other weights",
        recipient_key=x25519_public(party.hpke_key),
        recipient_id=RECIPIENT,
        policy_digest=c.signed.digest,
        manifest_sha256=manifest_sha,
    )
    with pytest.raises(ReleaseError, match="model hash does not match"):
        open_release(
            dataclasses.replace(
                ReleaseBundle.from_response(resp), encapsulated_key=enc, sealed_weights=sealed
            ),
            policy=c.signed.policy,
            keys=c.keys[RECIPIENT],
            allow_simulated=True,
        )


def test_tampered_sealed_weights(released: Any) -> None:
    _, c, resp = released
    sealed = bytearray(resp.sealed_weights)
    sealed[40] ^= 1
    with pytest.raises(ReleaseError, match="do not authenticate"):
        open_release(
            dataclasses.replace(ReleaseBundle.from_response(resp), sealed_weights=bytes(sealed)),
            policy=c.signed.policy,
            keys=c.keys[RECIPIENT],
            allow_simulated=True,
        )


def test_fetch_by_non_recipient(released: Any) -> None:
    address, c, _ = released
    with _quiet(Recipient, address, c, "hospital-b") as r:
        with pytest.raises(PermissionDeniedError, match="not a recipient") as info:
            r.fetch_release()
    assert info.value.code == "PERMISSION_DENIED"


def test_approval_by_non_provider(released: Any) -> None:
    address, c, _ = released
    with _quiet(DataOwner, address, c, RECIPIENT) as r:
        with pytest.raises(PermissionDeniedError, match="not a data provider whose approval"):
            r.approve_release()


def test_uploads_closed_after_training(released: Any, tmp_path: Path) -> None:
    address, c, _ = released
    with _quiet(DataOwner, address, c, "hospital-c") as o:
        with pytest.raises(ProtocolError, match="uploads are closed"):
            o.upload(write_shard(tmp_path / "late.npz"), state_dir=tmp_path / "s")


def test_approvals_gate_the_release(tmp_path: Path) -> None:
    release = {"recipients": [RECIPIENT], "metrics": [], "approvals_required_from": ["hospital-a"]}
    c = make_consortium(tmp_path / "c", release=release)
    with running_enclave(c, tmp_path / "state") as (address, _app):
        upload_all(address, c, tmp_path)
        with _quiet(DataOwner, address, c, "hospital-a") as owner:
            assert owner.wait_for_phase(("awaiting_approval",), timeout=120) == "awaiting_approval"
            with _quiet(Recipient, address, c, RECIPIENT) as r:
                with pytest.raises(ProtocolError, match="awaiting approval from hospital-a"):
                    r.fetch_release()
            with _quiet(DataOwner, address, c, "hospital-b") as other:
                with pytest.raises(PermissionDeniedError):
                    other.approve_release()  # a provider the policy does not ask
            assert owner.approve_release() == ["hospital-a"]
            assert owner.status().phase == "released"
        with _quiet(Recipient, address, c, RECIPIENT) as r:
            assert r.fetch_model().manifest["metrics"] == {}


def test_dp_settings_opacus_cannot_account_release_nothing(tmp_path: Path) -> None:
    # δ must be below 1/N for a meaningful guarantee; the trainer refuses and lists why.
    privacy = {"enabled": True, "target_epsilon": 2.0, "delta": 0.5, "max_grad_norm": 1.0}
    c = make_consortium(tmp_path / "c", privacy=privacy)
    with running_enclave(c, tmp_path / "state") as (address, _app):
        upload_all(address, c, tmp_path)
        with _quiet(DataOwner, address, c, "hospital-a") as owner:
            with pytest.raises(
                ProtocolError, match=r"(?s)the run failed: .*privacy.delta must be in \(0, 1/N\)"
            ):
                owner.wait_for_phase(("released",), timeout=120)
        with _quiet(Recipient, address, c, RECIPIENT) as r:
            with pytest.raises(ProtocolError, match="nothing is released"):
                r.fetch_release()


def test_custom_model_source_not_in_policy(tmp_path: Path) -> None:
    from cctrain_enclave.app import AppConfig
    from cctrain_enclave.server import create_server

    source = b"def build_model(shape, classes):\n    raise SystemExit('executed!')\n"
    pinned = hashlib.sha256(b"something else").hexdigest()
    training = {
        "model": {"name": "custom", "source_sha256": pinned},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "epochs": 1,
        "batch_size": 8,
    }
    c = make_consortium(tmp_path / "c", training=training)
    src = tmp_path / "model.py"
    src.write_bytes(source)
    config = AppConfig(policy_path=c.policy_path, state_dir=tmp_path / "s", model_source=src)
    with pytest.raises(PolicyError, match=f"the policy pins {pinned}"):
        create_server(config)


def test_dp_run_certificate_and_progress(tmp_path: Path) -> None:
    privacy = {
        "enabled": True,
        "target_epsilon": 3.0,
        "delta": 1e-5,
        "max_grad_norm": 1.0,
        "noise_source": "csprng",
    }
    training = {
        "model": {"name": "mlp", "params": {"hidden": [16]}},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "epochs": 2,
        "batch_size": 32,
    }
    release = {"recipients": [RECIPIENT], "metrics": ["steps"]}  # no train_loss
    c = make_consortium(tmp_path / "c", privacy=privacy, training=training, release=release)
    with running_enclave(c, tmp_path / "state") as (address, _app):
        with _quiet(DataOwner, address, c, "hospital-a") as watcher:
            upload_all(address, c, tmp_path)
            events = list(watcher.watch(timeout=120))
        with _quiet(Recipient, address, c, RECIPIENT) as r:
            model = r.fetch_model()
    eps = [e.epsilon for e in events if e.epsilon is not None]
    assert eps and all(a <= b + 1e-12 for a, b in zip(eps, eps[1:], strict=False))  # ε only grows
    assert events[-1].phase == "released"
    # The loss is not DP-protected: it streams only when the policy releases train_loss.
    progress = [e for e in events if e.total_steps]
    assert progress and all(e.loss is None for e in progress)
    assert set(model.manifest["metrics"]) == {"steps"}
    cert = model.release.dp_certificate
    assert cert is not None
    assert cert["epsilon"] <= 3.0 and cert["delta"] == 1e-5
    assert cert["noise_source"].startswith("csprng")
    assert cert["steps"] > 0 and 0 < cert["sample_rate"] < 1
    _ = np
