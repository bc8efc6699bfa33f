"""The enclave application: policy, platform, state, shard store and the run, put together.

Phases: ``collecting`` → ``training`` → (``awaiting_approval``) → ``released`` (or
``vetoed``, ``failed``, ``expired``). Every transition is a journal entry (see
:mod:`cctrain_enclave.state`); this module only composes the parts and answers status.

With a consortium-held state key, an enclave restarted on an existing journal starts
*locked* (:class:`~cctrain_enclave.state.state_key.LockedState`): it has verified its journal
but holds none of its keys. It then answers only what needs no key (Attest with this start's
unlock key, status, the journal) and Unlock. The parts that need the keys (the state's keys,
the shard store, the run) are built together, once, when the k-th share arrives, and are
published in one assignment: a request sees all of them or none.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cctrain.attestation.binding import spki_sha256
from cctrain.errors import CctrainError, InputError, NoSealingKeyError, PolicyError
from cctrain.journal import RunState
from cctrain.policy import SignedPolicy
from cctrain.v1 import enclave_pb2 as pb
from cctrain_enclave.errors import Refusal, StateDirectoryError, TrainerUnavailableError
from cctrain_enclave.ingest import ShardStore
from cctrain_enclave.keys import TlsIdentity
from cctrain_enclave.metrics import RunObserver
from cctrain_enclave.plancheck import PlanCheck, check_in_process
from cctrain_enclave.providers.base import EvidenceProvider
from cctrain_enclave.run import RunContext, RunController
from cctrain_enclave.state import EnclaveState, checked_consent, unusable
from cctrain_enclave.state.enclave_state import journal_page
from cctrain_enclave.state.sealing import STATE_KEY_LABEL
from cctrain_enclave.state.state_key import LockedState, UnlockProgress

log = logging.getLogger("cctrain.enclave")

#: What the trainer imports (the ``enclave`` extra), then the trainer itself.
TRAINER_MODULES = ("torch", "safetensors", "cctrain_enclave.trainer")
#: Looked up, not imported, at start-up: Opacus loads when a DP run needs it (4-6 s and
#: ~100 MB that a run without privacy never pays).
TRAINER_LAZY_MODULES = ("opacus",)


def require_trainer(*, formats: tuple[str, ...] = ()) -> None:
    """Refuse to start without a trainer that imports: such an enclave would accept every
    upload and then fail (or hang) at the start of training, after every party uploaded.
    Nor without the reader of a shard format the policy allows (pyarrow for Parquet)."""
    extra = ("pyarrow", "pyarrow.parquet", "pyarrow.compute") if "parquet" in formats else ()
    for name in (*TRAINER_MODULES, *TRAINER_LAZY_MODULES, *extra):
        try:
            if name not in TRAINER_LAZY_MODULES:
                importlib.import_module(name)
            elif importlib.util.find_spec(name) is None:
                raise ModuleNotFoundError(f"No module named {name!r}")
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
    #: False: the simulated platform has no sealing key, as TDX has none (``serve
    #: --no-sealing-key``), so the code path of a TDX enclave runs without TDX hardware.
    sealing: bool = True
    #: Rank 0 of a cluster (``[cluster] ranks > 1``): where it serves the rendezvous the
    #: other ranks join (``serve --cluster-listen HOST:PORT``; port 0: any free one).
    cluster_listen: tuple[str, int] | None = None


@dataclass(frozen=True)
class _Opened:
    """The parts that need the enclave's keys: built together, once the state is open."""

    state: EnclaveState
    store: ShardStore
    run: RunController


class EnclaveApp:
    def __init__(self, config: AppConfig, provider: EvidenceProvider) -> None:
        self.config = config
        #: Lifecycle events, metrics and health (:mod:`cctrain_enclave.metrics`).
        self.observer = RunObserver()
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
        self._check_state_key(provider)
        self._check_gpus(provider)
        self.custom_model_source = self._load_custom_model_source(config.model_source)
        check = self._start_plan_check(provider)
        try:
            # Meanwhile (the verdict comes before any state or listener exists):
            self.tls = TlsIdentity.generate(list(config.hosts))
            self._tls_spki = spki_sha256(self.tls.cert)
        except BaseException:
            if check is not None:
                check.cancel()
            raise
        if check is not None:
            check.result()
        self.cluster_store = self._open_rendezvous(config)
        #: Serialises Unlock and shutdown: the keyed parts are built at most once.
        self._unlock_lock = threading.Lock()
        self._closing = False
        self._opened: _Opened | None = None
        self._locked: LockedState | None = None
        self._unlocked_by: tuple[str, ...] = ()
        self._unlock_failure = ""
        opening = EnclaveState.open(
            config.state_dir,
            self.policy,
            provider,
            tls_spki_sha256=self._tls_spki,
            clock=config.clock,
        )
        self.observer.metrics.cluster_ranks.set(int(self.policy.cluster["ranks"]))
        if isinstance(opening, LockedState):
            self._locked = opening
            self.observer.locked(opening.view)
        else:
            self._open_parts(opening)

    def _open_rendezvous(self, config: AppConfig) -> Any:
        """Rank 0's rendezvous store, when the policy trains on several ranks (untrusted: it
        carries only hellos and evidence, see :mod:`cctrain_enclave.cluster.handshake`)."""
        ranks = int(self.policy.cluster["ranks"])
        if ranks == 1:
            if config.cluster_listen is not None:
                raise PolicyError("--cluster-listen given, but the policy's [cluster] has one rank")
            return None
        if config.cluster_listen is None:
            raise PolicyError(
                f"the policy trains on {ranks} ranks: serve rank 0 with --cluster-listen "
                "HOST:PORT, where the other ranks (cctrain-enclave worker) join"
            )
        from cctrain_enclave.cluster.handshake import open_rendezvous

        host, port = config.cluster_listen
        return open_rendezvous(self.policy, rank=0, host=host, port=port)

    @property
    def cluster_address(self) -> str | None:
        """``host:port`` of the rendezvous rank 0 serves (None: one rank)."""
        if self.cluster_store is None or self.config.cluster_listen is None:
            return None
        return f"{self.config.cluster_listen[0]}:{self.cluster_store.port}"

    def _open_parts(self, state: EnclaveState) -> None:
        """Build what needs the keys (resuming training or the release), then publish it."""
        store = ShardStore(state.paths, state.keys.hpke, self.policy)
        store.recover(collecting=state.view.phase == "collecting")
        self.observer.opened(state.view)
        state.subscribe(self.observer)
        run = RunController(
            state,
            store,
            RunContext(
                self.provider,
                self._tls_spki,
                self.custom_model_source,
                cluster_store=self.cluster_store,
                cluster_host=self.config.cluster_listen[0] if self.config.cluster_listen else None,
                observer=self.observer,
            ),
        )
        self._opened = _Opened(state, store, run)  # one assignment: all of it or none

    def _check_gpus(self, provider: EvidenceProvider) -> None:
        """A policy that requires attested GPUs needs a provider that can produce their
        evidence (``gpu_evidence(nonce)``); none here ships one yet, so such a policy is
        refused at start instead of failing every party's attestation."""
        if self.policy.attestation.get("gpu") == "required" and not hasattr(
            provider, "gpu_evidence"
        ):
            raise PolicyError(
                'the policy requires attested GPUs (attestation.gpu = "required"), but the '
                f"{provider.platform} evidence provider cannot attest a GPU; this enclave "
                "trains on the CPU only"
            )

    def _check_state_key(self, provider: EvidenceProvider) -> None:
        """The policy's state key must be one this platform can keep, checked before the
        training plan (seconds): a platform key needs a sealing key, which TDX lacks."""
        if self.policy.state["key"] == "consortium":
            try:
                importlib.import_module("shamir_mnemonic")
            except ImportError:
                raise TrainerUnavailableError(
                    "a consortium-held state key is split with SLIP-39, but shamir_mnemonic "
                    "cannot be imported; install the enclave extra: pip install 'cctrain[enclave]'"
                ) from None
            return
        try:
            provider.sealing_key(STATE_KEY_LABEL)
        except NoSealingKeyError:
            raise PolicyError(
                f"the platform ({provider.platform}) has no sealing key, so the policy's "
                '[state] key = "platform" cannot keep the enclave\'s state: set [state] key = '
                '"consortium" in the policy (every party then holds a share of the state key)'
            ) from None

    # -- the keyed parts (refused while locked)
    @property
    def locked(self) -> bool:
        """Whether the enclave still waits for the consortium's shares of its state key."""
        return self._opened is None

    def _parts(self) -> _Opened:
        opened = self._opened
        if opened is not None:
            return opened
        assert self._locked is not None  # never None when nothing is opened
        raise self._locked.refusal()

    def refuse_if_locked(self) -> None:
        """Raise the locked refusal (FAILED_PRECONDITION) unless the state is open."""
        self._parts()

    @property
    def state(self) -> EnclaveState:
        return self._parts().state

    @property
    def store(self) -> ShardStore:
        return self._parts().store

    @property
    def run(self) -> RunController:
        return self._parts().run

    def _view(self) -> RunState:
        opened = self._opened
        if opened is not None:
            return opened.state.view
        assert self._locked is not None
        return self._locked.view

    def attested_keys(self) -> tuple[bytes, bytes, bool]:
        """(HPKE key, signing key, locked) for Attest to bind. Locked: this start's unlock
        key, to which parties seal their shares, and the journal's signing key."""
        opened = self._opened
        if opened is not None:
            return opened.state.keys.hpke_public, opened.state.keys.signing_public, False
        assert self._locked is not None
        return self._locked.unlock_public, self._locked.view.signing_public_key, True

    def _start_plan_check(self, provider: EvidenceProvider) -> PlanCheck | None:
        """Build the model and train an epoch on synthetic rows, on the policy's
        ``training.device``, before accepting any data: a plan that cannot run here (a CUDA
        device this machine lacks, first) is refused at start, not after every party uploaded.

        The serving process must not hold torch while shards stream in (300+ MB, more than a
        shard's ingest budget), so the check runs in a child process (:mod:`.plancheck`)
        while the rest of the start-up goes on; ``_open`` waits for its verdict. Where torch
        is loaded already (an embedding process, the tests) nothing is saved by a child: the
        check runs here, now (None)."""
        simulated = provider.platform == "simulated"
        if "torch" in sys.modules:
            check_in_process(
                self.policy, custom_model_source=self.custom_model_source, simulated=simulated
            )
            return None
        return PlanCheck(
            self.policy, custom_model_source=self.custom_model_source, simulated=simulated
        )

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
        with self._unlock_lock:
            self._closing = True  # an Unlock arriving now opens nothing
        if self._opened is not None:
            self._opened.run.shutdown()
        self._lock_fh.close()

    # -- what the servicer asks
    def status(self, party: str) -> pb.GetStatusResponse:
        opened = self._opened
        if opened is None:
            return self._locked_status()
        try:
            opened.state.check_time("status")
        except Refusal:
            pass  # an expired policy shows in the phase
        view = opened.state.view
        resp = self._status_of(view)
        if view.phase == "failed":
            resp.detail = _with_withdrawn(view, opened.run.detail_for(party, view.detail))
        resp.state_key, resp.locked = view.state_key_mode, False
        resp.unlock_threshold = view.state_key_threshold
        resp.unlocked_by.extend(self._unlocked_by)
        return resp

    def _locked_status(self) -> pb.GetStatusResponse:
        """What the journal says, and how far the unlock is (the expiry waits for the keys:
        journaling it needs the signing key)."""
        locked = self._locked
        assert locked is not None
        view, progress = locked.view, locked.progress
        resp = self._status_of(view)
        detail = [locked.refusal().message]
        if view.detail:
            detail.insert(0, view.detail)
        if self._unlock_failure:
            detail.append(f"the last unlock failed: {self._unlock_failure}")
        resp.detail = "; ".join(detail)
        resp.state_key, resp.locked = view.state_key_mode, True
        resp.unlock_threshold = progress.threshold
        resp.unlocked_by.extend(progress.unlocked_by)
        return resp

    def _status_of(self, view: RunState) -> pb.GetStatusResponse:
        policy = self.policy
        eps = view.epsilon_spent
        return pb.GetStatusResponse(
            phase=view.phase,
            providers_uploaded=view.providers_uploaded(),
            providers_missing=view.providers_missing(policy),
            policy_digest=policy.digest,
            detail=_with_withdrawn(view, view.detail),
            approvals=view.approved_by(),
            approvals_missing=view.approvals_missing(policy),
            manifest=view.manifest,
            manifest_signature=view.manifest_signature,
            journal_seq=view.head.seq,
            journal_head_sha256=view.head.sha256,
            epsilon_spent=-1.0 if eps is None else eps,
        )

    def journal(self, from_seq: int) -> pb.GetJournalResponse:
        opened = self._opened
        if opened is not None:
            return pb.GetJournalResponse(
                entries=opened.state.entries(from_seq), head_seq=opened.state.head.seq
            )
        assert self._locked is not None
        return pb.GetJournalResponse(
            entries=journal_page(self._locked.records, from_seq),
            head_seq=self._locked.view.head.seq,
        )

    # -- unlock
    def unlock(self, party: str, request: pb.UnlockRequest) -> pb.UnlockResponse:
        """Take ``party``'s share of the consortium-held state key; at the k-th, open the
        state. Idempotent once unlocked; a refusal changes nothing."""
        if self.policy.state["key"] != "consortium":
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this enclave's state key is the platform's (policy [state] key = "
                '"platform"): there is nothing to unlock',
            )
        with self._unlock_lock:
            if self._opened is not None:
                return self._unlock_answer(
                    UnlockProgress(self._view().state_key_threshold, self._unlocked_by),
                    locked=False,
                )
            if self._closing:
                raise Refusal(grpc.StatusCode.UNAVAILABLE, "the enclave is shutting down")
            locked = self._locked
            assert locked is not None
            try:
                progress = locked.offer(
                    party,
                    bytes(request.sealed_share),
                    journal_seq=int(request.journal_seq),
                    journal_head_sha256=bytes(request.journal_head_sha256),
                )
            except Refusal as exc:
                log.warning("unlock share from %s refused: %s", party, exc.log_text)
                raise
            if progress.complete:
                self._open_locked(locked, progress)
                return self._unlock_answer(progress, locked=False)
            return self._unlock_answer(progress, locked=True)

    def _open_locked(self, locked: LockedState, progress: UnlockProgress) -> None:
        """Combine the shares and open the state; on failure stay locked, saying why."""
        try:
            self._open_parts(locked.open())
        except (CctrainError, OSError) as exc:
            reason = str(unusable(self.config.state_dir, exc) if isinstance(exc, OSError) else exc)
            self._unlock_failure = reason
            log.error("unlock failed; the enclave stays locked and forgot the shares: %s", reason)
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{progress.threshold} shares were returned, but the enclave cannot open its "
                f"state: {reason}. It stays locked and has forgotten the shares; once the "
                "cause is fixed, the parties unlock again",
            ) from None
        self._unlocked_by, self._unlock_failure = progress.unlocked_by, ""
        log.info(
            "unlocked by %s: the enclave holds its keys again (phase %s)",
            ", ".join(progress.unlocked_by),
            self._view().phase,
        )

    @staticmethod
    def _unlock_answer(progress: UnlockProgress, *, locked: bool) -> pb.UnlockResponse:
        return pb.UnlockResponse(
            locked=locked, threshold=progress.threshold, unlocked_by=list(progress.unlocked_by)
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


def _with_withdrawn(view: RunState, detail: str) -> str:
    """The phase's detail, and the shards withdrawn (every party sees them in the journal
    anyway; here they explain a provider that is missing again)."""
    if view.withdrawn:
        gone = ", ".join(f"{w.party_id}/{w.shard_id}" for w in view.withdrawn)
        detail = "; ".join(filter(None, (detail, f"withdrawn before training: {gone}")))
    return detail
