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
            self._lock_fh.close()
            raise PolicyError(
                f"state directory {state} is in use by another enclave process"
            ) from None
        try:
            self._open(config, provider, state)
        except BaseException:
            self._lock_fh.close()
            raise

    def _open(self, config: AppConfig, provider: EvidenceProvider, state: Path) -> None:
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
        self.custom_model_source = self._load_custom_model_source(config.model_source)
        from cctrain_enclave.run import RunController

        self.run = RunController(self)

    @property
    def phase(self) -> str:
        return self.run.phase

    def _load_custom_model_source(self, path: Path | None) -> bytes | None:
        """Custom model code must be the exact source the policy pins; checked before any import."""
        import hashlib

        model = self.policy.training["model"]
        if model["name"] != "custom":
            if path is not None:
                raise PolicyError("--model-source given, but the policy's model is not 'custom'")
            return None
        if path is None:
            raise PolicyError(
                "the policy trains a custom model: pass --model-source with its source file"
            )
        source = path.read_bytes()
        got = hashlib.sha256(source).hexdigest()
        if got != model["source_sha256"]:
            raise PolicyError(
                f"custom model source {path} has SHA-256 {got}, the policy pins {model['source_sha256']}"
            )
        return source

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
        """Stop training at its next step (it resumes on restart) and release the state directory."""
        self.run.shutdown()
        self._lock_fh.close()

    # -- ingest hooks
    def check_accepting_uploads(self) -> None:
        if self.phase != "collecting":
            raise IngestError(
                grpc.StatusCode.FAILED_PRECONDITION, f"uploads are closed (phase: {self.phase})"
            )

    def on_shard_accepted(self) -> None:
        """Training starts by itself when the policy's start rule holds."""
        self.run.maybe_start()

    def providers_missing(self) -> list[str]:
        have = self.store.providers_with_receipts()
        return [p for p in self.policy.start["require_uploads_from"] if p not in have]

    def status(self) -> pb.GetStatusResponse:
        have = sorted(self.store.providers_with_receipts())
        manifest = self.run.manifest()
        return pb.GetStatusResponse(
            phase=self.phase,
            providers_uploaded=have,
            providers_missing=self.providers_missing(),
            policy_digest=self.policy.digest,
            detail=self.run.detail,
            approvals=self.run.approvals,
            approvals_missing=self.run.approvals_missing(),
            manifest=manifest[0] if manifest else b"",
            manifest_signature=manifest[1] if manifest else b"",
        )

    # -- training and release (see cctrain_enclave.run)
    def request_start(self, party: str) -> str:
        return self.run.maybe_start(requested_by=party)

    def watch(self, context: Any) -> Any:
        return self.run.watch(context)

    def approve(self, party: str, manifest_sha256: bytes) -> pb.ApproveReleaseResponse:
        return self.run.approve(party, manifest_sha256)

    def fetch_release(self, party: str) -> pb.FetchReleaseResponse:
        return self.run.fetch(party)
