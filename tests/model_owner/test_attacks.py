"""Attacks on the model-owner feature, one role at a time, against real code on loopback.

* the journal verifier: journals with package entries the enclave would never write, signed
  by an enclave key the test holds, are refused by the offline replay every party runs;
* hostile uploads: raw streams past the SDK's checks (a data provider's shard named like the
  package, the owner's data, a second package, a header committing to the pin over other
  bytes) are refused and leave nothing;
* the host: restarts between the package and training, plants partial uploads, rolls the
  journal back to before the package;
* the model owner's package format: what :func:`cctrain.package.parse_header` accepts must be
  what safetensors (which loads the initial weights in the enclave), torch and ``compile``
  accept, or a package is receipted, training starts on every provider's data, and only
  then does the run die (and ``cctrain model inspect`` crashes);
* the model owner's code failing: what every party, the journal and the log learn of it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cctrain.client import DataOwner, ModelOwner
from cctrain.errors import JournalError, ProtocolError
from cctrain.journal import JOURNAL_VERSION, STATE_FORMAT, Record, replay, sign_entry
from cctrain.package import (
    PACKAGE_SHARD_ID,
    UPLOAD_FORMAT,
    PackageError,
    build_package,
    read_package,
)
from cctrain.protocol import (
    HEADER_SIG_TAG,
    HEADER_VERSION,
    MANIFEST_SIG_TAG,
    RECEIPT_SIG_TAG,
    RECEIPT_VERSION,
    shard_commitment,
    sign_trailer,
)
from cctrain.v1 import enclave_pb2 as pb
from cctrain.v1 import journal_pb2 as jpb
from tests.consortium import Consortium, make_consortium, running_enclave
from tests.model_owner.test_model_owner import (
    HOSPITALS,
    LAYERS,
    OWNER,
    PLAN,
    _Capture,
    _marker_forms,
    make_package,
    owner_consortium,
    session,
    upload_data,
)

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

#: Stands for whatever the model owner keeps to itself (a module, class, tensor name, a
#: message of its code): nobody else, and not the host, may read it anywhere.
MARKER = "q7secret"
DP = {
    "enabled": True,
    "target_epsilon": 8.0,
    "delta": 1e-5,
    "max_grad_norm": 1.0,
    "noise_source": "insecure-fast",
}


# --------------------------------------------------------------------------- the verifier


class _Forger:
    """Writes journals the way the enclave does, signed by an enclave key the test holds: what
    every party's offline replay must refuse is what the enclave itself would never write."""

    def __init__(self, c: Consortium) -> None:
        self.c, self.policy = c, c.signed.policy
        self.key = Ed25519PrivateKey.generate()
        self.records: list[Record] = []
        self._append(
            jpb.JournalEntry(
                genesis=jpb.Genesis(
                    state_format=STATE_FORMAT,
                    run_id=bytes(16),
                    platform="simulated",
                    measurement=bytes(48),
                    hpke_public_key=bytes(32),
                    signing_public_key=self.key.public_key().public_bytes_raw(),
                    tls_spki_sha256=bytes(32),
                )
            )
        )

    def _append(self, entry: jpb.JournalEntry) -> Record:
        prev = self.records[-1] if self.records else None
        entry.version = JOURNAL_VERSION
        entry.seq = prev.seq + 1 if prev else 0
        entry.prev_sha256 = prev.sha256 if prev else bytes(32)
        entry.policy_digest = self.policy.digest
        rec = sign_entry(entry, self.key)
        self.records.append(rec)
        return rec

    def shard(
        self,
        party: str,
        shard_id: str,
        *,
        fmt: str = "npz",
        content: bytes = b"rows",
        rows: int = 100,
        signer: str | None = None,
    ) -> None:
        header = pb.ShardHeader(
            version=HEADER_VERSION,
            policy_digest=self.policy.digest,
            party_id=party,
            shard_id=shard_id,
            format=fmt,
            plaintext_size=len(content),
            chunk_size=1 << 16,
            chunk_count=1,
            nonce_prefix=bytes(7),
            encapsulated_key=bytes(32),
        ).SerializeToString()
        signing = self.c.keys[signer or party].signing_key
        prev = self.records[-1]
        plain = hashlib.sha256(content).digest()
        commitment = shard_commitment(bytes(32), plain)
        body = pb.ReceiptBody(
            version=RECEIPT_VERSION,
            policy_digest=self.policy.digest,
            party_id=party,
            shard_id=shard_id,
            commitment=commitment,
            package_sha256=plain if fmt == UPLOAD_FORMAT else b"",
            rows=rows,
            plaintext_size=len(content),
            header_sha256=hashlib.sha256(header).digest(),
            enclave_signing_key=self.key.public_key().public_bytes_raw(),
            journal_seq=prev.seq + 1,
            journal_prev_sha256=prev.sha256,
        ).SerializeToString()
        self._append(
            jpb.JournalEntry(
                shard_accepted=jpb.ShardAccepted(
                    header=pb.UploadHeader(
                        header=header, signature=signing.sign(HEADER_SIG_TAG + header)
                    ),
                    receipt=pb.SignedReceipt(
                        body=body, signature=self.key.sign(RECEIPT_SIG_TAG + body)
                    ),
                    trailer=sign_trailer(
                        signing,
                        header_sha256=hashlib.sha256(header).digest(),
                        plaintext_size=len(content),
                        chunk_count=1,
                        commitment=commitment,
                    ),
                )
            )
        )

    def close(self) -> None:
        shards = replay(self.records, self.policy).shards
        refs = [
            jpb.ShardRef(
                party_id=s.party_id,
                shard_id=s.shard_id,
                header_sha256=s.header_sha256,
                accepted_seq=s.seq,
            )
            for s in shards
        ]
        self._append(jpb.JournalEntry(uploads_closed=jpb.UploadsClosed(shards=refs)))


def _forged_run(c: Consortium, package: bytes, **package_kw: Any) -> _Forger:
    f = _Forger(c)
    for pid in HOSPITALS:
        f.shard(pid, "s")
    f.shard(
        OWNER, PACKAGE_SHARD_ID, fmt=UPLOAD_FORMAT, content=package, **{"rows": 0, **package_kw}
    )
    return f


def test_the_verifier_replays_an_honest_package_journal(tmp_path: Path) -> None:
    package = make_package()
    c = owner_consortium(tmp_path / "c", package)
    f = _forged_run(c, package)
    f.close()
    view = replay(f.records, c.signed.policy)
    assert view.phase == "training"
    assert view.model_package is not None and view.model_package.party_id == OWNER
    assert [s.party_id for s in view.data_shards] == list(HOSPITALS)


def _refused(f: _Forger, c: Consortium, match: str) -> None:
    with pytest.raises(JournalError, match=match):
        replay(f.records, c.signed.policy)


def test_the_verifier_refuses_package_entries_the_enclave_would_not_write(
    tmp_path: Path,
) -> None:
    package = make_package()
    c = owner_consortium(tmp_path / "c", package)
    # A package from a data provider (its own signed header).
    f = _Forger(c)
    f.shard("hospital-a", PACKAGE_SHARD_ID, fmt=UPLOAD_FORMAT, content=package, rows=0)
    _refused(f, c, "not the policy's model provider")
    # A package the policy does not pin.
    f = _forged_run(c, package + b"\0")
    _refused(f, c, "not the one the policy pins")
    # A package whose receipt claims rows (they would count in the DP sample rate).
    f = _forged_run(c, package, rows=5)
    _refused(f, c, "receipt claims 5 rows")
    # A second package under another id, and data from the model owner.
    f = _forged_run(c, package)
    f.shard(OWNER, "second", fmt=UPLOAD_FORMAT, content=package, rows=0)
    _refused(f, c, "model package named 'second'")
    f = _forged_run(c, package)
    f.shard(OWNER, "data")
    _refused(f, c, "'model-owner' is not a data provider")
    # A data shard named like the package, or a data shard in the package's format.
    f = _Forger(c)
    f.shard("hospital-a", PACKAGE_SHARD_ID)
    _refused(f, c, "shard id 'model-package' is not valid")
    # The same package twice (the one id: ALREADY_EXISTS at the enclave).
    f = _forged_run(c, package)
    f.shard(OWNER, PACKAGE_SHARD_ID, fmt=UPLOAD_FORMAT, content=package, rows=0)
    _refused(f, c, "already accepted")
    # A header signed by someone else than the party it names.
    f = _forged_run(c, package, signer="hospital-a")
    _refused(f, c, "not signed by the policy key of 'model-owner'")
    # Training started without the package.
    f = _Forger(c)
    for pid in HOSPITALS:
        f.shard(pid, "s")
    f.close()  # uploads closed over the hospitals' shards alone
    _refused(f, c, r"no shard from model-owner \(the model package\)")
    # A package under a policy that takes none.
    other = make_consortium(tmp_path / "other")
    f = _Forger(other)
    f.shard("hospital-a", PACKAGE_SHARD_ID, fmt=UPLOAD_FORMAT, content=package, rows=0)
    _refused(f, other, "not the policy's model provider")


# --------------------------------------------------------------------------- hostile uploads


def test_hostile_uploads_around_the_package_keep_nothing(tmp_path: Path) -> None:
    """Raw streams, past the SDK's own checks: a data provider's shard named like the package,
    the model owner's data, a second package under another id, a header that commits to the
    pin over other bytes or a cut of them. Each is refused and leaves nothing; the package then
    uploads (no quota was used up), and no other party learns anything about it."""
    from tests.ingest.conftest import write_shard
    from tests.ingest.test_bad_input import build_upload, expect_rejection

    bad, denied = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED
    package = make_package()
    (tmp_path / "model.pkg").write_bytes(package)
    c = owner_consortium(tmp_path / "c", package)
    shard = write_shard(tmp_path / "x.npz").read_bytes()
    with running_enclave(c, tmp_path / "state") as (address, app):
        with session(DataOwner, address, c, "hospital-a") as a:
            header, chunks = build_upload(a, shard, shard_id=PACKAGE_SHARD_ID)
            expect_rejection(a, [header, *chunks], bad, "the model package's")
            header, chunks = build_upload(a, package, shard_id=PACKAGE_SHARD_ID, fmt=UPLOAD_FORMAT)
            expect_rejection(a, [header, *chunks], denied, "is not the model provider")
        with session(ModelOwner, address, c, OWNER) as mo:
            header, chunks = build_upload(mo, shard, shard_id="data")
            expect_rejection(mo, [header, *chunks], denied, "is not a data_provider")
            header, chunks = build_upload(mo, package, shard_id="second", fmt=UPLOAD_FORMAT)
            expect_rejection(mo, [header, *chunks], bad, "a model package is uploaded as")
            other = bytearray(package)
            other[-1] ^= 1  # the last weight byte: the structure still parses
            for data in (bytes(other), package[:-4]):
                # The header no longer carries a hash: the enclave checks the pin on the
                # plain SHA-256 of what it decrypted, before it accepts anything.
                header, chunks = build_upload(
                    mo, data, shard_id=PACKAGE_SHARD_ID, fmt=UPLOAD_FORMAT
                )
                expect_rejection(
                    mo, [header, *chunks], grpc.StatusCode.FAILED_PRECONDITION, "the policy pins"
                )
            assert [p for p in (tmp_path / "state" / "uploads").rglob("*") if p.is_file()] == []
            assert list((tmp_path / "state" / "shards").iterdir()) == []
            mo.upload_package(tmp_path / "model.pkg", state_dir=tmp_path / OWNER)
        with session(DataOwner, address, c, "hospital-a") as a:
            status = a.unary("UploadStatus", pb.UploadStatusRequest(shard_id=PACKAGE_SHARD_ID))
            assert status.state == pb.UploadStatusResponse.UNKNOWN  # its own namespace
            assert a.receipts() == []
            with pytest.raises(ProtocolError, match="NOT_FOUND"):
                a.withdraw(PACKAGE_SHARD_ID, state_dir=tmp_path / "a")  # not its to withdraw
            assert app.state.view.model_package is not None
            seen = a.status().SerializeToString() + b"".join(r.raw for r in a.journal())
    for form in _marker_forms():
        assert form not in seen


# --------------------------------------------------------------------------- the host


def test_a_restart_between_package_and_training_loses_nothing(tmp_path: Path) -> None:
    """The host restarts the enclave after the package's receipt, and plants a partial upload
    of the package under its id (the owner's signed header, from the journal, and a prefix of
    the stored ciphertext are all it has): the restart keeps the package (the journal vouches
    for it), the planted partial changes nothing, and the run trains on the package once the
    data arrives."""
    package = make_package()
    (tmp_path / "model.pkg").write_bytes(package)
    c = owner_consortium(tmp_path / "c", package)
    state = tmp_path / "state"
    with running_enclave(c, state) as (address, app):
        with session(ModelOwner, address, c, OWNER) as mo:
            receipt = mo.upload_package(tmp_path / "model.pkg", state_dir=tmp_path / OWNER)
        header = app.state.view.model_package.header_raw
    stored = state / "shards" / f"{receipt.header_sha256.hex()}.ct"
    assert stored.exists()
    partial = state / "uploads" / OWNER / PACKAGE_SHARD_ID
    partial.mkdir(parents=True)
    (partial / "header.bin").write_bytes(header)
    (partial / "chunks.bin").write_bytes(stored.read_bytes()[: 1 << 12])
    (partial / "progress.json").write_text(
        json.dumps({"next_index": 0, "offset": 0, "updated": time.time()})
    )
    with running_enclave(c, state) as (address, app):
        assert app.state.view.model_package is not None
        upload_data(address, c, tmp_path)
        with session(ModelOwner, address, c, OWNER) as mo:
            status = mo.unary("UploadStatus", pb.UploadStatusRequest(shard_id=PACKAGE_SHARD_ID))
            assert status.state == pb.UploadStatusResponse.ACCEPTED
            assert mo.wait_for_phase(("released",), timeout=120) == "released"
            assert mo.fetch_model().manifest["model"]["name"] == "package"


def test_a_journal_rolled_back_before_the_package_is_refused_by_the_model_owner(
    tmp_path: Path,
) -> None:
    """The host restores the journal as it was before the package's entry (to make the owner
    upload it again, or to drop it from the run): the model owner's SDK remembers the head it
    saw with its receipt, and refuses the enclave."""
    from cctrain.journal import frame, read_journal_file
    from cctrain.memory import ForkOrRollbackError

    package = make_package()
    (tmp_path / "model.pkg").write_bytes(package)
    c = owner_consortium(tmp_path / "c", package)
    state = tmp_path / "state"
    with running_enclave(c, state) as (address, _):
        with session(ModelOwner, address, c, OWNER) as mo:
            mo.upload_package(tmp_path / "model.pkg", state_dir=tmp_path / OWNER)
    records = read_journal_file(state / "journal.log")
    assert records[-1].kind == "shard_accepted"
    (state / "journal.log").write_bytes(b"".join(frame(r.raw) for r in records[:-1]))
    with running_enclave(c, state) as (address, app):
        assert app.state.view.model_package is None
        assert list((state / "shards").iterdir()) == []  # no entry vouches for it: removed
        with pytest.raises(ForkOrRollbackError):
            with session(ModelOwner, address, c, OWNER) as mo:
                mo.upload_package(tmp_path / "model.pkg", state_dir=tmp_path / OWNER)


# --------------------------------------------------------------------------- the tensor names

#: A hidden width that no policy value has: the shapes it gives ([13, 4], [2, 13]) must not
#: leak either.
HIDDEN = 13
SHAPES = ([HIDDEN, 4], [HIDDEN], [2, HIDDEN])


@pytest.fixture(scope="module")
def sealed_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One DP run of a package whose module, and so its tensors, carry the marker: the model
    owner (the only recipient) fetches it; a hospital reads what every party may read."""
    tmp = tmp_path_factory.mktemp("sealed-names")
    layers = LAYERS.replace("self.body =", f"self.{MARKER} =").replace(
        "self.body(", f"self.{MARKER}("
    )
    plan = PLAN.replace("hidden=8", f"hidden={HIDDEN}")
    package = build_package({"plan.py": plan, "layers.py": layers})
    (tmp / "model.pkg").write_bytes(package)
    c = owner_consortium(
        tmp / "c",
        package,
        privacy=DP,
        release={"recipients": [OWNER], "metrics": ["steps"]},
    )
    capture = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        with running_enclave(c, tmp / "state") as (address, app):
            upload_data(address, c, tmp)
            with session(ModelOwner, address, c, OWNER) as mo:
                mo.upload_package(tmp / "model.pkg", state_dir=tmp / OWNER)
                assert mo.wait_for_phase(("released",), timeout=120) == "released"
                model = mo.fetch_model(save_to=tmp / "release.json")
            with session(DataOwner, address, c, "hospital-a") as a:
                seen = a.status().SerializeToString() + b"".join(r.raw for r in a.journal())
                verified = a.release_manifest()  # a party that is not a recipient
            key = app.state.keys.signing
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
    yield {
        "tmp": tmp,
        "c": c,
        "model": model,
        "seen": seen,
        "verified": verified,
        "logs": "\n".join(capture.lines).encode(),
        "sign": lambda m: key.sign(MANIFEST_SIG_TAG + m),
    }


def _lists(doc: Any) -> Iterator[list[Any]]:
    if isinstance(doc, list):
        yield doc
    for value in doc.values() if isinstance(doc, dict) else doc if isinstance(doc, list) else ():
        yield from _lists(value)


def test_the_host_never_sees_the_packages_tensor_names(sealed_run: dict[str, Any]) -> None:
    """Not in any file of the state directory (the journal, with the manifest, included), not
    in the log, not in what any party reads (status, manifest, GetJournal); and no shape of
    the package's tensors in the manifest."""
    forms = [MARKER.encode(), MARKER.encode().hex().encode()]
    files = [p for p in (sealed_run["tmp"] / "state").rglob("*") if p.is_file()]
    assert any(p.name == "journal.log" for p in files)
    for path in files:
        data = path.read_bytes()
        for form in forms:
            assert form not in data, path.name
    assert sealed_run["logs"], "no log records captured: the check would prove nothing"
    for form in forms:
        assert form not in sealed_run["logs"] and form not in sealed_run["seen"]
    manifest = sealed_run["verified"].manifest
    assert MARKER not in json.dumps(manifest)
    assert not [shape for shape in _lists(manifest) if shape in SHAPES]


def test_the_certificate_commits_to_names_only_the_recipients_read(
    sealed_run: dict[str, Any],
) -> None:
    cert = sealed_run["verified"].dp_certificate
    assert cert["tensor_names"] == "sealed"
    assert "covers" not in cert and "unchanged_from_initialisation" not in cert
    assert len(cert["tensor_names_sha256"]) == 64
    model = sealed_run["model"]
    assert model.dp_tensors.covers == tuple(
        sorted(f"{MARKER}.{i}.{p}" for i in (0, 2) for p in ("bias", "weight"))
    )
    assert model.dp_tensors.unchanged_from_initialisation == ("marker",)
    assert f"{MARKER}.0.weight" in model.state_dict()


def _split(weights: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", weights[:8])
    return json.loads(weights[8 : 8 + n]), weights[8 + n :]


def _joined(header: dict[str, Any], buffer: bytes) -> bytes:
    return _join(json.dumps(header), buffer)


def _names_meta(header: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(header["__metadata__"]["dp_tensor_names"])
    return meta


def _set_meta(header: dict[str, Any], meta: dict[str, Any]) -> None:
    header["__metadata__"]["dp_tensor_names"] = json.dumps(meta)


def _rename(header: dict[str, Any], buffer: bytes) -> bytes:
    """Rename a covered tensor in the weights and in the sealed names alike."""
    old, new = f"{MARKER}.0.bias", f"{MARKER}.0.renamed"
    header[new] = header.pop(old)
    meta = _names_meta(header)
    meta["covers"] = sorted(new if n == old else n for n in meta["covers"])
    _set_meta(header, meta)
    return _joined(header, buffer)


def _relabel(header: dict[str, Any], buffer: bytes) -> bytes:
    """Move the frozen buffer into the covered list (weights unchanged)."""
    meta = _names_meta(header)
    meta["covers"] = sorted([*meta["covers"], "marker"])
    meta["unchanged_from_initialisation"] = []
    _set_meta(header, meta)
    return _joined(header, buffer)


def _extra(header: dict[str, Any], buffer: bytes) -> bytes:
    header["extra"] = {"dtype": "F32", "shape": [1], "data_offsets": [len(buffer), len(buffer) + 4]}
    return _joined(header, buffer + bytes(4))


def _dropped(header: dict[str, Any], buffer: bytes) -> bytes:
    tensors = safetensors_torch.load(_joined(header, buffer))
    del tensors["marker"]
    out: bytes = safetensors_torch.save(tensors, metadata=header["__metadata__"])
    return out


def _no_names(header: dict[str, Any], buffer: bytes) -> bytes:
    del header["__metadata__"]["dp_tensor_names"]
    return _joined(header, buffer)


def _salt(header: dict[str, Any], buffer: bytes) -> bytes:
    meta = _names_meta(header)
    meta["salt"] = ("0" if meta["salt"][0] != "0" else "1") + meta["salt"][1:]
    _set_meta(header, meta)
    return _joined(header, buffer)


TAMPERED = {
    "renamed-in-weights-and-names": (_rename, "commits to"),
    "names-relabelled": (_relabel, "commits to"),
    "one-extra-tensor": (_extra, "unaccounted ['extra']"),
    "one-tensor-dropped": (_dropped, "missing ['marker']"),
    "names-removed": (_no_names, "carry no dp_tensor_names"),
    "salt-changed": (_salt, "commits to"),
}


def test_the_real_weights_match_their_sealed_certificate(sealed_run: dict[str, Any]) -> None:
    from cctrain.dpcheck import weights_problems

    model = sealed_run["model"]
    assert weights_problems(model.release.dp_certificate, model.weights) == []


@pytest.mark.parametrize("tamper", sorted(TAMPERED))
def test_weights_that_disagree_with_the_sealed_certificate_are_refused(
    sealed_run: dict[str, Any], tamper: str
) -> None:
    """Real released weights, edited: each refused by the recipient's check for its reason."""
    from cctrain.dpcheck import weights_problems

    model = sealed_run["model"]
    edit, why = TAMPERED[tamper]
    weights = edit(*_split(model.weights))
    safetensors_torch.load(weights)  # still a well-formed safetensors file
    problems = weights_problems(model.release.dp_certificate, weights)
    assert len(problems) == 1 and why in problems[0], problems


def test_a_flipped_commitment_is_refused(sealed_run: dict[str, Any]) -> None:
    from cctrain.dpcheck import weights_problems

    model = sealed_run["model"]
    cert = dict(model.release.dp_certificate)
    digest = cert["tensor_names_sha256"]
    cert["tensor_names_sha256"] = ("0" if digest[0] != "0" else "1") + digest[1:]
    problems = weights_problems(cert, model.weights)
    assert len(problems) == 1 and "commits to (tensor_names_sha256)" in problems[0]


def _resigned(sealed_run: dict[str, Any], cert: dict[str, Any]) -> Any:
    from cctrain.release import canonical_json, verify_manifest

    doc = copy.deepcopy(sealed_run["verified"].manifest) | {"dp_certificate": cert}
    raw = canonical_json(doc)
    return verify_manifest(
        raw, sealed_run["sign"](raw), policy=sealed_run["c"].signed.policy, allow_simulated=True
    )


def test_a_package_certificate_must_be_sealed(sealed_run: dict[str, Any]) -> None:
    """Signed by the enclave's own key, so only the privacy check can catch it: a package
    run's certificate that lists its names, or lists them beside the commitment, or carries a
    malformed commitment, is refused by every verifier."""
    from cctrain.errors import ReleaseError

    sealed = dict(sealed_run["verified"].dp_certificate)
    tensors = sealed_run["model"].dp_tensors
    names = {
        "covers": list(tensors.covers),
        "unchanged_from_initialisation": list(tensors.unchanged_from_initialisation),
    }
    listed = {k: v for k, v in sealed.items() if k != "tensor_names_sha256"}
    cases = [
        (listed | names | {"tensor_names": "listed"}, "tensor_names: got 'listed', want 'sealed'"),
        (sealed | names, "lists tensor names in plain text"),
        (sealed | {"tensor_names_sha256": "AB" * 32}, "tensor_names_sha256: got"),
        ({k: v for k, v in sealed.items() if k != "tensor_names"}, "tensor_names: got None"),
    ]
    _resigned(sealed_run, sealed)  # the unedited certificate verifies
    for cert, why in cases:
        with pytest.raises(ReleaseError, match="privacy claims disagree") as info:
            _resigned(sealed_run, cert)
        assert why in str(info.value)


def test_release_verify_shows_the_names_to_the_recipient_only(sealed_run: dict[str, Any]) -> None:
    from click.testing import CliRunner

    from cctrain.cli.main import main

    c, bundle = sealed_run["c"], str(sealed_run["tmp"] / "release.json")
    key_file, _ = c.keys[OWNER].save(sealed_run["tmp"] / "keys")
    args = ["release", "verify", bundle, "--policy", str(c.policy_path), "--allow-simulated"]
    anyone = CliRunner().invoke(main, args)
    assert anyone.exit_code == 0, anyone.output
    assert "named only inside the sealed weights" in anyone.output
    assert MARKER not in anyone.output
    owner = CliRunner().invoke(main, [*args, "--key", str(key_file)])
    assert owner.exit_code == 0, owner.output
    assert f"covers: {MARKER}.0.bias, {MARKER}.0.weight" in owner.output
    assert "released at their initial value: marker" in owner.output


# --------------------------------------------------------------------------- the package format

LINEAR = "def build_model(shape, n):\n    import torch\n    return torch.nn.Linear(shape[0], n)\n"


def _base() -> tuple[dict[str, object], bytes]:
    good = build_package({"plan.py": LINEAR}, safetensors_torch.save({"a": torch.zeros(2)}))
    (n,) = struct.unpack("<Q", good[:8])
    return json.loads(good[8 : 8 + n]), good[8 + n :]


def _join(header_text: str, buffer: bytes) -> bytes:
    raw = header_text.encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + buffer


def _differentials() -> list[tuple[str, bytes]]:
    header, buffer = _base()
    meta = dict(header["__metadata__"])  # type: ignore[call-overload]
    out = []
    # A lone surrogate escaped in the header JSON: Python decodes it, serde_json refuses it.
    files = json.dumps({"plan.py": LINEAR + "# \ud800\n"}, ensure_ascii=False)
    out.append(
        ("outer lone surrogate", json.dumps({**header, "__metadata__": {**meta, "files": files}}))
    )
    # ... escaped once more, inside the files JSON: the source itself is not UTF-8 text.
    files = json.dumps({"plan.py": LINEAR + "# \ud800\n"})
    out.append(
        ("source lone surrogate", json.dumps({**header, "__metadata__": {**meta, "files": files}}))
    )
    # "-0" is the integer 0 to Python, a float to serde_json.
    out.append(("negative zero", json.dumps(header).replace("[0, 8]", "[-0, 8]")))
    # Empty tensors whose other dimensions overflow safetensors' or torch's size arithmetic.
    for shape in ([1 << 39, 1 << 39, 0], [0, 1 << 39, 1 << 39]):
        empty = {"dtype": "F32", "shape": shape, "data_offsets": [8, 8]}
        out.append((f"empty {shape}", json.dumps({**header, "z": empty})))
    return [(name, _join(text, buffer)) for name, text in out]


@pytest.mark.parametrize(
    ("name", "data"), _differentials(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_what_the_parser_accepts_safetensors_and_python_accept(name: str, data: bytes) -> None:
    try:
        safetensors_torch.load(data)
        loads = True
    except Exception:  # noqa: BLE001 - any refusal
        loads = False
    try:
        info = read_package(data)
    except PackageError:
        return  # refused, for a reason that names the field
    info.summary()  # what `cctrain model inspect` prints
    for src in info.files.values():
        compile(src, "<check>", "exec", dont_inherit=True)
    assert loads, f"{name}: accepted by parse_header, refused by safetensors"


def test_the_parser_still_accepts_an_honest_package() -> None:
    header, buffer = _base()
    data = _join(json.dumps(header), buffer)
    assert [t.name for t in read_package(data).tensors] == ["a"]
    empty = {"dtype": "F32", "shape": [0, 1 << 20, 1 << 20], "data_offsets": [8, 8]}
    assert len(read_package(_join(json.dumps({**header, "z": empty}), buffer)).tensors) == 2


@pytest.mark.parametrize("dtype", [["F32"], {"F32": 1}])
def test_a_tensor_table_of_the_wrong_types_is_refused_not_a_crash(dtype: object) -> None:
    """An unhashable dtype raised TypeError: a traceback from `cctrain model inspect`, an
    INTERNAL error ("could not store the upload") from the enclave."""
    from cctrain_enclave.package import PackageParser

    header, buffer = _base()
    entry = dict(header["a"])  # type: ignore[call-overload]
    data = _join(json.dumps({**header, "a": {**entry, "dtype": dtype}}), buffer)
    with pytest.raises(PackageError, match="dtype"):
        read_package(data)
    parser = PackageParser(max_bytes=1 << 20)
    with pytest.raises(Exception, match="dtype") as err:
        parser.feed(data)
    assert type(err.value).__name__ == "ShardError"


@pytest.mark.parametrize("table", [{"a": [1, 2]}, {"a": {"data_offsets": 5}}])
def test_malformed_initial_weights_are_refused_not_a_crash(table: object) -> None:
    raw = json.dumps(table).encode()
    with pytest.raises(PackageError):
        build_package({"plan.py": LINEAR}, struct.pack("<Q", len(raw)) + raw)


# --------------------------------------------------------------------------- the model's code


def _failed_run(
    tmp: Path, files: dict[str, str], *, dp: bool, timeout: float = 60
) -> tuple[dict[str, str], bytes]:
    """Run a consortium on a package that fails: (each party's status detail, everything the
    host holds: state files, the log)."""
    package = build_package(files)
    (tmp / "model.pkg").write_bytes(package)
    extra: dict[str, Any] = {}
    if dp:
        extra = {"privacy": DP, "release": {"recipients": [OWNER], "metrics": ["steps"]}}
    c = owner_consortium(tmp / "c", package, **extra)
    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    details: dict[str, str] = {}
    try:
        with running_enclave(c, tmp / "state") as (address, _):
            upload_data(address, c, tmp)
            with session(ModelOwner, address, c, OWNER) as mo:
                mo.upload_package(tmp / "model.pkg", state_dir=tmp / OWNER)
                deadline = time.monotonic() + timeout
                while mo.status().phase not in ("failed", "released"):
                    assert time.monotonic() < deadline, f"still {mo.status().phase}"
                    time.sleep(0.2)
                assert mo.status().phase == "failed"
                details[OWNER] = mo.status().detail
            for pid in HOSPITALS:
                with session(DataOwner, address, c, pid) as o:
                    details[pid] = o.status().detail
                    journal = b"".join(r.raw for r in o.journal())
    finally:
        root.removeHandler(capture)
    host = journal + "\n".join(capture.lines).encode()
    for path in (tmp / "state").rglob("*"):
        if path.is_file():
            host += path.read_bytes()
    return details, host


LAYERS_SECRET = LAYERS.replace("class Net", f"class Net_{MARKER}").replace(
    "return self.body", f"raise RuntimeError('{MARKER} detail')\n        return self.body"
)
PLAN_SECRET = PLAN.replace("layers.Net(", f"layers.Net_{MARKER}(")


@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp"])
def test_a_failing_forward_tells_no_other_party_about_the_model(tmp_path: Path, dp: bool) -> None:
    """The model owner's code raises in ``forward``. Without DP its message is withheld from
    everyone; under DP the enclave's own model check (on a synthetic batch) quoted it to
    every party, the journal and the log."""
    details, host = _failed_run(
        tmp_path, {"plan.py": PLAN_SECRET, "layers.py": LAYERS_SECRET}, dp=dp
    )
    for pid in HOSPITALS:
        assert "run failed while training" in details[pid]
        assert MARKER not in details[pid], details[pid]
    assert MARKER.encode() not in host


def test_a_package_without_the_entry_module_names_none_of_its_modules(tmp_path: Path) -> None:
    """The policy's module is not in the package: the refusal listed the package's modules
    (its file names) to every party."""
    details, host = _failed_run(tmp_path, {f"{MARKER}.py": PLAN, "layers.py": LAYERS}, dp=False)
    for pid in HOSPITALS:
        assert MARKER not in details[pid], details[pid]
    assert MARKER.encode() not in host
    assert MARKER in details[OWNER]  # the model owner is told


def test_a_buffer_written_in_forward_under_dp_is_named_to_the_model_owner_only(
    tmp_path: Path,
) -> None:
    layers = LAYERS.replace('"marker"', f'"{MARKER}"').replace(
        "return self.body(x.flatten(1))",
        f"self.{MARKER}.add_(1.0)\n        return self.body(x.flatten(1))",
    )
    details, host = _failed_run(tmp_path, {"plan.py": PLAN, "layers.py": layers}, dp=True)
    for pid in HOSPITALS:
        assert "run failed while training" in details[pid]
        assert MARKER not in details[pid], details[pid]
    assert MARKER.encode() not in host
    assert MARKER in details[OWNER] and "DP" in details[OWNER]


def test_a_package_raising_through_cctrain_code_is_withheld(tmp_path: Path) -> None:
    """``forward`` calls a cctrain function that raises cctrain's PolicyError quoting its
    argument (here a value of the batch): the enclave trusted the message because the last
    frame is its own code, as it would not for a custom model."""
    layers = LAYERS.replace(
        "return self.body(x.flatten(1))",
        "if not self.training:\n"
        "            from cctrain.policy import parse_policy\n"
        "            parse_policy(('{\"%s%d\": 1}' % ('"
        + MARKER
        + "', int(x.numel()))).encode(), 'json')\n"
        "        return self.body(x.flatten(1))",
    )
    details, host = _failed_run(tmp_path, {"plan.py": PLAN, "layers.py": layers}, dp=False)
    for party, detail in details.items():
        assert "PolicyError (message withheld" in detail, (party, detail)
        assert MARKER not in detail
    assert MARKER.encode() not in host


def test_a_package_that_exits_at_import_fails_the_run(tmp_path: Path) -> None:
    """Module code that calls ``sys.exit`` (argparse at import does, on arguments it does not
    know): the training thread died without a word and the run stayed 'training' forever."""
    plan = "import argparse\nargparse.ArgumentParser().parse_args(['--no-such-flag'])\n" + PLAN
    details, _ = _failed_run(tmp_path, {"plan.py": plan, "layers.py": LAYERS}, dp=False, timeout=30)
    assert "run failed while training: SystemExit" in details["hospital-a"]
