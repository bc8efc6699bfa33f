"""Evidence from a real enclave, checked against the wrong nonce, policy, TLS key or root."""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cctrain.attestation import simulated as sim
from cctrain.client import DataOwner, SimulatedEvidenceWarning, check_attestation
from cctrain.errors import AttestationError, EvidenceValidationError, EvidenceVerificationError
from cctrain.policy import SignedPolicy
from cctrain.v1 import enclave_pb2 as pb
from tests.consortium import Consortium, make_consortium


def attest_raw(owner: DataOwner, nonce: bytes) -> pb.AttestResponse:
    resp: pb.AttestResponse = owner.unary("Attest", pb.AttestRequest(nonce=nonce))
    return resp


def check(
    resp: pb.AttestResponse, *, signed: SignedPolicy, nonce: bytes, tls: bytes, allow: bool = True
) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulatedEvidenceWarning)
        return check_attestation(
            resp, signed_policy=signed, nonce=nonce, tls_certificate_der=tls, allow_simulated=allow
        )


def test_genuine_evidence_verifies(owner: DataOwner, consortium: Consortium) -> None:
    nonce = os.urandom(32)
    resp = attest_raw(owner, nonce)
    attested = check(
        resp, signed=consortium.signed, nonce=nonce, tls=owner.enclave.tls_certificate_der
    )
    assert attested.claims.platform == "simulated"
    assert attested.claims.signer == "simulated"


def test_evidence_bound_to_another_nonce(owner: DataOwner, consortium: Consortium) -> None:
    resp = attest_raw(owner, os.urandom(32))
    with pytest.raises(EvidenceValidationError, match="report_data: got"):
        check(
            resp,
            signed=consortium.signed,
            nonce=os.urandom(32),
            tls=owner.enclave.tls_certificate_der,
        )


def test_evidence_for_another_policy(
    owner: DataOwner, consortium: Consortium, tmp_path: Any
) -> None:
    other = make_consortium(tmp_path / "other")
    nonce = os.urandom(32)
    resp = attest_raw(owner, nonce)
    with pytest.raises(AttestationError, match="enclave serves policy"):
        check(resp, signed=other.signed, nonce=nonce, tls=owner.enclave.tls_certificate_der)
    # A host that also rewrites the advertised digest is caught by the hardware-signed binding.
    resp.policy_digest = other.signed.digest
    with pytest.raises(EvidenceValidationError, match="report_data: got"):
        check(resp, signed=other.signed, nonce=nonce, tls=owner.enclave.tls_certificate_der)


def _other_cert() -> bytes:
    from cctrain_enclave.keys import TlsIdentity

    return TlsIdentity.generate(["127.0.0.1"]).cert_der


def test_evidence_bound_to_another_tls_key(owner: DataOwner, consortium: Consortium) -> None:
    nonce = os.urandom(32)
    resp = attest_raw(owner, nonce)
    mitm = _other_cert()
    with pytest.raises(AttestationError, match="not the one this connection uses"):
        check(resp, signed=consortium.signed, nonce=nonce, tls=mitm)
    resp.tls_certificate = mitm  # a proxy that also swaps the advertised certificate
    with pytest.raises(EvidenceValidationError, match="report_data: got"):
        check(resp, signed=consortium.signed, nonce=nonce, tls=mitm)


def test_evidence_with_swapped_enclave_key(owner: DataOwner, consortium: Consortium) -> None:
    nonce = os.urandom(32)
    resp = attest_raw(owner, nonce)
    resp.hpke_public_key = os.urandom(32)  # a host trying to get shards encrypted to its own key
    with pytest.raises(EvidenceValidationError, match="report_data: got"):
        check(resp, signed=consortium.signed, nonce=nonce, tls=owner.enclave.tls_certificate_der)


def test_evidence_under_untrusted_root(owner: DataOwner, consortium: Consortium) -> None:
    nonce = os.urandom(32)
    resp = attest_raw(owner, nonce)
    report = sim.parse_report(resp.evidence.report)
    # Re-sign the same claims with a chip key certified by a root that is not the pinned one.
    rogue_root = Ed25519PrivateKey.generate()
    chip = Ed25519PrivateKey.generate()
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([]))
        .public_key(chip.public_key())
        .serial_number(1)
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=1))
        .sign(rogue_root, None)
    )
    resp.evidence.report = sim.build_report(
        chip_key=chip,
        measurement=report.measurement,
        report_data=report.report_data,
        debug=False,
        timestamp=1,
    )
    del resp.evidence.certificates[:]
    resp.evidence.certificates.append(cert.public_bytes(serialization.Encoding.DER))
    with pytest.raises(EvidenceVerificationError, match="untrusted root"):
        check(resp, signed=consortium.signed, nonce=nonce, tls=owner.enclave.tls_certificate_der)


def test_flipped_byte_in_evidence(owner: DataOwner, consortium: Consortium) -> None:
    nonce = os.urandom(32)
    resp = attest_raw(owner, nonce)
    raw = bytearray(resp.evidence.report)
    raw[0x20] ^= 1  # inside the measurement
    resp.evidence.report = bytes(raw)
    with pytest.raises(EvidenceVerificationError, match="report signature does not verify"):
        check(resp, signed=consortium.signed, nonce=nonce, tls=owner.enclave.tls_certificate_der)


def test_simulated_refused_without_caller_opt_in(owner: DataOwner, consortium: Consortium) -> None:
    nonce = os.urandom(32)
    resp = attest_raw(owner, nonce)
    with pytest.raises(AttestationError, match="refusing"):
        check(
            resp,
            signed=consortium.signed,
            nonce=nonce,
            tls=owner.enclave.tls_certificate_der,
            allow=False,
        )


def test_simulated_refused_when_policy_forbids(owner: DataOwner, tmp_path: Any) -> None:
    strict = make_consortium(
        tmp_path / "strict",
        attestation={
            "platforms": ["sev-snp"],
            "allow_simulated": False,
            "reference": {"sev-snp": {"measurements": ["ab" * 48]}},
        },
    )
    nonce = os.urandom(32)
    resp = attest_raw(owner, nonce)
    resp.policy_digest = strict.signed.digest
    with pytest.raises(AttestationError, match="policy does not allow"):
        check(resp, signed=strict.signed, nonce=nonce, tls=owner.enclave.tls_certificate_der)


def test_wrong_measurement_refused(owner: DataOwner, tmp_path: Any, consortium: Consortium) -> None:
    nonce = os.urandom(32)
    resp = attest_raw(owner, nonce)
    pinned_elsewhere = make_consortium(
        tmp_path / "pinned",
        attestation={
            "platforms": ["simulated"],
            "allow_simulated": True,
            "reference": {"simulated": {"measurements": ["00" * 48]}},
        },
    )
    resp.policy_digest = pinned_elsewhere.signed.digest
    with pytest.raises(EvidenceValidationError) as info:
        check(
            resp, signed=pinned_elsewhere.signed, nonce=nonce, tls=owner.enclave.tls_certificate_der
        )
    # every mismatch at once: the measurement and the (policy-bound) report_data
    assert any(m.startswith("measurement: got") for m in info.value.mismatches)
    assert any(m.startswith("report_data: got") for m in info.value.mismatches)


def test_data_owner_warns_loudly_on_simulated(enclave: Any, consortium: Consortium) -> None:
    with pytest.warns(SimulatedEvidenceWarning, match="proves NOTHING"):
        DataOwner(
            enclave[0],
            policy=consortium.signed,
            key=consortium.keys["hospital-b"],
            allow_simulated=True,
        ).close()
