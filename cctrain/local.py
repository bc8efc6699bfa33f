"""Run an enclave as a local child process: the local default for the demo, tests and benchmarks.

This is operator tooling, not trusted code: it only starts ``python -m cctrain_enclave serve``
and waits for the endpoint file the server writes once it listens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from cctrain.errors import CctrainError


class _ChildProcess:
    """What both local processes share: the process, its log, a graceful stop, ``with``."""

    #: seconds between SIGTERM and SIGKILL in :meth:`stop`
    GRACE_S = 30.0

    def __init__(
        self, argv: list[str], *, log: Path, state_dir: Path, env: Mapping[str, str] | None
    ) -> None:
        self.argv, self.log, self.state_dir = argv, Path(log), Path(state_dir)
        self.env = dict(env) if env is not None else None
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                self.argv, stdout=fh, stderr=subprocess.STDOUT, env=self.env
            )
        return self.proc

    def start(self) -> object:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        """The process's id."""
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        """Whether the process is still alive."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, for crash-safety tests."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, *, grace_s: float | None = None) -> int | None:
        """SIGTERM (graceful), SIGKILL after ``grace_s`` (default :attr:`GRACE_S`); the exit
        status, or None when it never started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.GRACE_S if grace_s is None else grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalEnclave(_ChildProcess):
    """``with LocalEnclave(policy=..., state_dir=..., log=...) as enclave: enclave.address``."""

    def __init__(
        self,
        *,
        policy: Path,
        state_dir: Path,
        log: Path,
        platform: str = "simulated",
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        python: str | None = None,
    ) -> None:
        self.policy = Path(policy)
        argv = [
            python or sys.executable, "-m", "cctrain_enclave", "serve", "--policy", str(self.policy),
            "--state-dir", str(state_dir), "--platform", platform, *extra_args,
        ]  # fmt: skip
        super().__init__(argv, log=log, state_dir=state_dir, env=env)
        self.address = ""
        #: ``host:port`` of rank 0's cluster rendezvous (``--cluster-listen``), else None.
        self.cluster_rendezvous: str | None = None
        self.startup_s = 0.0

    def start(self, *, timeout: float = 120.0) -> str:
        """Start the server and return its ``host:port`` once it listens."""
        endpoint = self.state_dir / "endpoint.json"
        endpoint.unlink(missing_ok=True)
        t0 = time.perf_counter()
        proc = self._spawn()
        deadline = time.monotonic() + timeout
        while not endpoint.exists():
            if proc.poll() is not None:
                raise CctrainError(f"the enclave exited:\n{self.log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise CctrainError(f"the enclave did not start within {timeout:.0f} s")
            time.sleep(0.02)
        doc = json.loads(endpoint.read_text())
        self.address = str(doc["address"])
        self.cluster_rendezvous = doc.get("cluster_rendezvous")
        self.startup_s = time.perf_counter() - t0
        return self.address


class LocalWorker(_ChildProcess):
    """A cluster worker as a local child process: ``cctrain-enclave worker --rank R``.

    ``with LocalWorker(policy=..., rank=1, rendezvous=enclave.cluster_rendezvous, ...)``;
    :meth:`wait` returns its exit status once the run ended (it exits by itself then)."""

    GRACE_S = 10.0

    def __init__(
        self,
        *,
        policy: Path,
        rank: int,
        rendezvous: str,
        state_dir: Path,
        log: Path,
        platform: str = "simulated",
        env: Mapping[str, str] | None = None,
        python: str | None = None,
    ) -> None:
        argv = [
            python or sys.executable, "-m", "cctrain_enclave", "worker", "--policy", str(policy),
            "--rank", str(rank), "--rendezvous", rendezvous, "--platform", platform,
            "--state-dir", str(state_dir),
        ]  # fmt: skip
        super().__init__(argv, log=log, state_dir=state_dir, env=env)

    def start(self) -> None:
        """Start the worker process (it joins rank 0 and waits for training)."""
        self._spawn()

    def wait(self, *, timeout: float = 120.0) -> int:
        """Wait for the worker to end (it does once the run ended); its exit status."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise CctrainError(
                f"cluster worker did not end within {timeout:.0f} s:\n"
                f"{self.log.read_text()[-2000:]}"
            ) from None


def environment_with(**updates: str) -> dict[str, str]:
    return dict(os.environ, **updates)
