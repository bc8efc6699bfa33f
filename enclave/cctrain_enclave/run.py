"""The run after ingest: start rule → training → sealed release (→ approvals) → fetch.

Every transition is a journal entry written by :class:`~cctrain_enclave.state.EnclaveState`;
this module runs the training thread, builds the release, and streams progress. A crash
during training resumes from the journaled checkpoint; the ε spent before the crash stays in
the accountant history it carries.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import secrets
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from cctrain.attestation.base import Evidence
from cctrain.attestation.binding import EnclaveIdentity, report_data_for
from cctrain.attestation.nvidia_gpu.composite import gpu_nonce
from cctrain.crypto.keys import x25519_public
from cctrain.dpcheck import (
    SALT_BYTES,
    SEALED,
    TENSOR_NAMES_METADATA,
    seal_tensor_names,
    tensor_names_form,
)
from cctrain.errors import ShardError
from cctrain.journal import MANIFEST_TYPE, AcceptedShard, RunState
from cctrain.policy import gpu_allowed, non_private_outputs, thaw
from cctrain.protocol import MANIFEST_SIG_TAG
from cctrain.release import (
    b64,
    canonical_json,
    evidence_digest,
    evidence_to_json,
    release_nonce,
    release_rule,
    seal_weights,
)
from cctrain.v1 import enclave_pb2 as pb
from cctrain_enclave.cluster.handshake import ClusterError
from cctrain_enclave.cluster.links import LinkError
from cctrain_enclave.errors import Refusal, StoredShardError
from cctrain_enclave.ingest import ShardStore
from cctrain_enclave.package import PackageParser
from cctrain_enclave.providers.base import EvidenceProvider
from cctrain_enclave.state import EnclaveState, atomic_write, fsync_dir
from cctrain_enclave.state.checkpoints import JournaledCheckpoints

log = logging.getLogger("cctrain.enclave.run")

#: Phases after which nothing more happens (a watch ends there).
FINAL = frozenset({"released", "failed", "expired", "awaiting_approval", "vetoed"})


@dataclass(frozen=True)
class RunContext:
    """What the run needs besides the state: the platform and the (pinned) model code."""

    provider: EvidenceProvider
    tls_spki_sha256: bytes
    custom_model_source: bytes | None
    #: Rank 0 of a cluster: the rendezvous store it serves, and its host.
    cluster_store: Any = None
    cluster_host: str | None = None
    #: Lifecycle events and metrics (:class:`cctrain_enclave.metrics.RunObserver`).
    observer: Any = None


class RunController:
    def __init__(self, state: EnclaveState, store: ShardStore, ctx: RunContext) -> None:
        self.state = state
        self.store = store
        self.ctx = ctx
        self.policy = state.policy
        self._cond = threading.Condition()
        self._events: list[pb.TrainingEvent] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._phase = state.view.phase
        self._non_private = non_private_outputs(self.policy)
        self._stream_loss = "progress_loss" in self._non_private
        self._private_details: dict[str, str] = {}
        state.subscribe(self._on_transition)
        phase = state.view.phase
        if phase == "training":
            log.info("resuming training after a restart")
            self._start_thread()
        elif phase == "awaiting_approval":
            try:  # a crash between the manifest entry and the release entry
                state.resume_release()
            except Refusal as exc:  # expired meanwhile: journaled, the phase shows it
                log.warning("release not resumed: %s", exc.message)
        # No trainer import while collecting: torch and Opacus (300+ MB resident) would sit
        # beside every upload's buffers; the training thread imports them when it starts.

    # -- phase events (called by the state, holding its lock, after each journal entry)
    def _on_transition(self, view: RunState) -> None:
        if view.phase == "awaiting_approval" and not view.approvals_missing(self.policy):
            return  # the release entry follows at once: not a phase anyone waits in
        with self._cond:
            if view.phase != self._phase:
                self._phase = view.phase
                self._events.append(
                    pb.TrainingEvent(phase=view.phase, detail=view.detail, epsilon=-1.0)
                )
                self._cond.notify_all()

    # -- start rule
    def maybe_start(self, *, requested_by: str | None = None) -> str:
        if self.state.close_uploads(requested_by=requested_by):  # true for one caller only
            self._start_thread()
        return self.state.view.phase

    def _start_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return  # one training per run: never two trainers on one journal
        self._thread = threading.Thread(
            target=self._train_and_release, name="cctrain-train", daemon=True
        )
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    # -- training
    def _on_progress(self, ev: Any) -> None:
        # The training loss is computed exactly on the pooled private data, outside any DP
        # guarantee: it streams only if the policy lists it as a non-private output.
        loss = float(ev.loss) if self._stream_loss else math.nan
        if self.ctx.observer is not None:
            self.ctx.observer.progress(
                step=int(ev.step), total_steps=int(ev.total_steps), epsilon=ev.epsilon
            )
        with self._cond:
            self._events.append(
                pb.TrainingEvent(
                    step=ev.step,
                    total_steps=ev.total_steps,
                    epoch=ev.epoch,
                    loss=loss,
                    epsilon=float(ev.epsilon) if ev.epsilon is not None else -1.0,
                    phase="training",
                )
            )
            self._cond.notify_all()

    def _train_and_release(self) -> None:
        policy, state = self.policy, self.state
        checkpoints = JournaledCheckpoints(state)
        stage = "loading the trainer"
        try:
            from cctrain_enclave.trainer import BlobCheckpoints, TrainingStopped, train
            from cctrain_enclave.trainer.objective import objective_for
        except Exception as exc:  # noqa: BLE001 - an enclave without its trainer fails the run
            self._fail(stage, exc)
            return
        coordinator = None
        try:
            model_package = None
            if state.view.model_package is not None:
                stage = "loading the model package"
                model_package = self._read_package(state.view.model_package)
            stage = "loading the shards"
            dataset, held_out = self._datasets(state.view.data_shards)
            if int(policy.cluster["ranks"]) > 1:
                stage = "forming the cluster"
                coordinator = self._form_cluster()
            stage = "training"
            result = train(
                dataset.features,
                dataset.labels,
                validation=held_out,
                early_stopping=thaw(policy.validation.get("early_stopping")),
                objective=objective_for(policy.task, num_outputs=policy.num_outputs),
                training=thaw(policy.training),
                privacy=thaw(policy.privacy),
                simulated_platform=self.ctx.provider.platform == "simulated",
                checkpoint=BlobCheckpoints(checkpoints),
                progress=self._on_progress,
                custom_model_source=self.ctx.custom_model_source,
                model_package=model_package,
                allow_gpu=gpu_allowed(policy),
                stop=self._stop,
                cluster=coordinator,
            )
            stage = "building the release"
            self._build_release(
                result, cluster=coordinator.session.describe() if coordinator else None
            )
            checkpoints.clear()  # plaintext training state is no longer needed
        except TrainingStopped:
            log.info("training stopped for shutdown; it resumes from its checkpoint on restart")
        except (ClusterError, LinkError) as exc:
            if self.ctx.observer is not None:
                self.ctx.observer.cluster_paused(stage)
            # A rank that went away, or a link message that did not authenticate: the run
            # is not failed (the host could fail any run that way); it waits, at its last
            # checkpoint, for the enclave and every rank to be restarted.
            log.warning(
                "training paused at %s: %s; it resumes from its last checkpoint when rank 0 "
                "and every other rank are restarted",
                stage,
                exc,
            )
        except Refusal as exc:  # the policy expired at a checkpoint or at the release
            log.warning("training ended: %s", exc.log_text)
        except BaseException as exc:  # noqa: BLE001 - every failure ends the run, with a safe message
            # BaseException: the model's code may raise SystemExit (argparse at import does),
            # on which a thread dies silently and the run would stay "training" forever.
            self._fail(stage, exc)
        finally:
            if coordinator is not None:
                coordinator.session.close()

    def _form_cluster(self) -> Any:
        """Rank 0's side of the cluster: every rank attested, the links keyed."""
        from cctrain_enclave.cluster.handshake import form_cluster
        from cctrain_enclave.cluster.parallel import Coordinator

        assert self.ctx.cluster_store is not None and self.ctx.cluster_host is not None
        log.info("waiting for the cluster's %d ranks", int(self.policy.cluster["ranks"]))
        session = form_cluster(
            policy=self.policy,
            provider=self.ctx.provider,
            rank=0,
            store=self.ctx.cluster_store,
            host=self.ctx.cluster_host,
        )
        if self.ctx.observer is not None:
            self.ctx.observer.cluster_formed(int(self.policy.cluster["ranks"]))
        return Coordinator(session)

    def _datasets(self, shards: tuple[AcceptedShard, ...]) -> tuple[Any, Any]:
        """The training rows and the held-out validation rows (None without [validation]),
        split as :func:`cctrain.policy.split_rows` counts them (which every verifier of the
        DP certificate recomputes from the receipts)."""
        import numpy as np

        from cctrain.policy import split_rows
        from cctrain_enclave.shards import ShardArrays

        policy = self.policy
        # Pooled in a canonical order, not the order uploads happened to finish in: the same
        # shards train the same model (and split the same way) however the uploads raced.
        shards = tuple(sorted(shards, key=lambda s: (s.party_id, s.shard_id)))
        v = policy.validation
        if "parties" in v:
            held = set(v["parties"])
            train_set = self.store.load_dataset(
                tuple(s for s in shards if s.party_id not in held), policy.data
            )
            val_set = self.store.load_dataset(
                tuple(s for s in shards if s.party_id in held), policy.data
            )
            return train_set, val_set
        pooled = self.store.load_dataset(shards, policy.data)
        if "fraction" not in v:
            return pooled, None
        n_train, n_val = split_rows(policy, [(s.party_id, s.rows) for s in shards])
        # Which rows are held out follows the public seed: it hides nothing DP relies on.
        order = np.random.default_rng(int(policy.training.get("seed", 0))).permutation(
            n_train + n_val
        )
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        return (
            ShardArrays(pooled.features[train_idx], pooled.labels[train_idx]),
            ShardArrays(pooled.features[val_idx], pooled.labels[val_idx]),
        )

    def _read_package(self, shard: AcceptedShard) -> bytes:
        """The model package's plaintext, exactly the committed bytes, checked as it was at
        upload (it is code: it runs only after the trainer checks the pin once more)."""
        pkg = self.policy.model_package
        assert pkg is not None
        parser = PackageParser(max_bytes=int(pkg["max_bytes"]), keep=True)
        try:
            self.store.read_accepted(shard, parser.feed)
            return parser.take_bytes()
        except (ShardError, OSError) as exc:
            raise StoredShardError(
                shard.party_id, shard.shard_id, shard.seq, str(exc), at_rest=True
            ) from None

    def _fail(self, stage: str, exc: BaseException) -> None:
        public, private = failure_report(stage, exc, model_owner=self.policy.model_provider)
        log.error("%s\n%s", public, "".join(_code_locations(exc)))
        with self._cond:
            self._private_details.update(private)
        self.state.record_failure(public)

    def detail_for(self, party: str, detail: str) -> str:
        """The phase detail as ``party`` may see it: a failure's details reach only the party
        they concern (kept in memory: after a restart only the public reason is left)."""
        with self._cond:
            mine = self._private_details.get(party)
        return f"{detail} — for you: {mine}" if mine else detail

    # -- release
    def _build_release(self, result: Any, *, cluster: dict[str, Any] | None = None) -> None:
        from safetensors.torch import save

        state, policy = self.state, self.policy
        view = state.view
        tensors = {k: v.detach().cpu().contiguous() for k, v in result.state_dict.items()}
        metadata = {"model": json.dumps(result.model_spec, sort_keys=True)}
        certificate = result.dp_certificate
        if certificate is not None and tensor_names_form(policy) == SEALED:
            # A package's tensor names are its owner's: the journaled manifest (host disk,
            # every party) carries only a salted commitment; the names go to recipients.
            certificate, metadata[TENSOR_NAMES_METADATA] = seal_tensor_names(
                certificate, salt=secrets.token_bytes(SALT_BYTES)
            )
        weights = save(tensors, metadata=metadata)
        model_sha = hashlib.sha256(weights).digest()
        identity = EnclaveIdentity(
            hpke_public_key=state.keys.hpke_public,
            signing_public_key=state.keys.signing_public,
            tls_spki_sha256=self.ctx.tls_spki_sha256,
        )
        report_data = report_data_for(
            identity, policy_digest=policy.digest, nonce=release_nonce(model_sha)
        )
        evidence = self.ctx.provider.get_evidence(report_data)
        gpus = self._gpu_evidence(report_data)
        allowed = set(policy.release["metrics"])
        outputs = policy.num_outputs
        assert view.uploads_closed is not None
        manifest_doc = {
            "type": MANIFEST_TYPE,
            "policy_digest": policy.digest.hex(),
            "run_id": view.run_id.hex(),
            "created": _dt.datetime.fromtimestamp(
                state.now_ms() / 1000, _dt.timezone.utc
            ).isoformat(),
            "enclave": {
                "signing_key": identity.signing_public_key.hex(),
                "hpke_key": identity.hpke_public_key.hex(),
                "tls_spki_sha256": identity.tls_spki_sha256.hex(),
                "platform": evidence.platform,
            },
            "evidence": evidence_to_json(evidence),
            "evidence_sha256": evidence_digest(evidence).hex(),
            "model_sha256": model_sha.hex(),
            # What a recipient needs to rebuild the architecture (FetchedModel.to_torch).
            "model": result.model_spec
            | {"feature_shape": list(policy.data["features"]["shape"]), "num_outputs": outputs},
            "weights_format": "safetensors",
            # "cpu", or "cuda:0 NVIDIA H200": which must then be one of the attested GPUs.
            "training_device": result.device,
            "receipts": [
                {"body": b64(s.receipt.body), "signature": b64(s.receipt.signature)}
                for s in view.training_shards
            ],
            "uploads_closed": b64(view.uploads_closed.raw),
            "journal": {"seq": view.head.seq + 1, "prev_sha256": view.head.sha256.hex()},
            "training": thaw(policy.training),
            "dp_certificate": certificate,
            "metrics": {k: v for k, v in result.metrics.items() if k in allowed},
            # Everything released outside the DP guarantee (without DP: everything).
            "non_private_outputs": self._non_private,
            "recipients": list(policy.recipients),
            "release_rule": release_rule(policy),
        }
        if cluster is not None:  # every rank that trained, its evidence re-verifiable
            manifest_doc["cluster"] = cluster
        if gpus:  # bound to this release's CPU evidence as Attest binds them (gpu_nonce)
            manifest_doc["gpu_evidence"] = [evidence_to_json(g) for g in gpus]
            manifest_doc["gpu_evidence_sha256"] = [evidence_digest(g).hex() for g in gpus]
        manifest = canonical_json(manifest_doc)
        manifest_sha = hashlib.sha256(manifest).digest()
        signature = state.keys.signing.sign(MANIFEST_SIG_TAG + manifest)
        self._write_sealed_weights(weights, manifest_sha)
        del weights, tensors
        state.record_manifest(manifest, signature)

    def _gpu_evidence(self, report_data: bytes) -> list[Evidence]:
        """The GPUs' evidence, each signing the nonce derived from the release evidence's
        report_data, when the policy lets GPUs in and the platform's provider attests them
        (as Attest gives it to every party); none otherwise."""
        provider: Any = self.ctx.provider
        if self.policy.attestation.get("gpu") == "forbidden" or not hasattr(
            provider, "gpu_evidence"
        ):
            return []
        return list(provider.gpu_evidence(gpu_nonce(report_data)))

    def _write_sealed_weights(self, weights: bytes, manifest_sha: bytes) -> None:
        """Per recipient, the weights sealed to it, bound to the manifest (before it is
        journaled: a crash leaves files no entry vouches for, removed at the next start)."""
        policy, paths = self.policy, self.state.paths
        final = paths.release_dir(manifest_sha)
        tmp = paths.release / f".tmp-{manifest_sha.hex()}"
        tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        for rid in policy.recipients:
            party = policy.party(rid)
            assert party is not None and party.hpke_key is not None  # policy validation
            enc, sealed = seal_weights(
                weights,
                recipient_key=x25519_public(party.hpke_key),
                recipient_id=rid,
                policy_digest=policy.digest,
                manifest_sha256=manifest_sha,
            )
            atomic_write(tmp / f"{rid}.enc", enc)
            atomic_write(tmp / f"{rid}.sealed", sealed)
        tmp.replace(final)
        fsync_dir(final.parent)

    def approve(self, party: str, approval: pb.SignedApproval) -> pb.ApproveReleaseResponse:
        view = self.state.approve(party, approval)
        return pb.ApproveReleaseResponse(approvals=view.approved_by(), phase=view.phase)

    def fetch(self, party: str) -> pb.FetchReleaseResponse:
        state = self.state
        if party not in self.policy.recipients:
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED, f"{party!r} is not a recipient of this policy"
            )
        state.check_time("fetch")
        view = state.view
        if view.phase == "vetoed":
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the release was vetoed by {view.vetoed_by}: nothing of this run is released "
                "(its sealed weights were deleted)",
            )
        if view.phase != "released" or view.release_record is None:
            waiting = view.approvals_missing(self.policy)
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"nothing is released yet (phase: {view.phase}"
                + (
                    f"; awaiting approval from {', '.join(waiting)}"
                    if view.phase == "awaiting_approval"
                    else ""
                )
                + ")",
            )
        d: Path = state.paths.release_dir(view.manifest_sha256)
        try:
            enc, sealed = (d / f"{party}.enc").read_bytes(), (d / f"{party}.sealed").read_bytes()
        except FileNotFoundError:
            raise Refusal(
                grpc.StatusCode.DATA_LOSS,
                f"the sealed release for {party!r} is missing from the enclave's state directory",
            ) from None
        return pb.FetchReleaseResponse(
            manifest=view.manifest,
            manifest_signature=view.manifest_signature,
            encapsulated_key=enc,
            sealed_weights=sealed,
            release_record=view.release_record.raw,
        )

    # -- progress
    def watch(self, context: grpc.ServicerContext, party: str) -> Iterator[pb.TrainingEvent]:
        def wake() -> None:  # a cancelled watch frees its worker at once, not at the next tick
            with self._cond:
                self._cond.notify_all()

        context.add_callback(wake)
        with self._cond:
            sent = len(self._events)
            view = self.state.view
            current = pb.TrainingEvent(phase=view.phase, detail=view.detail, epsilon=-1.0)
        yield self._for(party, current)
        if current.phase in FINAL:
            return
        while context.is_active():
            with self._cond:
                if sent >= len(self._events):
                    self._cond.wait(timeout=1.0)
                new = self._events[sent:]
                sent += len(new)
            for event in new:
                yield self._for(party, event)
            if any(e.phase in FINAL for e in new):
                return

    def _for(self, party: str, event: pb.TrainingEvent) -> pb.TrainingEvent:
        if event.phase != "failed":
            return event
        out = pb.TrainingEvent()
        out.CopyFrom(event)
        out.detail = self.detail_for(party, event.detail)
        return out


def failure_report(
    stage: str, exc: BaseException, *, model_owner: str | None = None
) -> tuple[str, dict[str, str]]:
    """(what every party and the host learn, what only the party concerned learns).

    Every party reads the journal, and the host reads it and the log: a failure's public
    text says in which stage the run failed and, for the enclave's own refusals (which
    name settings, tensors and files, never values), why. Anything else raised while the
    private data is in memory (torch, numpy, the model's code) may quote that data, and is
    withheld from everyone. A shard that does not read back concerns its provider: only it
    is told the details. When the model is a ``model_owner``'s package, the names those
    refusals give (tensors, modules, layers, the model's own exception text quoted by the
    DP checks) are that owner's: only it is told them.
    """
    from cctrain.errors import CctrainError, PolicyError

    safe: tuple[type[BaseException], ...] = (PolicyError,)
    try:
        from cctrain_enclave.trainer.checkpoint import CheckpointError
        from cctrain_enclave.trainer.guard import DpStateViolation

        safe = (PolicyError, DpStateViolation, CheckpointError)
    except Exception:  # noqa: BLE001, S110 - without the trainer, its errors cannot occur
        pass
    if isinstance(exc, StoredShardError):
        if exc.at_rest:
            return f"run failed while {stage}: {exc}", {}
        return (
            f"run failed while {stage}: stored shard {exc.party_id}/{exc.shard_id} does not "
            f"read back; {exc.party_id!r} was told why",
            {exc.party_id: str(exc)},
        )
    if (isinstance(exc, safe) or type(exc) is CctrainError) and _raised_by_the_enclave(exc):
        text = str(exc)
        if len(text) > 600:
            text = text[:600] + "… (cut)"
        if model_owner is not None:
            return (
                f"run failed while {stage}: {type(exc).__name__} (details went to the model "
                f"owner {model_owner!r} only: they may describe its package's model)",
                {model_owner: f"{type(exc).__name__}: {text}"},
            )
        return f"run failed while {stage}: {type(exc).__name__}: {text}", {}
    return (
        f"run failed while {stage}: {type(exc).__name__} (message withheld: it may quote "
        "the private data)",
        {},
    )


def _raised_by_the_enclave(exc: BaseException) -> bool:
    """Whether the enclave's own code raised ``exc``, with no frame of the pinned model's
    code on the way: a model can raise cctrain's exception types too, with any text (its
    exception classes are importable), so the type alone vouches for nothing."""
    import cctrain
    import cctrain_enclave

    ours = (str(Path(cctrain.__file__).parent), str(Path(cctrain_enclave.__file__).parent))
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames or not frames[-1].filename.startswith(ours):
        return False
    return not any(f.filename.startswith(("<custom model", "<package ")) for f in frames)


def _code_locations(exc: BaseException) -> list[str]:
    """Where the failure happened (files, lines, functions), never what it said: code
    locations are public, the message may quote the data."""
    frames = traceback.extract_tb(exc.__traceback__)[-12:]
    # A model owner's code is its intellectual property: not even its function names.
    return [
        "  in the model package's code\n"
        if f.filename.startswith("<package ")
        else f"  at {f.filename}:{f.lineno} in {f.name}\n"
        for f in frames
    ]
