"""The enclave application: policy, keys, platform, shard store, and the run's phase.

Phases: ``collecting`` → ``training`` → (``awaiting_approval``) → ``released``
(or ``failed``).  Every transition follows from the signed policy.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from cctrain.errors import PolicyError
from cctrain.policy import SignedPolicy
from cctrain.v1 import enclave_pb2 as pb
from cctrain_enclave.ingest import IngestError, ShardStore
from cctrain_enclave.keys import EnclaveKeys, TlsIdentity
from cctrain_enclave.providers.base import EvidenceProvider
from cctrain_enclave.sealing import Sealer, atomic_write

log = logging.getLogger("cctrain.enclave")


@dataclass(frozen=True)
class AppConfig:
    policy_path: Path
    state_dir: Path
    platform: str = "simulated"
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    model_source: Path | None = None


class EnclaveApp:
    def __init__(self, config: AppConfig, provider: EvidenceProvider) -> None:
        self.config = config
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fh = open(state / "LOCK", "a")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise PolicyError(
                f"state directory {state} is in use by another enclave process"
            ) from None
        self.signed_policy = SignedPolicy.load(config.policy_path)
        self.signed_policy.require_complete()
        self.policy = self.signed_policy.policy
        if provider.platform not in self.policy.attestation["platforms"]:
            raise PolicyError(
                f"this enclave runs on {provider.platform!r}, which the policy does not accept "
                f"({list(self.policy.attestation['platforms'])})"
            )
        self._bind_state_to_policy(state)
        self.provider = provider
        self.sealer = Sealer(provider.sealing_key(b"state/v1"))
        self.keys = EnclaveKeys.load_or_create(state, self.sealer)
        self.tls = TlsIdentity.generate(list(config.hosts))
        self.store = ShardStore(state, self.sealer)
        self.phase = "collecting"

    def _bind_state_to_policy(self, state: Path) -> None:
        """A state directory serves one policy for life: shards never mix across consortia."""
        marker = state / "policy.sha256"
        digest = self.policy.digest.hex()
        if marker.exists():
            if marker.read_text().strip() != digest:
                raise PolicyError(
                    f"state directory {state} belongs to policy {marker.read_text().strip()[:16]}…; "
                    f"this policy is {digest[:16]}…; use a new state directory"
                )
        else:
            atomic_write(marker, (digest + "\n").encode())
            atomic_write(
                state / "policy.signed.json", self.signed_policy.envelope.to_json().encode()
            )
        os.chmod(marker, 0o600)

    def shutdown(self) -> None:
        """Release the state directory (graceful stop)."""
        self._lock_fh.close()

    # -- ingest hooks
    def check_accepting_uploads(self) -> None:
        if self.phase != "collecting":
            raise IngestError(
                grpc.StatusCode.FAILED_PRECONDITION, f"uploads are closed (phase: {self.phase})"
            )

    def on_shard_accepted(self) -> None:
        """Training starts when the policy's start rule holds (see training controller)."""

    def providers_missing(self) -> list[str]:
        have = self.store.providers_with_receipts()
        return [p for p in self.policy.start["require_uploads_from"] if p not in have]

    def status(self) -> pb.GetStatusResponse:
        have = sorted(self.store.providers_with_receipts())
        return pb.GetStatusResponse(
            phase=self.phase,
            providers_uploaded=have,
            providers_missing=self.providers_missing(),
            policy_digest=self.policy.digest,
        )

    # -- training and release (see cctrain_enclave.run)
    def request_start(self, party: str) -> str:
        raise IngestError(grpc.StatusCode.UNIMPLEMENTED, "training is not available in this build")

    def watch(self, context: Any) -> Any:
        raise IngestError(grpc.StatusCode.UNIMPLEMENTED, "training is not available in this build")

    def approve(self, party: str, manifest_sha256: bytes) -> pb.ApproveReleaseResponse:
        raise IngestError(grpc.StatusCode.UNIMPLEMENTED, "release is not available in this build")

    def fetch_release(self, party: str) -> pb.FetchReleaseResponse:
        raise IngestError(grpc.StatusCode.UNIMPLEMENTED, "release is not available in this build")
