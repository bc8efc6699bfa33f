"""A careless user at the ``cctrain`` command line: every mistake ends with the exit status
the contract gives it (cctrain.commandline) and one clear ``error: ...`` line on stderr (for a
policy, then its problems, one per line): no traceback, no parser or ``KeyError`` text.

Each case runs the real command in a fresh interpreter, in a directory holding a consortium's
files and a few wrong ones, against a live enclave on a loopback port where it needs one.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cctrain.crypto.keys import PRIVATE_TYPE, PartyKeys
from cctrain.release import BUNDLE_TYPE
from tests.cli_process import assert_clean_error, cctrain, environment
from tests.consortium import another_policy, make_consortium, running_enclave
from tests.ingest.conftest import write_shard


@dataclass(frozen=True)
class Workspace:
    root: Path
    address: str  # a live enclave serving policy.signed.json
    closed: str  # an address where nothing listens

    def args(self, template: tuple[str, ...]) -> list[str]:
        return [a.format(addr=self.address, closed=self.closed) for a in template]


def _private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def _closed_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    root = tmp_path_factory.mktemp("careless")
    c = make_consortium(root)
    for keys in (*c.keys.values(), PartyKeys.generate("outsider")):
        keys.save(root)
    (root / "policy.json").write_bytes(c.signed.policy.raw)  # valid, but not signed
    (root / "malformed.toml").write_text('version = 1\nname = "x"\n[[parties]\n')
    (root / "malformed.json").write_text('{"version": 1,')
    (root / "fields-missing.toml").write_text('version = 1\nname = "x"\n')
    unsigned = json.loads(c.policy_path.read_text()) | {"signatures": []}
    (root / "unsigned.signed.json").write_text(json.dumps(unsigned))
    (root / "other.signed.json").write_text(another_policy(c).envelope.to_json())
    _private(root / "garbage.key", "not a key\n")
    _private(root / "fields-missing.key", json.dumps({"type": PRIVATE_TYPE, "id": "x"}))
    (root / "a-directory.key").mkdir()
    (root / "not-a-release.json").write_text(json.dumps({"type": "something else"}))
    (root / "release-fields-missing.json").write_text(json.dumps({"type": BUNDLE_TYPE}))
    (root / "garbage.npz").write_text("not a zip\n")
    (root / "shard.txt").write_text("1,2,3\n")
    np.savez(root / "wrong-members.npz", x=np.zeros(3), labels=np.zeros(3))
    write_shard(root / "wrong-shape.npz", features=np.zeros((20, 5), np.float32))
    write_shard(root / "hospital-a.npz")
    (root / "garbage.log").write_bytes(bytes(range(64)))
    (root / "a-file").write_text("")
    with running_enclave(c, root / "state") as (address, _app):
        yield Workspace(root, address, _closed_address())


SESSION = ("--enclave", "{addr}", "--policy", "policy.signed.json", "--allow-simulated")
A = (*SESSION, "--key", "hospital-a.key")
UNREACHABLE = ("--enclave", "{closed}", "--policy", "policy.signed.json", "--key", "hospital-a.key")


def _at(address: str, *rest: str) -> tuple[str, ...]:
    return ("--enclave", address, "--policy", "policy.signed.json", *rest)


CASES: list[tuple[str, tuple[str, ...], int, str]] = [
    # usage
    ("no-such-command", ("uplod",), 2, "No such command 'uplod'"),
    ("missing-option", ("status", *SESSION), 2, "Missing option '--key'"),
    ("missing-file", ("policy", "check", "nope.toml"), 2, "'nope.toml' does not exist"),
    ("bad-party-id", ("keygen", "Hospital A"), 2, "party id must match"),
    ("keys-out-is-a-file", ("keygen", "x", "--out", "a-file"), 2, "cannot write the keys"),
    # policies
    ("check-malformed-toml", ("policy", "check", "malformed.toml"), 2, "not valid TOML"),
    ("check-malformed-json", ("policy", "check", "malformed.json"), 2, "not valid JSON"),
    ("check-fields-missing", ("policy", "check", "fields-missing.toml"), 1, "invalid policy"),
    ("sign-malformed", ("policy", "sign", "malformed.toml", "--key", "hospital-a.key"), 2, "TOML"),
    (
        "sign-fields-missing",
        ("policy", "sign", "fields-missing.toml", "--key", "hospital-a.key"),
        2,
        "invalid policy",
    ),
    (
        "sign-into-malformed-envelope",
        (
            "policy",
            "sign",
            "policy.json",
            "--key",
            "hospital-a.key",
            "--envelope",
            "malformed.json",
        ),
        2,
        "malformed.json is not a signed policy: not a DSSE envelope",
    ),
    ("verify-not-an-envelope", ("policy", "verify", "malformed.toml"), 2, "sign it first"),
    # key files
    (
        "garbage-key",
        ("policy", "sign", "policy.json", "--key", "garbage.key"),
        2,
        "garbage.key is not a cctrain private key file",
    ),
    (
        "key-fields-missing",
        ("policy", "sign", "policy.json", "--key", "fields-missing.key"),
        2,
        "missing field 'signing_key'",
    ),
    (
        "public-key-file",
        ("policy", "sign", "policy.json", "--key", "hospital-a.pub.json"),
        2,
        "holds public keys only",
    ),
    (
        "key-is-a-directory",
        ("policy", "sign", "policy.json", "--key", "a-directory.key"),
        2,
        "cannot read key file",
    ),
    (
        "key-of-no-party",
        ("policy", "sign", "policy.json", "--key", "outsider.key"),
        2,
        "names no party 'outsider'",
    ),
    ("session-key-of-no-party", ("status", *SESSION, "--key", "outsider.key"), 2, "no such party"),
    ("session-key-missing", ("status", *SESSION, "--key", "nope.key"), 2, "cannot read key file"),
    # enclave addresses
    (
        "address-not-host-port",
        ("status", *_at("nohost", "--key", "hospital-a.key")),
        2,
        "host:port",
    ),
    (
        "address-port-out-of-range",
        ("status", *_at("127.0.0.1:99999", "--key", "hospital-a.key")),
        2,
        "port 1-65535",
    ),
    ("unreachable-status", ("status", *UNREACHABLE), 3, "cannot reach the enclave"),
    ("unreachable-watch", ("watch", *UNREACHABLE), 3, "cannot reach the enclave"),
    ("unreachable-upload", ("upload", "hospital-a.npz", *UNREACHABLE), 3, "cannot reach"),
    # session policies
    (
        "session-policy-not-signed",
        ("status", "--enclave", "{addr}", "--policy", "policy.json", "--key", "hospital-a.key"),
        2,
        "policy.json is not a signed policy",
    ),
    (
        "session-policy-unsigned",
        ("train", "start", "--enclave", "{addr}", "--policy", "unsigned.signed.json")
        + ("--key", "hospital-a.key"),
        2,
        "policy is not fully signed",
    ),
    (
        "enclave-serves-another-policy",
        ("status", "--enclave", "{addr}", "--policy", "other.signed.json")
        + ("--key", "hospital-a.key", "--allow-simulated"),
        1,
        "policy mismatch: the enclave serves policy ",
    ),
    # shards
    ("shard-wrong-extension", ("upload", "shard.txt", *A), 2, "unsupported shard format"),
    ("shard-not-a-zip", ("upload", "garbage.npz", *A), 2, "is not an NPZ file"),
    ("shard-wrong-members", ("upload", "wrong-members.npz", *A), 2, "exactly 'features' and"),
    (
        "shard-against-the-schema",
        ("upload", "wrong-shape.npz", *SESSION, "--key", "hospital-b.key", "--no-progress"),
        2,
        "shard violates the policy schema: features.shape",
    ),
    # operations the enclave refuses (not bad input: exit 1)
    ("start-rule-not-met", ("train", "start", *A), 1, "the start rule does not hold yet"),
    ("fetch-not-a-recipient", ("release", "fetch", *A), 1, "is not a recipient"),
    ("approve-before-a-release", ("release", "approve", *A), 1, "no release manifest yet"),
    ("unlock-a-platform-key", ("unlock", *A), 1, "there is nothing to unlock"),
    ("unreachable-unlock", ("unlock", *UNREACHABLE), 3, "cannot reach the enclave"),
    ("unlock-key-of-no-party", ("unlock", *SESSION, "--key", "outsider.key"), 2, "no such party"),
    # release files
    (
        "release-not-a-release",
        ("release", "verify", "not-a-release.json", "--policy", "policy.signed.json"),
        2,
        "not-a-release.json is not a release bundle",
    ),
    (
        "release-policy-file",
        ("release", "verify", "policy.signed.json", "--policy", "policy.signed.json"),
        2,
        "is not a release bundle",
    ),
    (
        "release-fields-missing",
        ("release", "verify", "release-fields-missing.json", "--policy", "policy.signed.json"),
        2,
        "missing field 'manifest'",
    ),
    (
        "release-verify-unsigned-policy",
        ("release", "verify", "not-a-release.json", "--policy", "policy.json"),
        2,
        "policy.json is not a signed policy",
    ),
    # journals
    ("audit-no-source", ("audit", "--policy", "policy.signed.json"), 2, "exactly one of"),
    ("audit-enclave-no-key", ("audit", *SESSION), 2, "--enclave needs --key"),
    (
        "audit-journal-missing",
        ("audit", "--journal", "nope.log", "--policy", "policy.signed.json"),
        2,
        "cannot read nope.log",
    ),
    (
        "audit-journal-garbage",
        ("audit", "--journal", "garbage.log", "--policy", "policy.signed.json"),
        1,  # what this command checks: the journal does not verify
        "64 bytes after the last complete entry",
    ),
    # evidence
    ("evidence-missing", ("attest", "verify", "nope.bin"), 2, "cannot read nope.bin"),
]


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [pytest.param(args, code, needle, id=name) for name, args, code, needle in CASES],
)
def test_a_careless_user(ws: Workspace, args: tuple[str, ...], code: int, needle: str) -> None:
    proc = cctrain(*ws.args(args), cwd=ws.root, env=environment(ws.root / "home"))
    line = assert_clean_error(proc, code)
    assert needle in line, proc.stderr


def test_every_case_has_its_own_name() -> None:
    names = [name for name, *_ in CASES]
    assert len(names) == len(set(names))


def test_help_is_not_an_error(tmp_path: Path) -> None:
    shown = cctrain("release", "--help", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.startswith("Usage: cctrain release")
    bare = cctrain(cwd=tmp_path)  # a group without a command: its help, exit status 2
    assert bare.returncode == 2 and "Usage: cctrain [OPTIONS] COMMAND" in bare.stderr
    assert "error:" not in bare.stdout + bare.stderr
