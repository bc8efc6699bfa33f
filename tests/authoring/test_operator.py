"""The operator API (cctrain.operator): build, validate, sign, merge, start a local enclave
and attest it, as the module's docstring shows."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from cctrain import operator as op
from cctrain.client import SimulatedEvidenceWarning
from cctrain.crypto.keys import PartyKeys
from cctrain.errors import InputError, PolicyError, PolicyFileError


def test_build_sign_merge_serve_and_attest(tmp_path: Path) -> None:
    a, lab = PartyKeys.generate("hospital-a"), PartyKeys.generate("research-lab")
    _, a_pub = a.save(tmp_path)
    b = op.PolicyBuilder("hospitals", name="study-42")
    with pytest.raises(PolicyError, match="parties: missing required key"):
        b.validate()
    b.add_party("hospital-a", ["data_provider"], op.public_keys(a_pub))
    b.add_party("research-lab", "recipient", lab)
    b.set("training.epochs", 1).set("validation.fraction", 0.25)
    assert "# Differential privacy" not in b.toml() and "# Which TEEs may run" in b.toml()
    policy = b.write(tmp_path / "policy.toml")
    assert policy.training["epochs"] == 1 and policy.validation["fraction"] == 0.25
    b.set("training.optimzer", {"name": "sgd", "lr": 0.1})
    with pytest.raises(PolicyError, match="did you mean 'optimizer'"):
        b.validate()
    with pytest.raises(InputError, match="not a party of the policy"):
        op.sign(policy, PartyKeys.generate("hospital-a"))
    (tmp_path / "a.signed.json").write_text(op.sign(policy, a).envelope.to_json())
    from_file = op.sign(tmp_path / "policy.toml", lab)
    result = op.merge([tmp_path / "a.signed.json", from_file])
    assert result.status.signed == ("hospital-a", "research-lab")
    result.signed.require_complete()
    signed_path = result.signed.save(tmp_path / "policy.signed.json")
    assert op.merge([signed_path]).signed.digest == policy.digest
    with op.local_enclave(signed_path, state_dir=tmp_path / "state", log=tmp_path / "log") as e:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SimulatedEvidenceWarning)
            with op.connect(
                e.address,
                policy=signed_path,
                key=a,
                allow_simulated=True,
                state_dir=tmp_path / "home",
            ) as session:
                assert session.status().phase == "collecting"
                assert session.policy.digest == policy.digest


def test_a_builder_from_an_existing_policy_keeps_its_text_and_validates(tmp_path: Path) -> None:
    lab = PartyKeys.generate("research-lab")
    b = op.PolicyBuilder("hospitals", name="study-42").add_party("research-lab", "recipient", lab)
    b.add_party("hospital-a", "data_provider", PartyKeys.generate("hospital-a"))
    (tmp_path / "policy.toml").write_text(b.toml())
    again = op.PolicyBuilder.from_file(tmp_path / "policy.toml")
    assert again.toml() == b.toml()
    again.set("cluster.ranks", 2)  # a table the text lacked is created
    assert again.validate().cluster["ranks"] == 2
    assert op.PolicyBuilder.from_toml(b.toml()).validate().digest == b.validate().digest
    with pytest.raises(PolicyError, match="did you mean"):
        op.PolicyBuilder.from_toml(b.toml().replace("[training]", "[trainig]")).validate()
    with pytest.raises(InputError, match="cannot read"):
        op.PolicyBuilder.from_file(tmp_path / "missing.toml")


def test_a_local_worker_needs_a_policy_file_and_a_worker_rank(tmp_path: Path) -> None:
    (tmp_path / "p.signed.json").write_text("{}")
    with pytest.raises(InputError, match="rank: got 0"):
        op.local_worker(tmp_path / "p.signed.json", rank=0, rendezvous="127.0.0.1:1",
                        state_dir=tmp_path / "s", log=tmp_path / "log")  # fmt: skip
    with pytest.raises(PolicyFileError, match="no such signed policy"):
        op.local_worker(tmp_path / "nope.json", rank=1, rendezvous="127.0.0.1:1",
                        state_dir=tmp_path / "s", log=tmp_path / "log")  # fmt: skip
