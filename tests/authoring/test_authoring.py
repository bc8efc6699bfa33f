"""Writing a policy: did-you-mean on unknown keys, `policy init` templates, `policy add-party`
(in place, comments kept) and `policy merge` of separately collected signatures."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cctrain.authoring import PublicKeys, add_party, merge_signed, pin_package, policy_template
from cctrain.cli import main
from cctrain.crypto.keys import PartyKeys
from cctrain.errors import InputError, PolicyError
from cctrain.policy import SignedPolicy, parse_policy
from tests.consortium import policy_document


def _keys(*ids: str) -> dict[str, PartyKeys]:
    return {pid: PartyKeys.generate(pid) for pid in ids}


def _pub(keys: PartyKeys) -> PublicKeys:
    return PublicKeys.from_json(json.dumps(keys.public_document()))


def _problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(json.dumps(doc).encode(), "json")
    return list(info.value.problems)


# --------------------------------------------------------------------------- did you mean


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d["training"].__setitem__("optimzer", d["training"].pop("optimizer")),
            "training.optimzer: unknown key; did you mean 'optimizer'?",
        ),
        (
            lambda d: d.__setitem__("atestation", d.pop("attestation")),
            "atestation: unknown key; did you mean 'attestation'?",
        ),
        (
            lambda d: d["data"]["features"].__setitem__("dtyp", "float32"),
            "data.features.dtyp: unknown key; did you mean 'dtype'?",
        ),
        (
            lambda d: d["parties"][0].__setitem__("hpke", "x"),
            "parties[0].hpke: unknown key; did you mean 'hpke_key'?",
        ),
        (
            lambda d: d["privacy"].__setitem__("max_grad_nrom", 1.0),
            "privacy.max_grad_nrom: unknown key; did you mean 'max_grad_norm'?",
        ),
    ],
)
def test_unknown_keys_suggest_the_closest_known_one(edit: Any, expected: str) -> None:
    doc = policy_document(_keys("hospital-a", "hospital-b", "research-lab"))
    edit(doc)
    assert expected in _problems(doc)


def test_an_unknown_key_far_from_any_gets_no_suggestion() -> None:
    doc = policy_document(_keys("hospital-a", "hospital-b", "research-lab"))
    doc["training"]["zzzzzz"] = 1
    assert "training.zzzzzz: unknown key" in _problems(doc)


# --------------------------------------------------------------------------- init, add-party


def _filled(scenario: str, *, dp: bool, ranks: int = 1) -> str:
    keys = _keys("hospital-a", "lab")
    text = policy_template(scenario, dp=dp, ranks=ranks)
    text, _ = add_party(text, "hospital-a", "data_provider", _pub(keys["hospital-a"]))
    roles = "model_provider,recipient" if scenario == "model-owner" else "recipient"
    text, _ = add_party(text, "lab", roles, _pub(keys["lab"]))
    return text


@pytest.mark.parametrize("dp", [False, True])
@pytest.mark.parametrize("ranks", [1, 2])
def test_the_hospitals_template_is_valid_once_parties_are_added(dp: bool, ranks: int) -> None:
    text = _filled("hospitals", dp=dp, ranks=ranks)
    p = parse_policy(text.encode(), "toml")
    assert p.providers == ["hospital-a"] and p.recipients == ["lab"]
    assert p.privacy["enabled"] is dp
    assert p.cluster["ranks"] == ranks


def test_the_template_alone_is_refused_for_its_missing_parties() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(policy_template("hospitals").encode(), "toml")
    assert "parties: missing required key" in info.value.problems


@pytest.mark.parametrize("dp", [False, True])
def test_the_model_owner_template_wants_only_the_package_hash(dp: bool) -> None:
    text = _filled("model-owner", dp=dp)
    with pytest.raises(PolicyError) as info:
        parse_policy(text.encode(), "toml")
    assert [p.split(":")[0] for p in info.value.problems] == ["training.model.package_sha256"]
    text = text.replace("REPLACE-sha256-of-the-package", "ab" * 32)
    p = parse_policy(text.encode(), "toml")
    assert p.model_provider == "lab"


def test_pin_package_sets_the_hash_keeps_the_comments_and_refuses_a_builtin_model() -> None:
    text = _filled("model-owner", dp=False)
    pinned, change = pin_package(text, "cd" * 32)
    assert change == f"training.model.package_sha256: REPLACE-sha256-of-the-package -> {'cd' * 32}"
    assert parse_policy(pinned.encode(), "toml").model_package["package_sha256"] == "cd" * 32
    assert pinned == text.replace("REPLACE-sha256-of-the-package", "cd" * 32)  # nothing else
    again, change = pin_package(pinned, "ef" * 32)  # a new build of the package: pinned again
    assert change.startswith(f"training.model.package_sha256: {'cd' * 32} -> ")
    with pytest.raises(PolicyError) as info:
        pin_package(_filled("hospitals", dp=False), "cd" * 32)
    assert info.value.problems[0].startswith("training.model.name: got 'mlp', want 'package'")
    with pytest.raises(InputError, match="want 64 lowercase hex digits"):
        pin_package(text, "CD" * 32)


def test_add_party_keeps_every_comment_and_line() -> None:
    template = policy_template("hospitals", dp=True)
    text = _filled("hospitals", dp=True)
    kept = [line for line in template.splitlines() if line.strip().startswith("#")]
    assert kept and all(line in text.splitlines() for line in kept)
    assert text.startswith(template.split("recipients = []")[0])


def test_add_party_refuses_duplicates_unknown_roles_and_the_wrong_keys() -> None:
    keys = _keys("hospital-a", "hospital-b")
    text, _ = add_party(policy_template("hospitals"), "hospital-a", "data_provider",
                        _pub(keys["hospital-a"]))  # fmt: skip
    with pytest.raises(InputError, match="already in the policy"):
        add_party(text, "hospital-a", "data_provider", _pub(keys["hospital-a"]))
    same_key = PublicKeys("hospital-b", _pub(keys["hospital-a"]).signing_key, "x")
    with pytest.raises(InputError, match="already has this signing key"):
        add_party(text, "hospital-b", "data_provider", same_key)
    with pytest.raises(InputError, match=r"roles: got data_owner, want one or more of"):
        add_party(text, "hospital-b", "data_owner", _pub(keys["hospital-b"]))
    with pytest.raises(InputError, match="the file's id is 'hospital-b', not 'hospital-c'"):
        add_party(text, "hospital-c", "data_provider", _pub(keys["hospital-b"]))
    with pytest.raises(InputError, match="type: got None"):
        PublicKeys.from_json("{}")
    with pytest.raises(InputError, match="signing_key"):
        PublicKeys.from_json(
            json.dumps(keys["hospital-b"].public_document() | {"signing_key": "ed25519:AA=="})
        )


# --------------------------------------------------------------------------- merge


def _signed_separately(tmp_path: Path) -> tuple[Path, dict[str, PartyKeys]]:
    keys = _keys("hospital-a", "lab")
    text = policy_template("hospitals")
    text, _ = add_party(text, "hospital-a", "data_provider", _pub(keys["hospital-a"]))
    text, _ = add_party(text, "lab", "recipient", _pub(keys["lab"]))
    path = tmp_path / "policy.toml"
    path.write_text(text)
    for pid, k in keys.items():
        k.save(tmp_path)
        p = parse_policy(path.read_bytes(), "toml")
        sp = SignedPolicy.new(p)
        (tmp_path / f"{pid}.signed.json").write_text(sp.envelope.sign(pid, k.signing_key).to_json())
    return path, keys


def test_merge_combines_signatures_and_says_who_signed(tmp_path: Path) -> None:
    _signed_separately(tmp_path)
    parts = [SignedPolicy.load(tmp_path / f"{pid}.signed.json") for pid in ("hospital-a", "lab")]
    result = merge_signed(parts, names=["a", "b"])
    assert result.contributions == (("hospital-a",), ("lab",))
    result.signed.require_complete()
    assert result.status.signed == ("hospital-a", "lab") and not result.status.missing


def test_merge_refuses_another_policy_and_a_bad_signature(tmp_path: Path) -> None:
    path, keys = _signed_separately(tmp_path)
    a = SignedPolicy.load(tmp_path / "hospital-a.signed.json")
    other = SignedPolicy.new(parse_policy(path.read_bytes() + b"\n# edited\n", "toml"))
    other = SignedPolicy(other.envelope.sign("lab", keys["lab"].signing_key), other.policy)
    with pytest.raises(PolicyError) as info:
        merge_signed([a, other], names=["a.json", "b.json"])
    assert info.value.problems[0].startswith("b.json: signs another policy (digest ")
    doc = json.loads((tmp_path / "lab.signed.json").read_text())
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[0] ^= 1  # a flipped bit in lab's signature
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    (tmp_path / "lab.signed.json").write_text(json.dumps(doc))
    with pytest.raises(PolicyError) as info:
        merge_signed([a, SignedPolicy.load(tmp_path / "lab.signed.json")], names=["a", "b"])
    assert info.value.problems == ("b: signature of 'lab' does not verify or is not a party",)


# --------------------------------------------------------------------------- the commands


def test_the_commands_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke
    for pid in ("hospital-a", "lab"):
        assert run(main, ["keygen", pid]).exit_code == 0
    r = run(main, ["policy", "init", "--scenario", "hospitals", "--dp", "-o", "policy.toml"])
    assert r.exit_code == 0, r.output
    again = run(main, ["policy", "init", "--scenario", "hospitals", "-o", "policy.toml"])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    for pid, roles in (("hospital-a", "data_provider"), ("lab", "recipient")):
        r = run(main, ["policy", "add-party", pid, "--roles", roles, "--pub", f"{pid}.pub.json",
                       "policy.toml"])  # fmt: skip
        assert r.exit_code == 0, r.output
    dup = run(main, ["policy", "add-party", "lab", "--roles", "recipient", "--pub",
                     "lab.pub.json", "policy.toml"])  # fmt: skip
    assert dup.exit_code == 2 and "'lab' is already in the policy" in dup.output
    r = run(main, ["policy", "check", "policy.toml"])
    assert r.exit_code == 0, r.output
    for pid in ("hospital-a", "lab"):
        r = run(main, ["policy", "sign", "policy.toml", "--key", f"{pid}.key",
                       "--envelope", f"{pid}.signed.json"])  # fmt: skip
        assert r.exit_code == 0, r.output
    r = run(main, ["policy", "merge", "hospital-a.signed.json", "lab.signed.json",
                   "-o", "policy.signed.json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "signed:  hospital-a, lab" in r.output and "missing: -" in r.output
    r = run(main, ["policy", "verify", "policy.signed.json"])
    assert r.exit_code == 0 and "status:  complete" in r.output
