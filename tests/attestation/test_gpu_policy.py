"""Composite CPU+GPU attestation under the policy's ``attestation.gpu``.

The GPU evidence is real (NVIDIA Hopper reports from the vectors, chained to NVIDIA's pinned
root); the CPU claims are built for the test, since binding a real CPU quote to a real GPU
report needs both devices in one session. What is checked: the mode (forbidden, optional,
required), each GPU's verification and reference values, and its binding to the CPU nonce.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import pytest

from cctrain.attestation.base import Evidence, VerifiedClaims
from cctrain.attestation.nvidia_gpu.composite import gpu_nonce
from cctrain.attestation.pipeline import read_evidence_bytes, verify_gpus_for_policy
from cctrain.errors import EvidenceValidationError, PolicyError
from cctrain.policy import parse_policy
from tests.consortium import policy_document

NOW = dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc)
REPORT, CHAIN = "nvtrust_hopper_report.hex", "nvtrust_hopper_cert_chain.pem"
NONCE = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"


class _Policy:
    def __init__(self, gpu: str, reference: dict[str, Any] | None = None) -> None:
        self.attestation = {"gpu": gpu, "allow_debug": False, "platforms": ["sev-snp"]}
        self._reference = reference or {}

    def reference_for(self, platform: str) -> dict[str, Any]:
        return self._reference if platform == "nvidia-gpu" else {}


def _cpu(report_data: bytes = hashlib.sha512(b"cpu").digest()) -> VerifiedClaims:
    return VerifiedClaims(
        platform="sev-snp", measurement=b"\x01" * 48, report_data=report_data, debug=False,
        signer="vcek",
    )  # fmt: skip


def _gpu(vectors_dir: Path, flip: int | None = None) -> Evidence:
    d = vectors_dir / "nvidia-gpu"
    raw = bytearray(read_evidence_bytes((d / REPORT).read_bytes()))
    if flip is not None:
        raw[flip] ^= 0x01
    return Evidence("nvidia-gpu", bytes(raw), certificates=((d / CHAIN).read_bytes(),))


def test_the_mode_decides_whether_gpus_may_or_must_be_there(vectors_dir: Path) -> None:
    for unknown in ("Required", "require", True):  # fails closed, not open (found by review)
        with pytest.raises(EvidenceValidationError, match="attestation.gpu: got"):
            verify_gpus_for_policy(_cpu(), [], _Policy(unknown))  # type: ignore[arg-type]
    assert verify_gpus_for_policy(_cpu(), [], _Policy("forbidden")) == []
    assert verify_gpus_for_policy(_cpu(), [], _Policy("optional")) == []
    with pytest.raises(EvidenceValidationError, match='attestation.gpu is "required"'):
        verify_gpus_for_policy(_cpu(), [], _Policy("required"))
    with pytest.raises(EvidenceValidationError, match='attestation.gpu is "forbidden"'):
        verify_gpus_for_policy(_cpu(), [_gpu(vectors_dir)], _Policy("forbidden"), now=NOW)


@pytest.mark.vectors
@pytest.mark.parametrize("mode", ["optional", "required"])
def test_a_real_gpu_verifies_and_is_refused_unbound_to_this_cpu(
    vectors_dir: Path, mode: str
) -> None:
    """The Hopper report verifies to NVIDIA's root and passes its reference values, so the one
    problem left is the binding: it signed the nonce of another session, not this CPU's."""
    ref = {"driver_versions": ["550.90.07"]}
    with pytest.raises(EvidenceValidationError) as info:
        verify_gpus_for_policy(_cpu(), [_gpu(vectors_dir)], _Policy(mode, ref), now=NOW)
    (problem,) = info.value.mismatches
    assert problem == (
        f"gpus[0].nonce: got {NONCE}, want {gpu_nonce(_cpu().report_data).hex()} "
        "(GPU evidence is not bound to this CPU evidence)"
    )


@pytest.mark.vectors
def test_each_gpu_is_verified_and_validated_first(vectors_dir: Path) -> None:
    wrong_driver = _Policy("required", {"driver_versions": ["999.0"]})
    with pytest.raises(EvidenceValidationError, match=r"gpus\[0\]: .*driver.*550.90.07"):
        verify_gpus_for_policy(_cpu(), [_gpu(vectors_dir)], wrong_driver, now=NOW)
    tampered = _gpu(vectors_dir, flip=60)  # a byte inside the signed response
    with pytest.raises(EvidenceValidationError, match=r"gpus\[0\]: "):
        verify_gpus_for_policy(_cpu(), [tampered], _Policy("required"), now=NOW)
    cpu_as_gpu = Evidence("sev-snp", b"\x00")
    with pytest.raises(EvidenceValidationError, match=r"gpus\[0\].platform: got 'sev-snp'"):
        verify_gpus_for_policy(_cpu(), [cpu_as_gpu], _Policy("optional"), now=NOW)


def test_the_policy_states_the_gpu_mode() -> None:
    import json

    from cctrain.crypto.keys import PartyKeys

    keys = {p: PartyKeys.generate(p) for p in ("hospital-a", "research-lab")}

    def parse(**attestation: Any) -> Any:
        doc = policy_document(keys)
        doc["attestation"].update(attestation)
        return parse_policy(json.dumps(doc, default=dict).encode(), "json")

    assert parse().attestation["gpu"] == "forbidden"
    assert parse(gpu="required").attestation["gpu"] == "required"
    with pytest.raises(PolicyError, match="attestation.gpu: got 'yes'"):
        parse(gpu="yes")
    gpu_ref = {"nvidia-gpu": {"driver_versions": ["550.90.07"]}}
    with pytest.raises(
        PolicyError, match='GPU reference values, but attestation.gpu = "forbidden"'
    ):
        parse(reference={**parse().attestation["reference"], **gpu_ref})
    assert parse(gpu="optional", reference={**parse().attestation["reference"], **gpu_ref})


def test_an_enclave_that_cannot_attest_gpus_refuses_a_policy_that_requires_them(
    tmp_path: Path,
) -> None:
    from cctrain.client import DataOwner
    from tests.consortium import code_measurement, make_consortium, running_enclave
    from tests.state.conftest import refused_start, session

    def attestation(gpu: str) -> dict[str, Any]:
        return {
            "platforms": ["simulated"],
            "allow_simulated": True,
            "reference": {"simulated": {"measurements": [code_measurement().hex()]}},
            "gpu": gpu,
        }

    c = make_consortium(tmp_path / "c", attestation=attestation("required"))
    text = refused_start(c, tmp_path / "state", "requires attested GPUs .* cannot attest a GPU")
    assert "trains on the CPU only" in text
    # "optional": the enclave starts, attaches no GPU evidence, and the client accepts it.
    c = make_consortium(tmp_path / "c2", attestation=attestation("optional"))
    with running_enclave(c, tmp_path / "state2") as (address, _app):
        with session(DataOwner, address, c, "hospital-a") as o:
            assert o.enclave.gpu_claims == ()


@pytest.mark.vectors
def test_attest_verify_checks_a_composite_cpu_gpu_attestation(
    vectors_dir: Path, tmp_path: Path
) -> None:
    """``cctrain attest verify CPU --gpu GPU --gpu-cert CHAIN``: a real SEV-SNP report and a
    real Hopper report, each verifying alone, are refused together (exit 1): the GPU signed
    another session's nonce. A GPU file that cannot be read is bad input (exit 2)."""
    import json

    from click.testing import CliRunner

    from cctrain.cli.main import main

    snp = vectors_dir / "sev-snp"
    gpu = vectors_dir / "nvidia-gpu"
    cpu_args = [
        "attest", "verify", str(snp / "go-sev-guest_milan_attestation.bin"),
        "--platform", "sev-snp", "--cert", str(snp / "go-sev-guest_milan_vcek.der"),
        "--at", "2022-09-24T01:00:00Z", "--format", "json",
    ]  # fmt: skip
    alone = CliRunner().invoke(main, cpu_args)
    assert alone.exit_code == 0, alone.output
    both = CliRunner().invoke(
        main, [*cpu_args, "--gpu", str(gpu / REPORT), "--gpu-cert", str(gpu / CHAIN)]
    )
    doc = json.loads(both.output)
    assert both.exit_code == 1 and doc["verified"] is False
    assert doc["errors"] == [
        f"gpus[0].nonce: got {NONCE}, want "
        f"{gpu_nonce(bytes.fromhex(json.loads(alone.output)['report_data'])).hex()} "
        "(GPU evidence is not bound to this CPU evidence)"
    ]
    missing = CliRunner().invoke(main, [*cpu_args, "--gpu", str(tmp_path / "none.hex")])
    assert missing.exit_code == 2, missing.output
