"""The enclave application: policy, platform, state, shard store and the run, put together.

Phases: ``collecting`` → ``training`` → (``awaiting_approval``) → ``released`` (or
``vetoed``, ``failed``, ``expired``). Every transition is a journal entry (see
:mod:`cctrain_enclave.state`); this module only composes the parts and answers status.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cctrain.attestation.binding import spki_sha256
from cctrain.errors import InputError, PolicyError
from cctrain.policy import SignedPolicy
from cctrain.v1 import enclave_pb2 as pb
from cctrain_enclave.errors import Refusal, StateDirectoryError, TrainerUnavailableError
from cctrain_enclave.ingest import ShardStore
from cctrain_enclave.keys import TlsIdentity
from cctrain_enclave.providers.base import EvidenceProvider
from cctrain_enclave.run import RunContext, RunController
from cctrain_enclave.state import EnclaveState, checked_consent, unusable

log = logging.getLogger("cctrain.enclave")

#: What the trainer imports (the ``enclave`` extra), then the trainer itself.
TRAINER_MODULES = ("torch", "opacus", "safetensors", "cctrain_enclave.trainer")


def require_trainer() -> None:
    """Refuse to start without a trainer that imports: such an enclave would accept every
    upload and then fail (or hang) at the start of training, after every party uploaded."""
    for name in TRAINER_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a broken install raises more than ImportError
            raise TrainerUnavailableError(
                f"the trainer cannot be loaded: importing {name} failed "
                f"({type(exc).__name__}: {exc}); install the enclave extra: "
                "pip install 'cctrain[enclave]'"
            ) from None


@dataclass(frozen=True)
class AppConfig:
    policy_path: Path
    state_dir: Path
    platform: str = "simulated"
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    model_source: Path | None = None
    #: The host's clock (seconds since the epoch). The host owns it: it decides expiry and
    #: request freshness only, never what the journal says happened.
    clock: Callable[[], float] = field(default=time.time)


class EnclaveApp:
    def __init__(self, config: AppConfig, provider: EvidenceProvider) -> None:
        self.config = config
        state_dir = config.state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock_fh = open(state_dir / "LOCK", "a")  # noqa: SIM115 - held for the process lifetime
        except OSError as exc:
            raise unusable(state_dir, exc) from None
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_fh.close()
            raise StateDirectoryError(
                f"state directory {state_dir} is in use by another enclave process"
            ) from None
        try:
            self._open(config, provider)
        except OSError as exc:
            self._lock_fh.close()
            raise unusable(state_dir, exc) from None
        except BaseException:
            self._lock_fh.close()
            raise
        if provider.platform == "simulated":
            # Once every check passed: a refused start says only why it was refused.
            from cctrain_enclave.providers.simulated import BANNER

            log.warning(BANNER)

    def _open(self, config: AppConfig, provider: EvidenceProvider) -> None:
        self.signed_policy = SignedPolicy.load(config.policy_path)
        # Signatures now; expiry is the state's to decide, at every decision.
        self.signed_policy.require_complete(check_expiry=False)
        self.policy = self.signed_policy.policy
        if provider.platform not in self.policy.attestation["platforms"]:
            raise PolicyError(
                f"this enclave runs on {provider.platform!r}, which the policy does not accept "
                f"({list(self.policy.attestation['platforms'])})"
            )
        self.provider = provider
        self.custom_model_source = self._load_custom_model_source(config.model_source)
        self._check_training_plan(provider)
        self.tls = TlsIdentity.generate(list(config.hosts))
        tls_spki = spki_sha256(self.tls.cert)
        self.state = EnclaveState.open(
            config.state_dir, self.policy, provider, tls_spki_sha256=tls_spki, clock=config.clock
        )
        self.store = ShardStore(self.state.paths, self.state.keys.hpke, self.policy)
        self.store.recover(collecting=self.state.view.phase == "collecting")
        self.run = RunController(
            self.state,
            self.store,
            RunContext(provider, tls_spki, self.custom_model_source),
        )

    def _check_training_plan(self, provider: EvidenceProvider) -> None:
        """Build the model and train an epoch on synthetic rows before accepting any data:
        a plan that cannot run is refused now, not after every party uploaded."""
        require_trainer()
        from cctrain_enclave.trainer.precheck import check_training_plan

        problems = check_training_plan(
            self.policy,
            custom_model_source=self.custom_model_source,
            simulated_platform=provider.platform == "simulated",
        )
        if problems:
            raise PolicyError("the policy's training plan cannot run; refusing to start", problems)

    def _load_custom_model_source(self, path: Path | None) -> bytes | None:
        """Custom model code must be the exact source the policy pins; checked before any import."""
        model = self.policy.training["model"]
        if model["name"] != "custom":
            if path is not None:
                raise PolicyError("--model-source given, but the policy's model is not 'custom'")
            return None
        if path is None:
            raise PolicyError(
                "the policy trains a custom model: pass --model-source with its source file"
            )
        try:
            source = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read the model source {path}: {exc.strerror}") from None
        got = hashlib.sha256(source).hexdigest()
        if got != model["source_sha256"]:
            raise PolicyError(
                f"custom model source {path} has SHA-256 {got}, the policy pins {model['source_sha256']}"
            )
        return source

    def shutdown(self) -> None:
        """Stop training at its next step (it resumes on restart) and release the state directory."""
        self.run.shutdown()
        self._lock_fh.close()

    # -- what the servicer asks
    def status(self, party: str) -> pb.GetStatusResponse:
        try:
            self.state.check_time("status")
        except Refusal:
            pass  # an expired policy shows in the phase
        view, policy = self.state.view, self.policy
        eps = view.epsilon_spent
        return pb.GetStatusResponse(
            phase=view.phase,
            providers_uploaded=view.providers_uploaded(),
            providers_missing=view.providers_missing(policy),
            policy_digest=policy.digest,
            detail=self._status_detail(party),
            approvals=view.approved_by(),
            approvals_missing=view.approvals_missing(policy),
            manifest=view.manifest,
            manifest_signature=view.manifest_signature,
            journal_seq=view.head.seq,
            journal_head_sha256=view.head.sha256,
            epsilon_spent=-1.0 if eps is None else eps,
        )

    def _status_detail(self, party: str) -> str:
        """The phase's detail, and the shards withdrawn (every party sees them in the
        journal anyway; here they explain a provider that is missing again)."""
        view = self.state.view
        detail = self.run.detail_for(party, view.detail) if view.phase == "failed" else view.detail
        if view.withdrawn:
            gone = ", ".join(f"{w.party_id}/{w.shard_id}" for w in view.withdrawn)
            detail = "; ".join(filter(None, (detail, f"withdrawn before training: {gone}")))
        return detail

    def journal(self, from_seq: int) -> pb.GetJournalResponse:
        return pb.GetJournalResponse(
            entries=self.state.entries(from_seq), head_seq=self.state.head.seq
        )

    def request_start(self, party: str) -> str:
        return self.run.maybe_start(requested_by=party)

    def on_shard_accepted(self) -> None:
        """Training starts by itself when the policy's start rule holds."""
        try:
            self.run.maybe_start()
        except Refusal as exc:  # the shard is accepted; the start is what was refused
            log.warning("training not started: %s", exc.log_text)

    def watch(self, context: Any, party: str) -> Iterator[pb.TrainingEvent]:
        return self.run.watch(context, party)

    def approve(self, party: str, approval: pb.SignedApproval) -> pb.ApproveReleaseResponse:
        return self.run.approve(party, approval)

    def fetch_release(self, party: str) -> pb.FetchReleaseResponse:
        return self.run.fetch(party)

    def withdraw_shard(self, party: str, withdrawal: pb.SignedConsent) -> bytes:
        """The deletion receipt (the journal's signed entry) of ``party``'s withdrawal."""
        shard_id = checked_consent(withdrawal, party, self.policy, "withdraw").shard_id
        with self.store.no_upload(party, shard_id):
            return self.state.withdraw_shard(party, withdrawal).raw

    def veto(self, party: str, veto: pb.SignedConsent) -> pb.VetoReleaseResponse:
        return pb.VetoReleaseResponse(phase=self.state.veto(party, veto).phase)
