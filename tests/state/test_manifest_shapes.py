"""A manifest signed by the enclave key but of the wrong JSON shape is refused, never a crash.

The enclave builds its manifests itself, so a wrong shape means a bug or a forged key; either
way every reader (the enclave replaying its journal, a party's audit, a recipient's offline
``release verify``) must answer with its own error naming the manifest, not an
AttributeError. Each value of the real manifest, top level and one level down, is replaced
by values of every other JSON type, re-signed with the run's own enclave key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cctrain.errors import JournalError, ReleaseError
from cctrain.journal import apply, read_journal_file, replay, sign_entry
from cctrain.protocol import MANIFEST_SIG_TAG
from cctrain.release import verify_manifest
from cctrain.v1 import journal_pb2 as jpb
from tests.consortium import RECIPIENT, make_consortium, running_enclave
from tests.state.conftest import DP, SHORT_TRAINING, upload_all, wait_phase

OTHER_TYPES: tuple[Any, ...] = (None, True, 7, -1.5, "x", "", [], [1, "a"], {}, {"a": [1]})


def _variants(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for key, value in doc.items():
        for other in OTHER_TYPES:
            if type(other) is not type(value):
                yield key, {**doc, key: other}
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                for other in OTHER_TYPES:
                    if type(other) is not type(subvalue):
                        yield f"{key}.{sub}", {**doc, key: {**value, sub: other}}


def test_a_signed_manifest_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    c = make_consortium(
        tmp_path / "c",
        privacy=DP,
        training=SHORT_TRAINING,
        release={"recipients": [RECIPIENT], "metrics": ["samples"], "non_private": ["samples"]},
    )
    state = tmp_path / "state"
    with running_enclave(c, state) as (address, app):
        upload_all(address, c, tmp_path / "owners")
        wait_phase(address, c, "released")
        key = app.state.keys.signing
    policy = c.signed.policy
    records = read_journal_file(state / "journal.log")
    at = next(i for i, r in enumerate(records) if r.kind == "manifest")
    before = replay(records[:at], policy)
    real = records[at].entry
    doc = json.loads(real.manifest.manifest)

    def signed(manifest: bytes) -> tuple[bytes, jpb.JournalEntry]:
        sig = key.sign(MANIFEST_SIG_TAG + manifest)
        entry = jpb.JournalEntry()
        entry.CopyFrom(real)
        entry.manifest.manifest, entry.manifest.manifest_signature = manifest, sig
        return sig, entry

    # The control: the real manifest, re-signed, is accepted by both readers.
    sig, entry = signed(real.manifest.manifest)
    assert apply(before, sign_entry(entry, key), policy).phase == "awaiting_approval"
    verify_manifest(real.manifest.manifest, sig, policy=policy, allow_simulated=True)

    refused_by_replay: set[str] = set()
    refused_by_verify: set[str] = set()
    tried = 0
    for where, variant in _variants(doc):
        manifest = json.dumps(variant).encode()
        sig, entry = signed(manifest)
        try:
            apply(before, sign_entry(entry, key), policy)
        except JournalError as exc:
            assert "manifest" in str(exc)
            refused_by_replay.add(where)
        except Exception as exc:  # the failure this test looks for
            raise AssertionError(f"replay crashed on {where}: {exc!r}") from None
        try:
            verify_manifest(manifest, sig, policy=policy, allow_simulated=True)
        except ReleaseError:
            refused_by_verify.add(where)
        except Exception as exc:
            raise AssertionError(f"verify_manifest crashed on {where}: {exc!r}") from None
        tried += 1
    assert tried > 150
    # What binds the manifest to this run and policy is refused by each reader whenever
    # it is of the wrong type (other fields are checked where they are used).
    assert {w.split(".")[0] for w in refused_by_replay} >= {
        "type",
        "policy_digest",
        "enclave",
        "run_id",
        "journal",
        "recipients",
        "receipts",
        "uploads_closed",
        "dp_certificate",
        "non_private_outputs",
    }
    assert {w.split(".")[0] for w in refused_by_verify} >= {
        "type",
        "policy_digest",
        "enclave",
        "evidence",
        "evidence_sha256",
        "model_sha256",
        "release_rule",
        "receipts",
        "uploads_closed",
        "dp_certificate",
    }
    assert "release_rule.max_releases" in refused_by_verify  # true is not 1


def test_hostile_json_in_a_manifest_is_refused_not_a_crash(tmp_path: Path) -> None:
    """What swapping types misses: a number too large for a float, nesting deeper than the
    decoder recurses, an enclave key of the wrong length. Signed by the enclave key where the
    reader checks signatures first (replay); unsigned where it does not need to be (a host's
    GetStatus, a release bundle handed to ``release verify``)."""
    from cctrain.errors import CctrainError

    c = make_consortium(
        tmp_path / "c",
        privacy=DP,
        training=SHORT_TRAINING,
        release={"recipients": [RECIPIENT], "metrics": ["samples"], "non_private": ["samples"]},
    )
    state = tmp_path / "state"
    with running_enclave(c, state) as (address, app):
        upload_all(address, c, tmp_path / "owners")
        wait_phase(address, c, "released")
        key = app.state.keys.signing
    policy = c.signed.policy
    records = read_journal_file(state / "journal.log")
    at = next(i for i, r in enumerate(records) if r.kind == "manifest")
    before = replay(records[:at], policy)
    real = records[at].entry
    doc = json.loads(real.manifest.manifest)

    def replayed(manifest: bytes) -> None:
        entry = jpb.JournalEntry()
        entry.CopyFrom(real)
        entry.manifest.manifest = manifest
        entry.manifest.manifest_signature = key.sign(MANIFEST_SIG_TAG + manifest)
        apply(before, sign_entry(entry, key), policy)

    def verified(manifest: bytes, signed: bool) -> None:
        sig = key.sign(MANIFEST_SIG_TAG + manifest) if signed else b"\x00" * 64
        verify_manifest(manifest, sig, policy=policy, allow_simulated=True)

    huge = json.dumps({**doc, "dp_certificate": {**doc["dp_certificate"], "delta": 10**400}})
    deep = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    short_key = json.dumps({**doc, "enclave": {**doc["enclave"], "signing_key": "abcd"}})
    cases = [
        ("replay, δ = 10**400", lambda: replayed(huge.encode())),
        ("verify, δ = 10**400", lambda: verified(huge.encode(), True)),
        ("replay, nested 100000 deep", lambda: replayed(deep)),
        ("verify, nested 100000 deep", lambda: verified(deep, False)),
        ("verify, a 2-byte enclave key", lambda: verified(short_key.encode(), False)),
    ]
    for what, case in cases:
        try:
            case()
        except CctrainError:
            continue
        except Exception as exc:  # the failure this test looks for
            raise AssertionError(f"{what}: {type(exc).__name__}: {exc!s:.80}") from None
        raise AssertionError(f"{what}: accepted")
