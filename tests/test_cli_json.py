"""``--format json`` on every ``cctrain`` command: the result is one JSON document on stdout,
and so is every error (``{"error": {"code", "message", "exit"}}``), with the exit status the
contract gives it (cctrain.commandline). The command list is walked from the click group, so
a new command without --format json, or without a bad-input case here, fails this test.

Each case runs the real command in a fresh interpreter.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from cctrain.cli.main import _progress_json
from cctrain.cli.main import main as cctrain_group
from cctrain.client import TrainingProgress
from cctrain.commandline import slug, wants_json
from tests.cli_process import SIMULATED_BANNER, cctrain, environment
from tests.consortium import make_consortium, running_enclave


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command a user can run: each leaf, and each group that runs without one."""
    for name, cmd in sorted(group.commands.items()):
        here = (*path, name)
        if isinstance(cmd, click.Group):
            if cmd.invoke_without_command:
                yield here
            yield from _commands(cmd, here)
        else:
            yield here


def _command(path: tuple[str, ...]) -> click.Command:
    cmd: click.Command = cctrain_group
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    return cmd


COMMANDS = [" ".join(p) for p in _commands(cctrain_group)]

SESSION = ("--policy", "policy.signed.json", "--key", "hospital-a.key", "--allow-simulated")
BAD_ADDRESS = ("--enclave", "127.0.0.1:99999", *SESSION)

#: command -> (bad arguments, exit status, error code)
BAD_INPUT: dict[str, tuple[tuple[str, ...], int, str]] = {
    "attest enclave": (BAD_ADDRESS, 2, "enclave-address"),
    "dashboard": (("--host", "10.1.2.3", *BAD_ADDRESS), 2, "input"),  # not loopback
    "attest verify": (("nope.bin",), 2, "bad-input"),
    "audit": (("--policy", "policy.signed.json"), 2, "usage"),
    "enclave serve": (("--policy", "nope.json", "--state-dir", "s"), 2, "bad-parameter"),
    "keygen": (("Hospital A",), 2, "bad-party-id"),
    "ledger": (("--state-dir", "a-file"), 2, "bad-parameter"),
    "ledger budget": (("--epsilon", "lots"), 2, "bad-parameter"),
    "measure": (("--no-such-option",), 2, "no-such-option"),
    "memory": (("--state-dir", "a-file"), 2, "bad-parameter"),
    "memory forget": (("abcdef12",), 2, "missing-parameter"),
    "model inspect": (("nope.pkg",), 2, "bad-parameter"),
    "model package": (("nope-dir", "-o", "x.pkg"), 2, "bad-parameter"),
    "model upload": (("nope.pkg", *BAD_ADDRESS), 2, "bad-parameter"),
    "policy add-party": (
        ("lab", "--roles", "chef", "--pub", "a-file", "fields-missing.toml"),
        2,
        "input",
    ),
    "policy check": (("fields-missing.toml",), 1, "policy"),
    "policy init": (("--scenario", "hospitals", "-o", "a-file"), 2, "bad-input"),
    "policy merge": (("policy.signed.json", "a-file", "-o", "m.json"), 2, "policy-file"),
    "policy pin-package": (("fields-missing.toml", "a-file"), 2, "package"),
    "policy sign": (("policy.json", "--key", "garbage.key"), 2, "key-file"),
    "policy verify": (("unsigned.signed.json",), 1, "incomplete"),
    "release approve": (BAD_ADDRESS, 2, "enclave-address"),
    "release fetch": (BAD_ADDRESS, 2, "enclave-address"),
    "release veto": (BAD_ADDRESS, 2, "enclave-address"),
    "release verify": (("policy.signed.json", "--policy", "policy.signed.json"), 2, "release-file"),
    "status": (("--enclave", "{closed}", *SESSION), 3, "enclave-unavailable"),
    "train start": (BAD_ADDRESS, 2, "enclave-address"),
    "unlock": (("--enclave", "nohost", *SESSION), 2, "enclave-address"),
    "upload": (("shard.txt", *BAD_ADDRESS), 2, "shard"),
    "watch": (BAD_ADDRESS, 2, "enclave-address"),
    "withdraw": (("--shard-id", "no such id!", *BAD_ADDRESS), 2, "shard"),
}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("json")
    c = make_consortium(root)
    for keys in c.keys.values():
        keys.save(root)
    (root / "policy.json").write_bytes(c.signed.policy.raw)
    (root / "fields-missing.toml").write_text('version = 1\nname = "x"\n')
    unsigned = json.loads(c.policy_path.read_text()) | {"signatures": []}
    (root / "unsigned.signed.json").write_text(json.dumps(unsigned))
    (root / "garbage.key").write_text("not a key\n")
    (root / "garbage.key").chmod(0o600)
    (root / "shard.txt").write_text("1,2,3\n")
    (root / "a-file").write_text("")
    return root


def _closed_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _one_json_error(proc: subprocess.CompletedProcess[str], code: int, kind: str) -> dict:
    """Exit status ``code``; stdout one JSON object whose error has ``kind``; stderr holds
    nothing but (maybe) the simulated banner."""
    where = f"argv={proc.args!r}\nstdout={proc.stdout}\nstderr={proc.stderr}"
    assert proc.returncode == code, where
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, where
    doc = json.loads(lines[0])
    err = doc["error"]
    assert err["code"] == kind and err["exit"] == code, where
    assert isinstance(err["message"], str) and err["message"], where
    assert re.fullmatch(r"[a-z]+(-[a-z]+)*", err["code"]), where
    assert all(line.startswith(SIMULATED_BANNER) for line in proc.stderr.splitlines()), where
    return doc


def test_every_command_takes_format_json() -> None:
    for path in _commands(cctrain_group):
        opts = [p for p in _command(path).params if "--format" in getattr(p, "opts", ())]
        assert len(opts) == 1, f"cctrain {' '.join(path)} has no --format"
        (opt,) = opts
        assert isinstance(opt.type, click.Choice) and list(opt.type.choices) == ["text", "json"]
        assert opt.default == "text", path


def test_every_command_has_a_bad_input_case() -> None:
    assert sorted(BAD_INPUT) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_input_is_one_json_error(ws: Path, command: str) -> None:
    args, code, kind = BAD_INPUT[command]
    args = tuple(a.format(closed=_closed_address()) for a in args)
    proc = cctrain(*command.split(), *args, "--format", "json", cwd=ws, env=environment(ws / "h"))
    doc = _one_json_error(proc, code, kind)
    if command == "policy check":
        assert doc["error"]["problems"] and "\n" not in doc["error"]["message"]


def test_a_usage_error_before_the_command_is_json_too(ws: Path) -> None:
    proc = cctrain("uplod", "--format", "json", cwd=ws)
    _one_json_error(proc, 2, "no-such-command")
    proc = cctrain("policy", "check", "--format=json", cwd=ws)  # the file argument is missing
    _one_json_error(proc, 2, "missing-parameter")


def test_text_errors_stay_on_stderr(ws: Path) -> None:
    proc = cctrain("keygen", "Hospital A", cwd=ws)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: party id must match")


def test_results_are_one_json_document(ws: Path, tmp_path: Path) -> None:
    env = environment(ws / "h")
    keys = cctrain("keygen", "carol", "--out", str(tmp_path), "--format", "json", cwd=ws, env=env)
    assert keys.returncode == 0, keys.stderr
    assert json.loads(keys.stdout)["private_key"] == str(tmp_path / "carol.key")
    measure = cctrain("measure", "--format", "json", cwd=ws, env=env)
    assert re.fullmatch(r"[0-9a-f]{96}", json.loads(measure.stdout)["measurement"])
    verify = cctrain("policy", "verify", "policy.signed.json", "--format", "json", cwd=ws, env=env)
    doc = json.loads(verify.stdout)
    assert verify.returncode == 0 and doc["complete"] and "error" not in doc
    assert re.fullmatch(r"[0-9a-f]{64}", doc["digest"])  # full hashes in JSON
    sign = ("policy", "sign", "policy.json", "--key", "hospital-a.key", "--format", "json")
    signed = cctrain(*sign, "--envelope", str(tmp_path / "p.signed.json"), cwd=ws, env=env)
    assert signed.returncode == 0, signed.stderr
    assert json.loads(signed.stdout)["signed"] == ["hospital-a"]


def test_session_commands_in_json_against_a_live_enclave(tmp_path: Path) -> None:
    c = make_consortium(tmp_path)
    for keys in c.keys.values():
        keys.save(tmp_path)
    env = environment(tmp_path / "home")
    with running_enclave(c, tmp_path / "state") as (address, _app):
        session = ("--enclave", address, *SESSION, "--format", "json")
        attest = cctrain("attest", "enclave", *session, cwd=tmp_path, env=env)
        assert attest.returncode == 0, attest.stderr
        doc = json.loads(attest.stdout)  # the whole of stdout: no text line after it
        assert doc["claims"]["platform"] == "simulated"
        assert doc["policy_digest"] == c.signed.digest.hex()
        # the simulated banner: one line on stderr, nothing else (no raw warning, no log)
        assert attest.stderr.splitlines() == [attest.stderr.splitlines()[0]]
        assert attest.stderr.startswith(SIMULATED_BANNER)
        saved = cctrain(
            "attest", "enclave", *session, "--evidence-out", "ev", cwd=tmp_path, env=env
        )
        files = json.loads(saved.stdout)["evidence_files"]
        assert files == ["ev/evidence.bin", "ev/cert-0.der"], saved.stderr
        again = cctrain(*shlex.split(json.loads(saved.stdout)["verify_command"])[1:],
                        "--format", "json", cwd=tmp_path, env=env)  # fmt: skip
        assert json.loads(again.stdout)["verified"] is True, again.stdout
        (tmp_path / "taken").write_text("a file, not a folder")
        for folder, code in (("taken", "bad-parameter"), ("taken/ev", "unwritable")):
            refused = cctrain(
                "attest", "enclave", *session, "--evidence-out", folder, cwd=tmp_path, env=env
            )
            _one_json_error(refused, 2, code)
        status = cctrain("status", *session, cwd=tmp_path, env=env)
        assert json.loads(status.stdout)["phase"] == "collecting"
        start = cctrain("train", "start", *session, cwd=tmp_path, env=env)
        err = _one_json_error(start, 1, "protocol")["error"]
        assert "the start rule does not hold yet" in err["message"]


def test_watch_json_epochs_count_from_one_and_loss_is_null_when_not_released() -> None:
    step = TrainingProgress(
        phase="training", step=3, total_steps=10, epoch=0, loss=None, epsilon=None, detail=""
    )
    assert _progress_json(step) | {} == {
        "phase": "training",
        "step": 3,
        "total_steps": 10,
        "epoch": 1,
        "loss": None,
        "epsilon": None,
        "detail": "",
    }
    phase = TrainingProgress(
        phase="released", step=0, total_steps=0, epoch=0, loss=0.0, epsilon=1.5, detail=""
    )
    doc = _progress_json(phase)
    assert doc["epoch"] is None and doc["loss"] is None and doc["step"] is None
    assert doc["epsilon"] == 1.5


def test_format_json_is_found_where_click_would_take_it() -> None:
    assert wants_json(["status", "--format", "json"])
    assert wants_json(["status", "--format=json"])
    assert not wants_json(["status", "--format", "text"])
    assert not wants_json(["upload", "--", "--format", "json"])
    assert not wants_json(["status", "--format"])


def test_error_codes_are_stable_slugs() -> None:
    assert slug("PolicyFileError") == "policy-file"
    assert slug("EnclaveUnavailableError") == "enclave-unavailable"
    assert slug("MissingParameter") == "missing-parameter"
