"""The start-time training-plan check, in a child process, so the serving process never
imports torch before training (torch and Opacus alone are 300+ MB of resident memory, more
than a 64 MiB shard's whole ingest budget).

The parent (:class:`cctrain_enclave.app.EnclaveApp`) forks the child once it has the
verified policy and the pinned model source, generates its TLS identity meanwhile, and waits
for the verdict before it opens the state (no genesis for a plan that cannot run) or serves
anything: an enclave whose plan cannot run still refuses to start, with the same errors.

The child writes one JSON line on a pipe: ``{"ok": true}`` or ``{"error": KIND, "message":
..., "problems": [...]}`` with KIND one of ``trainer``, ``device``, ``policy``. Nothing
private passes: the policy is public to every party, the model source is pinned by it, and
no data exists yet.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from typing import Any

from cctrain.errors import PolicyError
from cctrain_enclave.errors import TrainerUnavailableError, TrainingDeviceError


def check_in_process(policy: Any, *, custom_model_source: bytes | None, simulated: bool) -> None:
    """The check itself (raises the error a refused start raises)."""
    from cctrain.policy import gpu_allowed
    from cctrain_enclave.app import require_trainer

    require_trainer(formats=tuple(policy.data["formats"]))
    from cctrain_enclave.trainer.precheck import check_training_plan
    from cctrain_enclave.trainer.train import resolve_device

    try:
        device = resolve_device(
            str(policy.training.get("device", "cpu")), allow_gpu=gpu_allowed(policy)
        )
    except TrainingDeviceError as exc:
        raise TrainingDeviceError(f"refusing to start: {exc}") from None
    problems = check_training_plan(
        policy,
        custom_model_source=custom_model_source,
        simulated_platform=simulated,
        device=device.type,
    )
    if problems:
        raise PolicyError("the policy's training plan cannot run; refusing to start", problems)


class PlanCheck:
    """The check running in a forked child; :meth:`result` waits for it and raises its error.

    Forked, not a fresh interpreter: the child starts with every module the serving process
    imported already (a fresh one would import cctrain, grpc and numpy again: seconds on a
    loaded machine, at every serve start), imports only the trainer itself, and exits. The
    fork happens before the gRPC server or any thread of the app exists."""

    def __init__(self, policy: Any, *, custom_model_source: bytes | None, simulated: bool) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: check, write one JSON line, exit without the parent's atexit
            code = 1
            try:
                os.close(read_fd)
                verdict = _verdict(policy, custom_model_source, simulated)
                with os.fdopen(write_fd, "wb") as out:
                    out.write(json.dumps(verdict).encode() + b"\n")
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        self._pid, self._read = pid, os.fdopen(read_fd, "rb")
        self._reaped = False

    def result(self) -> None:
        """Wait for the verdict: return if the plan can run, raise the refusal otherwise."""
        try:
            out = self._read.read()
        finally:
            self._read.close()
            status = self._reap()
        try:
            verdict = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError, UnicodeDecodeError):
            raise TrainerUnavailableError(
                f"the training-plan check failed (child wait status {status})"
            ) from None
        if verdict.get("ok"):
            return
        kind, message = verdict.get("error"), str(verdict.get("message", ""))
        if kind == "trainer":
            raise TrainerUnavailableError(message)
        if kind == "device":
            raise TrainingDeviceError(message)
        raise PolicyError(message, [str(p) for p in verdict.get("problems", [])])

    def cancel(self) -> None:
        """Stop the child (the start-up failed for another reason first)."""
        if not self._reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        self._read.close()
        self._reap()

    def _reap(self) -> int:
        if self._reaped:
            return 0
        self._reaped = True
        return os.waitpid(self._pid, 0)[1]


def _verdict(policy: Any, custom_model_source: bytes | None, simulated: bool) -> dict[str, Any]:
    try:
        check_in_process(policy, custom_model_source=custom_model_source, simulated=simulated)
    except TrainerUnavailableError as exc:
        return {"error": "trainer", "message": str(exc)}
    except TrainingDeviceError as exc:
        return {"error": "device", "message": str(exc)}
    except PolicyError as exc:
        # The message without its problem list (the parent's PolicyError adds it again).
        message = exc.args[0].split(":\n  - ")[0]
        return {"error": "policy", "message": message, "problems": list(exc.problems)}
    return {"ok": True}
