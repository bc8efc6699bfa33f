"""Policy validation, DSSE signing, key files, and the keygen/policy CLI."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cctrain.cli import main
from cctrain.crypto.dsse import Envelope, pae
from cctrain.crypto.keys import PartyKeys
from cctrain.errors import KeyFileError, PolicyError
from cctrain.policy import SignedPolicy, non_private_outputs, parse_policy
from tests.consortium import RECIPIENT, make_consortium, policy_document


def _keys() -> dict[str, PartyKeys]:
    return {pid: PartyKeys.generate(pid) for pid in ("hospital-a", "hospital-b", RECIPIENT)}


def _parse(doc: dict[str, Any]) -> Any:
    return parse_policy(json.dumps(doc).encode(), "json")


def test_valid_policy_parses_and_digest_is_sha256_of_bytes() -> None:
    import hashlib

    doc = policy_document(_keys())
    raw = json.dumps(doc).encode()
    p = parse_policy(raw, "json")
    assert p.digest == hashlib.sha256(raw).digest()
    assert p.providers == ["hospital-a", "hospital-b"]
    assert p.recipients == [RECIPIENT]


def test_toml_and_json_both_accepted() -> None:
    keys = _keys()
    toml = f"""
version = 1
name = "t"
[[parties]]
id = "hospital-a"
roles = ["data_provider"]
signing_key = "{keys["hospital-a"].signing_public}"
[[parties]]
id = "{RECIPIENT}"
roles = ["recipient"]
signing_key = "{keys[RECIPIENT].signing_public}"
hpke_key = "{keys[RECIPIENT].hpke_public}"
[attestation]
platforms = ["simulated"]
allow_simulated = true
[data]
features = {{ shape = [4], dtype = "float32" }}
labels = {{ num_classes = 2 }}
max_rows = 100
max_bytes = 100000
[training]
model = {{ name = "mlp", params = {{ hidden = [8] }} }}
optimizer = {{ name = "sgd", lr = 0.1 }}
epochs = 1
batch_size = 8
[privacy]
enabled = true
target_epsilon = 2.0
delta = 1e-5
max_grad_norm = 1.0
[release]
recipients = ["{RECIPIENT}"]
"""
    p = parse_policy(toml.encode(), "toml")
    assert p.privacy["accountant"] == "rdp"
    assert p.start["require_uploads_from"] == ("hospital-a",)


def test_every_problem_is_reported_with_its_field() -> None:
    keys = _keys()
    doc = policy_document(keys)
    doc["surprise"] = 1  # unknown top-level key
    doc["parties"].append(dict(doc["parties"][0]))  # duplicate id (and key)
    doc["parties"][2].pop("hpke_key")  # recipient without HPKE key
    doc["privacy"] = {"enabled": True, "target_epsilon": -1, "delta": 2, "max_grad_norm": 1.0}
    doc["training"]["optimizer"]["lr"] = 0
    doc["data"]["features"]["shape"] = [0]
    with pytest.raises(PolicyError) as info:
        _parse(doc)
    problems = "\n".join(info.value.problems)
    for expected in (
        "surprise: unknown key",
        "duplicate party id 'hospital-a'",
        "has no HPKE key",
        "privacy.target_epsilon: must be in (0, 100]",
        "privacy.delta: must be in (0, 1)",
        "training.optimizer.lr: must be a positive number",
        "data.features.shape",
    ):
        assert expected in problems, (expected, problems)


@pytest.mark.parametrize(
    ("edit", "text"),
    [
        (lambda d: d["attestation"].update(allow_simulated=False), "allow_simulated is not true"),
        (
            lambda d: d["attestation"].update(platforms=["sev-snp"], reference={}),
            "no launch measurement is pinned",
        ),
        (lambda d: d["attestation"].update(platforms=["quantum"]), "unknown platform 'quantum'"),
        (
            lambda d: d["release"].update(recipients=["hospital-a"]),
            "does not have the 'recipient' role",
        ),
        (
            lambda d: d["release"].update(approvals_required_from=[RECIPIENT]),
            "is not a data_provider",
        ),
        (
            lambda d: d.update(privacy={"enabled": True, "target_epsilon": 1, "delta": 1e-5}),
            "privacy.max_grad_norm: missing",
        ),
        (lambda d: d["training"].update(model={"name": "custom"}), "source_sha256"),
        (
            lambda d: d.update(start={"require_uploads_from": ["nobody"]}),
            "'nobody' is not a data_provider",
        ),
        (
            lambda d: d["parties"][0].update(signing_key="ed25519:AAAA"),
            "ed25519 key must be 32 bytes",
        ),
        (lambda d: d["parties"][0].update(id="Bad Id!"), "parties[0].id"),
        (lambda d: d["parties"][0].update(id="hospital-a\n"), "parties[0].id"),
        (lambda d: d.update(expires="tomorrow"), "expires: not an ISO-8601 time"),
    ],
)
def test_single_problems(edit: Any, text: str) -> None:
    doc = policy_document(_keys())
    edit(doc)
    with pytest.raises(PolicyError, match=None) as info:
        _parse(doc)
    assert any(text in p for p in info.value.problems), info.value.problems


def test_insecure_noise_only_on_simulated_only_policy() -> None:
    doc = policy_document(_keys())
    doc["privacy"] = {
        "enabled": True,
        "target_epsilon": 1.0,
        "delta": 1e-5,
        "max_grad_norm": 1.0,
        "noise_source": "insecure-fast",
    }
    doc["release"]["metrics"] = ["steps"]
    _parse(doc)  # fine on a simulated-only policy
    doc["attestation"] = {
        "platforms": ["simulated", "sev-snp"],
        "allow_simulated": True,
        "reference": {"sev-snp": {"measurements": ["aa" * 48]}},
    }
    with pytest.raises(PolicyError, match="insecure-fast"):
        _parse(doc)


DP = {"enabled": True, "target_epsilon": 1.0, "delta": 1e-5, "max_grad_norm": 1.0}


def test_dp_metrics_outside_the_guarantee_need_an_opt_in() -> None:
    doc = policy_document(_keys())
    doc["privacy"] = DP
    doc["release"] = {
        "recipients": ["research-lab"],
        "metrics": ["train_loss", "train_accuracy", "steps", "samples"],
    }
    with pytest.raises(PolicyError) as info:
        _parse(doc)
    refused = [p for p in info.value.problems if "outside the DP guarantee" in p]
    assert len(refused) == 3  # train_loss, train_accuracy, samples; steps is public
    assert not any("'steps'" in p for p in refused)
    doc["release"]["non_private"] = ["train_loss", "train_accuracy", "samples", "progress_loss"]
    policy = _parse(doc)
    assert non_private_outputs(policy) == sorted(doc["release"]["non_private"])
    doc["release"]["non_private"] = ["weights"]
    with pytest.raises(PolicyError, match="release.non_private"):
        _parse(doc)


def test_non_private_outputs_without_dp_name_everything() -> None:
    doc = policy_document(_keys())  # no DP, releases train_loss
    assert non_private_outputs(_parse(doc)) == ["model", "progress_loss", "train_loss"]
    doc["privacy"] = DP
    doc["release"] = {"recipients": ["research-lab"], "metrics": ["steps"]}
    assert non_private_outputs(_parse(doc)) == []


def test_dsse_pae_matches_spec() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_signature_status_and_tampering(tmp_path: Path) -> None:
    c = make_consortium(tmp_path, sign_all=False)
    sp = c.signed
    for pid in ("hospital-a", "hospital-b"):
        sp = SignedPolicy(sp.envelope.sign(pid, c.keys[pid].signing_key), sp.policy)
    st = sp.status()
    assert set(st.signed) == {"hospital-a", "hospital-b"}
    assert set(st.missing) == {"hospital-c", RECIPIENT}
    with pytest.raises(PolicyError, match="missing: hospital-c"):
        sp.require_complete()
    # A signature by the right name but the wrong key is invalid, not counted.
    forged = sp.envelope.sign("hospital-c", PartyKeys.generate("hospital-c").signing_key)
    assert "hospital-c" in SignedPolicy(forged, sp.policy).status().invalid
    # Changing one payload byte invalidates every signature.
    env = json.loads(sp.envelope.to_json())
    import base64

    payload = bytearray(base64.b64decode(env["payload"]))
    payload[payload.index(b"test-consortium")] ^= 0x20
    env["payload"] = base64.b64encode(bytes(payload)).decode()
    tampered = SignedPolicy.from_envelope(Envelope.from_json(json.dumps(env)))
    assert tampered.status().signed == ()


def test_expired_policy_is_refused(tmp_path: Path) -> None:
    c = make_consortium(tmp_path, expires="2020-01-01T00:00:00Z")
    with pytest.raises(PolicyError, match="expired"):
        c.signed.require_complete()


def test_key_files(tmp_path: Path) -> None:
    keys = PartyKeys.generate("hospital-a")
    priv, pub = keys.save(tmp_path)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    loaded = PartyKeys.load(priv)
    assert loaded.signing_public == keys.signing_public
    assert json.loads(pub.read_text())["hpke_key"] == keys.hpke_public
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        keys.save(tmp_path)
    os.chmod(priv, 0o644)
    with pytest.raises(KeyFileError, match="accessible by group or others"):
        PartyKeys.load(priv)
    os.chmod(priv, 0o600)
    priv.write_text("{not json")
    with pytest.raises(KeyFileError, match="not a cctrain private key"):
        PartyKeys.load(priv)


def test_cli_keygen_sign_verify(tmp_path: Path) -> None:
    runner = CliRunner()
    ids = ("hospital-a", RECIPIENT)
    for pid in ids:
        r = runner.invoke(main, ["keygen", pid, "--out", str(tmp_path)])
        assert r.exit_code == 0, r.output
    keys = {pid: PartyKeys.load(tmp_path / f"{pid}.key") for pid in ids}
    doc = policy_document(keys)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(doc))
    env = tmp_path / "policy.signed.json"

    r = runner.invoke(
        main, ["policy", "sign", str(policy), "--key", str(tmp_path / "hospital-a.key")]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["policy", "verify", str(env), "--format", "json"])
    assert r.exit_code == 1  # incomplete
    out = json.loads(r.output)
    assert out["signed"] == ["hospital-a"] and out["missing"] == [RECIPIENT]

    r = runner.invoke(
        main, ["policy", "sign", str(policy), "--key", str(tmp_path / f"{RECIPIENT}.key")]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["policy", "verify", str(env)])
    assert r.exit_code == 0, r.output
    assert "status:  complete" in r.output
    assert SignedPolicy.load(env).digest.hex() in r.output

    outsider = PartyKeys.generate("mallory")
    outsider.save(tmp_path)
    r = runner.invoke(main, ["policy", "sign", str(policy), "--key", str(tmp_path / "mallory.key")])
    assert r.exit_code == 2 and "names no party 'mallory'" in r.output


def test_cli_policy_check_reports_problems(tmp_path: Path) -> None:
    doc = policy_document(_keys())
    doc["training"]["epochs"] = 0
    p = tmp_path / "p.json"
    p.write_text(json.dumps(doc))
    r = CliRunner().invoke(main, ["policy", "check", str(p)])
    assert r.exit_code == 1
    assert "training.epochs: must be a positive integer" in r.output


def test_ids_are_matched_whole_not_up_to_a_trailing_newline() -> None:
    from cctrain.ids import is_party_id, is_shard_id, path_component

    assert is_shard_id("Shard-1.v2") and is_party_id("hospital-a")
    for bad in ("a\n", "a/b", "..", ".a", "", "a" * 65, "a\x00", None, 3):
        assert not is_shard_id(bad) and not is_party_id(bad)
    assert not is_party_id("Hospital-A")  # party ids are lower case
    with pytest.raises(ValueError):
        path_component("shard", "../x")
