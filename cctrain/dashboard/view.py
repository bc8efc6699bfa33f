"""What one party may see of a run, gathered through its attested session.

A :class:`PartyView` owns the party's SDK session and two threads: a poller that every
``interval`` seconds fetches the status, this party's receipts, the journal (verified, and
checked to extend what this party saw before) and, once there is one, the release; and a
watcher that follows the training stream for the loss and ε points. The HTTP server only
reads :meth:`PartyView.snapshot`: a browser request never reaches the enclave.

Nothing the enclave or host says is trusted for being said: the journal, receipts and
release go through the SDK's checks, and a check that fails stops the view (``alarm``)
rather than showing unverified data.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cctrain.client import DataOwner, Recipient, TrainingProgress
from cctrain.crypto.keys import PartyKeys
from cctrain.errors import CctrainError, EnclaveUnavailableError
from cctrain.journal import KINDS, describe, summary_line
from cctrain.policy import Party, SignedPolicy

log = logging.getLogger(__name__)

#: Phases after which nothing changes any more (the watcher stops, the poller slows down).
FINAL = ("released", "failed", "expired", "vetoed")
#: Chart points kept (a long run is thinned to every other point beyond this).
MAX_POINTS = 2000


class PartySession(DataOwner, Recipient):
    """A session that can do what any role of the party needs here: list its receipts
    (providers) and fetch the release (recipients)."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def policy_summary(sp: SignedPolicy) -> dict[str, Any]:
    """What every party of the policy already holds: names, roles, the rules (no key bytes
    beyond the public keys' fingerprints)."""
    p = sp.policy
    privacy = dict(p.privacy)
    return {
        "name": p.name,
        "digest": sp.digest.hex(),
        "expires": p.expires.isoformat() if p.expires else None,
        "parties": [
            {
                "id": party.id,
                "name": party.name,
                "roles": sorted(party.roles),
                "signing_key": party.signing_key,
            }
            for party in p.parties
        ],
        "platforms": list(p.attestation.get("platforms", [])),
        "allow_simulated": bool(p.attestation.get("allow_simulated", False)),
        "model": dict(p.training.get("model", {})).get("name"),
        "epochs": p.training.get("epochs"),
        "batch_size": p.training.get("batch_size"),
        "dp": bool(privacy.get("enabled")),
        "target_epsilon": privacy.get("target_epsilon"),
        "delta": privacy.get("delta"),
        "recipients": list(p.release.get("recipients", [])),
        "metrics": list(p.release.get("metrics", [])),
    }


class PartyView:
    """The party's live view of one run (see the module docstring)."""

    def __init__(
        self,
        address: str,
        *,
        policy: SignedPolicy | str | Path,
        key: PartyKeys | str | Path,
        allow_simulated: bool = False,
        state_dir: str | Path | None = None,
        interval: float = 1.0,
        connect: Callable[..., PartySession] = PartySession,
    ) -> None:
        """Attest the enclave now (raising the SDK's errors: the caller reports them);
        :meth:`start` begins polling."""
        self.address = address
        self.signed_policy = (
            policy if isinstance(policy, SignedPolicy) else SignedPolicy.load(Path(policy))
        )
        self.keys = key if isinstance(key, PartyKeys) else PartyKeys.load(Path(key))
        self.allow_simulated = allow_simulated
        self.state_dir = state_dir
        self.interval = interval
        self._connect = connect
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._points: dict[int, dict[str, Any]] = {}
        self._release: dict[str, Any] | None = None
        self._release_error: str | None = None
        self._state: dict[str, Any] = {}
        self._error: str | None = None
        self._alarm: str | None = None
        self._session: PartySession | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self.party = self.signed_policy.policy.party(self.keys.party_id)
        self._attested: dict[str, Any] = {}
        self._policy = policy_summary(self.signed_policy)

    def _open(self) -> PartySession:
        return self._connect(
            self.address,
            policy=self.signed_policy,
            key=self.keys,
            allow_simulated=self.allow_simulated,
            state_dir=self.state_dir,
        )

    # -- lifecycle
    def start(self) -> None:
        """Attest the enclave and take the first look (raising the SDK's errors, for the
        caller to report), then keep polling and watching in the background.

        The session lives on the poller's thread from its attestation to its close: what
        the party remembers (:mod:`cctrain.memory`) is an SQLite file, used by one thread."""
        poller = threading.Thread(target=self._poll_thread, name="cctrain-dashboard-poll")
        poller.daemon = True
        poller.start()
        self._threads.append(poller)
        self._ready.wait()
        if self._start_error is not None:
            poller.join()
            raise self._start_error
        watcher = threading.Thread(target=self._watch_loop, name="cctrain-dashboard-watch")
        watcher.daemon = True
        watcher.start()
        self._threads.append(watcher)

    def close(self) -> None:
        """Stop: the poller closes the session, which ends a watch stream in the channel."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=70)  # an RPC in flight ends within its own timeout

    def __enter__(self) -> PartyView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the server reads
    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            points = sorted(self._points.values(), key=lambda p: p["step"])
            party = self.party
            return {
                "party": {"id": party.id, "roles": sorted(party.roles)} if party else None,
                "attested": self._attested,
                "policy": self._policy,
                **self._state,
                "progress": {"points": points, "last": points[-1] if points else None},
                "release": self._release,
                "release_error": self._release_error,
                "error": self._error,
                "alarm": self._alarm,
            }

    # -- polling
    def _poll_thread(self) -> None:
        try:
            session = self._open()
        except BaseException as exc:  # noqa: BLE001 (handed to start(), which raises it)
            self._start_error = exc
            self._ready.set()
            return
        self._session = session
        party = session.policy.party(self.keys.party_id)
        assert party is not None  # the session checked the key is a party's
        self.party = party
        self._attested = {
            "address": self.address,
            "claims": session.enclave.claims.to_json(),
            "simulated": session.enclave.claims.platform == "simulated",
            "enclave_signing_key": session.enclave.signing_public_key.hex(),
            "at": _now(),
        }
        self._poll_once()
        self._ready.set()
        try:
            while not self._stop.wait(self.interval):
                if self._alarm is not None:
                    break
                self._poll_once()
        finally:
            with self._lock:
                last, self._session = self._session, None
            if last is not None:
                last.close()

    def _poll_once(self) -> None:
        try:
            session = self._session
            if session is None:
                # The enclave went away (a restart has a new TLS key): attest it afresh.
                session = self._open()
                with self._lock:
                    self._session = session
            state = self._gather(session)
        except EnclaveUnavailableError as exc:
            with self._lock:
                self._error = f"enclave unreachable: {exc}"
                old, self._session = self._session, None
            if old is not None:
                old.close()
            return
        except CctrainError as exc:
            # A check failed (journal, receipt, attestation, fork or rollback): stop
            # showing this enclave's word as verified.
            log.warning("dashboard: verification failed: %s", exc)
            with self._lock:
                self._alarm = f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            self._state = state
            self._error = None

    @property
    def _me(self) -> Party:
        assert self.party is not None  # set once the session attested (a party's key)
        return self.party

    def _gather(self, s: PartySession) -> dict[str, Any]:
        st = s.status()
        view = s.verified_journal()
        entries = [describe(r) for r in s.journal_records]
        for e in entries:
            e["label"] = KINDS[e["kind"]]
            line = summary_line(e)
            prefix = f"#{e['seq']:<4} {e['time']}  {e['label']:<15} "
            e["text"] = line[len(prefix) :] if line.startswith(prefix) else line
            if e["kind"] == "checkpoint":
                self._add_point(step=e["step"], epsilon=e["epsilon"])
        receipts: list[dict[str, Any]] = []
        if self._me.is_provider or "model_provider" in self._me.roles:
            receipts = [
                {
                    "shard": r.shard_id,
                    "rows": r.rows,
                    "bytes": r.plaintext_size,
                    "commitment": r.commitment.hex(),
                    "journal_seq": r.journal_seq,
                    "accepted": _dt.datetime.fromtimestamp(
                        r.accepted_unix_ms / 1000, _dt.timezone.utc
                    ).isoformat(timespec="seconds"),
                }
                for r in s.receipts()
            ]
        unsealed = self._release is not None and self._release["unsealed"]
        want_unseal = self._me.is_recipient and st.phase == "released"
        if st.manifest and (self._release is None or (want_unseal and not unsealed)):
            self._load_release(s, st.phase)
        return {
            "status": {
                "phase": st.phase,
                "detail": st.detail,
                "locked": st.locked,
                "providers_uploaded": list(st.providers_uploaded),
                "providers_missing": list(st.providers_missing),
                "approvals": list(st.approvals),
                "approvals_missing": list(st.approvals_missing),
                "epsilon_spent": st.epsilon_spent if st.epsilon_spent >= 0 else None,
            },
            "journal": {
                "verified": True,
                "phase": view.phase,
                "head": view.head.to_json(),
                "entries": entries,
            },
            "receipts": receipts,
            "updated": _now(),
        }

    def _load_release(self, s: PartySession, phase: str) -> None:
        """The verified manifest (what providers approve); for a recipient once released,
        the release itself fetched, verified and unsealed (the weights stay in memory only
        to check their hash: the page shows the manifest)."""
        try:
            if self._me.is_recipient and phase == "released":
                model = s.fetch_model()
                self._release = {
                    "verified": True,
                    "unsealed": True,
                    "model_sha256": model.manifest["model_sha256"],
                    "approved_by": list(model.release.approved_by),
                    "manifest": model.manifest,
                }
            else:
                rel = s.release_manifest()
                self._release = {
                    "verified": True,
                    "unsealed": False,
                    "model_sha256": rel.manifest["model_sha256"],
                    "approved_by": list(rel.approved_by),
                    "manifest": rel.manifest,
                }
            self._release_error = None
        except EnclaveUnavailableError:
            raise
        except CctrainError as exc:
            self._release = None
            self._release_error = f"{type(exc).__name__}: {exc}"

    # -- the training stream
    def _add_point(
        self,
        *,
        step: int,
        epsilon: float | None = None,
        loss: float | None = None,
        epoch: int | None = None,
        total_steps: int | None = None,
    ) -> None:
        with self._lock:
            p = self._points.setdefault(step, {"step": step})
            for k, v in (
                ("epsilon", epsilon),
                ("loss", loss),
                ("epoch", epoch),
                ("total_steps", total_steps),
            ):
                if v is not None:
                    p[k] = v
            if len(self._points) > MAX_POINTS:
                for old in sorted(self._points)[1:-1:2]:
                    del self._points[old]

    def _record(self, ev: TrainingProgress) -> None:
        if ev.total_steps:
            self._add_point(
                step=ev.step,
                epsilon=ev.epsilon,
                loss=ev.loss,
                epoch=ev.epoch,
                total_steps=ev.total_steps,
            )

    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            session = self._session
            phase = self._state.get("status", {}).get("phase")
            if session is None or session.locked or phase in FINAL:
                if self._stop.wait(self.interval):
                    return
                continue
            try:
                for ev in session.watch():
                    self._record(ev)
                    if self._stop.is_set():
                        return
            except CctrainError as exc:
                log.info("dashboard: training stream ended: %s", exc)
            except ValueError:
                return  # the session was closed under the stream (close())
            if self._stop.wait(self.interval):
                return
