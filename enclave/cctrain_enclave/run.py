"""The run after ingest: start rule → training → sealed release (→ approvals) → fetch.

Phase and release survive restarts in the state directory.  A crash during
training resumes from the trainer's sealed checkpoint; the ε spent before the
crash stays in the accountant history it carries.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc

from cctrain.attestation.binding import EnclaveIdentity, report_data_for, spki_sha256
from cctrain.crypto.keys import x25519_public
from cctrain.policy import thaw
from cctrain.protocol import MANIFEST_SIG_TAG
from cctrain.release import (
    MANIFEST_TYPE,
    b64,
    canonical_json,
    evidence_digest,
    evidence_to_json,
    release_nonce,
    seal_weights,
)
from cctrain.v1 import enclave_pb2 as pb
from cctrain_enclave.ingest import IngestError
from cctrain_enclave.sealing import atomic_write

if TYPE_CHECKING:
    from cctrain_enclave.app import EnclaveApp

log = logging.getLogger("cctrain.enclave.run")

TERMINAL = frozenset({"released", "failed"})


PRELOADED_MESSAGE = "trainer libraries loaded"


def _preload_trainer() -> None:
    try:
        import cctrain_enclave.trainer  # noqa: F401
    except Exception:  # noqa: BLE001 - the training thread reports import problems itself
        log.debug("trainer preload failed", exc_info=True)
    else:
        log.info(PRELOADED_MESSAGE)


class RunController:
    def __init__(self, app: EnclaveApp) -> None:
        self.app = app
        self.dir = app.config.state_dir / "run"
        self.dir.mkdir(exist_ok=True, mode=0o700)
        self.release_dir = self.dir / "release"
        self._cond = threading.Condition()
        self._events: list[pb.TrainingEvent] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        state = self._load_state()
        self.phase: str = state.get("phase", "collecting")
        self.detail: str = state.get("detail", "")
        self.approvals: list[str] = state.get("approvals", [])
        if self.phase == "training":
            log.info("resuming training after a restart")
            self._start_thread()
        elif self.phase == "collecting":
            # Importing torch and Opacus takes seconds; do it while the shards arrive,
            # not after the last receipt.
            threading.Thread(target=_preload_trainer, name="cctrain-preload", daemon=True).start()

    # -- persistent state
    def _load_state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.dir / "state.json").read_text())
            return data
        except (OSError, ValueError):
            return {}

    def _set_phase(self, phase: str, detail: str = "") -> None:
        with self._cond:
            self.phase, self.detail = phase, detail
            atomic_write(
                self.dir / "state.json",
                json.dumps(
                    {"phase": phase, "detail": detail, "approvals": self.approvals}
                ).encode(),
            )
            self._events.append(pb.TrainingEvent(phase=phase, detail=detail, epsilon=-1.0))
            self._cond.notify_all()
        log.info("phase: %s %s", phase, detail)

    # -- start rule
    def maybe_start(self, *, requested_by: str | None = None) -> str:
        with self._cond:
            if self.phase != "collecting":
                return self.phase
            missing = self.app.providers_missing()
            if missing:
                if requested_by is not None:
                    raise IngestError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"the start rule does not hold yet: no receipt from {', '.join(missing)}",
                    )
                return self.phase
            if requested_by is None and not self.app.policy.start["auto_start"]:
                return self.phase
            self._set_phase("training", f"started by {requested_by or 'the start rule'}")
        self._start_thread()
        return self.phase

    def _start_thread(self) -> None:
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
        # The training loss is computed on the pooled private data and is not covered by the
        # DP guarantee: it streams to parties only if the policy releases it as a metric.
        loss = float(ev.loss) if "train_loss" in self.app.policy.release["metrics"] else math.nan
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
        from cctrain_enclave.trainer import CheckpointStore, TrainingStopped, train

        app = self.app
        policy = app.policy
        try:
            dataset, receipts = app.store.load_dataset(policy.data)
            sealer = app.sealer
            store = CheckpointStore(
                self.dir / "checkpoints",
                seal=lambda b: sealer.seal(b, label=b"training-checkpoint"),
                unseal=lambda b: sealer.unseal(b, label=b"training-checkpoint"),
            )
            result = train(
                dataset.features,
                dataset.labels,
                num_classes=int(policy.data["labels"]["num_classes"]),
                training=thaw(policy.training),
                privacy=thaw(policy.privacy),
                simulated_platform=app.provider.platform == "simulated",
                checkpoint=store,
                progress=self._on_progress,
                custom_model_source=app.custom_model_source,
                stop=self._stop,
            )
            self._build_release(result, receipts)
        except TrainingStopped:
            log.info("training stopped for shutdown; it resumes from its checkpoint on restart")
        except Exception as exc:  # noqa: BLE001 - every failure ends the run, with a safe message
            log.exception("training failed")
            self._set_phase("failed", f"{type(exc).__name__}: {exc}")

    # -- release
    def _build_release(self, result: Any, receipts: list[pb.SignedReceipt]) -> None:
        import torch
        from safetensors.torch import save

        app, policy = self.app, self.app.policy
        state = {k: v.detach().cpu().contiguous() for k, v in result.state_dict.items()}
        weights = save(state, metadata={"model": json.dumps(result.model_spec, sort_keys=True)})
        del torch
        model_sha = hashlib.sha256(weights).digest()
        identity = EnclaveIdentity(
            hpke_public_key=app.keys.hpke_public,
            signing_public_key=app.keys.signing_public,
            tls_spki_sha256=spki_sha256(app.tls.cert),
        )
        evidence = app.provider.get_evidence(
            report_data_for(identity, policy_digest=policy.digest, nonce=release_nonce(model_sha))
        )
        allowed = set(policy.release["metrics"])
        manifest_doc = {
            "type": MANIFEST_TYPE,
            "policy_digest": policy.digest.hex(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "enclave": {
                "signing_key": identity.signing_public_key.hex(),
                "hpke_key": identity.hpke_public_key.hex(),
                "tls_spki_sha256": identity.tls_spki_sha256.hex(),
                "platform": evidence.platform,
            },
            "evidence": evidence_to_json(evidence),
            "evidence_sha256": evidence_digest(evidence).hex(),
            "model_sha256": model_sha.hex(),
            "model": result.model_spec,
            "weights_format": "safetensors",
            "receipts": [{"body": b64(r.body), "signature": b64(r.signature)} for r in receipts],
            "training": thaw(policy.training),
            "dp_certificate": result.dp_certificate,
            "metrics": {k: v for k, v in result.metrics.items() if k in allowed},
            "recipients": list(policy.recipients),
        }
        manifest = canonical_json(manifest_doc)
        manifest_sha = hashlib.sha256(manifest).digest()
        signature = app.keys.signing.sign(MANIFEST_SIG_TAG + manifest)
        tmp = self.dir / ".tmp-release"
        tmp.mkdir(exist_ok=True, mode=0o700)
        (tmp / "manifest.json").write_bytes(manifest)
        (tmp / "manifest.sig").write_bytes(signature)
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
            (tmp / f"{rid}.enc").write_bytes(enc)
            (tmp / f"{rid}.sealed").write_bytes(sealed)
        del weights, state
        tmp.replace(self.release_dir)
        # Plaintext training state is no longer needed: drop the checkpoints.
        for f in (self.dir / "checkpoints").glob("*"):
            f.unlink()
        self._set_phase(
            "awaiting_approval" if self.approvals_missing() else "released",
            f"model {model_sha.hex()[:16]}…",
        )

    def manifest(self) -> tuple[bytes, bytes] | None:
        try:
            return (
                (self.release_dir / "manifest.json").read_bytes(),
                (self.release_dir / "manifest.sig").read_bytes(),
            )
        except OSError:
            return None

    def approvals_missing(self) -> list[str]:
        return [
            p for p in self.app.policy.release["approvals_required_from"] if p not in self.approvals
        ]

    def approve(self, party: str, manifest_sha256: bytes) -> pb.ApproveReleaseResponse:
        required = self.app.policy.release["approvals_required_from"]
        if party not in required:
            raise IngestError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{party!r} is not a data provider whose approval the policy requires",
            )
        m = self.manifest()
        if m is None or self.phase not in ("awaiting_approval", "released"):
            raise IngestError(
                grpc.StatusCode.FAILED_PRECONDITION, "there is no release to approve yet"
            )
        if hashlib.sha256(m[0]).digest() != manifest_sha256:
            raise IngestError(
                grpc.StatusCode.FAILED_PRECONDITION, "approval is for another manifest"
            )
        with self._cond:
            if party not in self.approvals:
                self.approvals.append(party)
        if self.phase == "awaiting_approval" and not self.approvals_missing():
            self._set_phase("released", f"approved by {', '.join(self.approvals)}")
        else:
            self._set_phase(self.phase, self.detail)  # persist the approval
        return pb.ApproveReleaseResponse(approvals=self.approvals, phase=self.phase)

    def fetch(self, party: str) -> pb.FetchReleaseResponse:
        if party not in self.app.policy.recipients:
            raise IngestError(
                grpc.StatusCode.PERMISSION_DENIED, f"{party!r} is not a recipient of this policy"
            )
        if self.phase != "released":
            raise IngestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"nothing is released yet (phase: {self.phase}"
                + (
                    f"; awaiting approval from {', '.join(self.approvals_missing())}"
                    if self.phase == "awaiting_approval"
                    else ""
                )
                + ")",
            )
        m = self.manifest()
        assert m is not None
        return pb.FetchReleaseResponse(
            manifest=m[0],
            manifest_signature=m[1],
            encapsulated_key=(self.release_dir / f"{party}.enc").read_bytes(),
            sealed_weights=(self.release_dir / f"{party}.sealed").read_bytes(),
        )

    # -- progress
    def watch(self, context: grpc.ServicerContext) -> Iterator[pb.TrainingEvent]:
        with self._cond:
            sent = len(self._events)
            current = pb.TrainingEvent(phase=self.phase, detail=self.detail, epsilon=-1.0)
        yield current
        while context.is_active():
            with self._cond:
                if sent >= len(self._events):
                    if self.phase in TERMINAL or self.phase == "awaiting_approval":
                        return
                    self._cond.wait(timeout=1.0)
                new = self._events[sent:]
                sent += len(new)
            yield from new
            if any(e.phase in TERMINAL for e in new):
                return
