"""The GPUs of a release: the manifest carries each GPU's evidence (bound to the release's CPU
evidence as Attest binds them) and its digest; a recipient verifies them against the policy's
``attestation.gpu``, and refuses a manifest that trained on CUDA off the simulated platform
without a verified GPU. The GPU evidence is a real NVIDIA Hopper report (vectors); the CPU
claims are built for the test, as in tests/attestation/test_gpu_policy.py."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cctrain.attestation.base import Evidence, VerifiedClaims
from cctrain.attestation.nvidia_gpu.composite import gpu_nonce
from cctrain.attestation.pipeline import read_evidence_bytes
from cctrain.errors import ReleaseError
from cctrain.release import evidence_digest, evidence_to_json, verify_release_gpus

NOW = dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc)


class _Policy:
    def __init__(self, gpu: str) -> None:
        self.attestation = {"gpu": gpu, "allow_debug": False, "platforms": ["sev-snp"]}

    def reference_for(self, platform: str) -> dict[str, Any]:
        return {"driver_versions": ["550.90.07"]} if platform == "nvidia-gpu" else {}


def _cpu(platform: str = "sev-snp") -> VerifiedClaims:
    return VerifiedClaims(
        platform=platform, measurement=b"\x01" * 48, report_data=hashlib.sha512(b"cpu").digest(),
        debug=False, signer="vcek",
    )  # fmt: skip


def _hopper(vectors_dir: Path) -> Evidence:
    d = vectors_dir / "nvidia-gpu"
    raw = read_evidence_bytes((d / "nvtrust_hopper_report.hex").read_bytes())
    return Evidence(
        "nvidia-gpu", raw, certificates=((d / "nvtrust_hopper_cert_chain.pem").read_bytes(),)
    )


def _verify(doc: dict[str, Any], gpu: str = "forbidden", platform: str = "sev-snp") -> Any:
    return verify_release_gpus(doc, _cpu(platform), _Policy(gpu), now=NOW)  # type: ignore[arg-type]


def test_a_cpu_release_needs_no_gpu() -> None:
    assert _verify({"training_device": "cpu"}) == ()
    assert _verify({}) == ()  # a manifest from before devices: the CPU
    assert _verify({"training_device": "cpu"}, gpu="optional") == ()


def test_cuda_off_the_simulated_platform_needs_a_verified_gpu() -> None:
    cuda = {"training_device": "cuda:0 NVIDIA H200"}
    with pytest.raises(ReleaseError, match=r"training_device: got 'cuda:0 NVIDIA H200' with no "):
        _verify(cuda, gpu="optional")
    with pytest.raises(ReleaseError, match='GPU evidence does not hold.*"required"'):
        _verify(cuda, gpu="required")
    assert _verify(cuda, platform="simulated") == ()  # simulated protects nothing anyway
    with pytest.raises(ReleaseError, match="training_device 3 is not a string"):
        _verify({"training_device": 3})
    with pytest.raises(ReleaseError, match="malformed"):
        _verify({"gpu_evidence": {"platform": "nvidia-gpu"}})


@pytest.mark.vectors
def test_the_gpu_evidence_is_checked_digest_first_then_against_the_policy(
    vectors_dir: Path,
) -> None:
    gpu = _hopper(vectors_dir)
    doc = {
        "training_device": "cuda:0 NVIDIA H100",
        "gpu_evidence": [evidence_to_json(gpu)],
        "gpu_evidence_sha256": [evidence_digest(gpu).hex()],
    }
    with pytest.raises(ReleaseError, match="GPU evidence digests do not match"):
        _verify(doc | {"gpu_evidence_sha256": ["00" * 32]}, gpu="required")
    with pytest.raises(ReleaseError, match="GPU evidence does not hold.*forbidden"):
        _verify(doc)  # the policy did not agree to GPUs
    # A genuine GPU, verified to NVIDIA's root and its reference values, but it signed
    # another session's nonce, not this release's: refused.
    with pytest.raises(ReleaseError, match=r"gpus\[0\]\.nonce: .*not bound to this CPU evidence"):
        _verify(doc, gpu="required")


def test_the_enclave_asks_each_gpu_to_sign_the_release_evidence_nonce() -> None:
    from cctrain_enclave.run import RunController

    asked: list[bytes] = []

    class Provider:
        platform = "sev-snp"

        def gpu_evidence(self, nonce: bytes) -> list[Evidence]:
            asked.append(nonce)
            return [Evidence("nvidia-gpu", b"report")]

    report_data = hashlib.sha512(b"release").digest()

    def gpus(gpu: str, provider: Any) -> Any:
        run = SimpleNamespace(policy=_Policy(gpu), ctx=SimpleNamespace(provider=provider))
        return RunController._gpu_evidence(run, report_data)  # type: ignore[arg-type]

    assert gpus("required", Provider()) == [Evidence("nvidia-gpu", b"report")]
    assert asked == [gpu_nonce(report_data)]
    assert gpus("forbidden", Provider()) == [] and len(asked) == 1  # not even asked
    assert gpus("optional", object()) == []  # a provider that attests no GPU
