"""A real cluster on loopback: rank 0 in the test's process, each worker its own
``cctrain-enclave worker`` process, every rank attested to every other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from cctrain.policy import Policy  # noqa: E402
from tests.conftest import REPO  # noqa: E402

#: DP for cluster tests: the secure noise, cctrain's fast clipping (the one a cluster runs).
DP = {
    "enabled": True,
    "target_epsilon": 4.0,
    "delta": 1e-5,
    "max_grad_norm": 1.0,
    "accountant": "rdp",
    "noise_source": "csprng",
    "grad_sample_mode": "fast",
}


def worker_argv(policy_path: Path, rank: int, port: int, state_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cctrain_enclave",
        "worker",
        "--policy",
        str(policy_path),
        "--rank",
        str(rank),
        "--rendezvous",
        f"127.0.0.1:{port}",
        "--platform",
        "simulated",
        "--state-dir",
        str(state_dir),
    ]


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO), str(REPO / "enclave"), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, GLOO_SOCKET_IFNAME="lo")


# ----------------------------------------------------------------------- warm worker processes
#
# A worker process spends most of its start importing torch (seconds on 2 cores), and the
# cluster tests start ~50 of them. So each worker comes from a process that imported torch
# and the enclave's trainer *before* it was needed, then waits on its stdin for the command
# line: it runs the very `python -m cctrain_enclave ARGS` entry point (runpy), in the process
# the test holds, so killing it kills the worker. Only the imports happen early; nothing of a
# worker's state (keys, nonce, store, links) exists before its command line arrives.

_WARM = """
import json, runpy, sys
import torch  # noqa: F401 - what a worker spends its start on
import cctrain_enclave.cli, cctrain_enclave.cluster.parallel, cctrain_enclave.trainer.train  # noqa
line = sys.stdin.readline()
if not line:
    sys.exit(0)
sys.argv = [sys.executable, *json.loads(line)]
runpy.run_module("cctrain_enclave", run_name="__main__", alter_sys=True)
"""

#: Started, importing, waiting for their command line (at most two: a 3-rank test's workers).
_ready: list[subprocess.Popen[str]] = []
_PREFIX = [sys.executable, "-m", "cctrain_enclave"]


def _warm() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WARM],
        env=_env(),
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def spawn_worker(argv: list[str]) -> subprocess.Popen[str]:
    """``subprocess.Popen(argv, env=_env(), text=True, stdout=PIPE, stderr=STDOUT)``, from a
    warm process when ``argv`` is ``python -m cctrain_enclave ...``; another one starts
    warming for the next worker."""
    if argv[: len(_PREFIX)] != _PREFIX:
        return subprocess.Popen(
            argv, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    while _ready and _ready[0].poll() is not None:  # one that died while waiting
        _ready.pop(0).communicate()
    proc = _ready.pop(0) if _ready else _warm()
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(argv[len(_PREFIX) :]) + "\n")
    proc.stdin.close()
    proc.stdin = None  # communicate() would flush it
    while len(_ready) < 2:
        _ready.append(_warm())
    return proc


@pytest.fixture(scope="session", autouse=True)
def _no_warm_workers_left() -> Iterator[None]:
    yield
    while _ready:
        proc = _ready.pop()
        assert proc.stdin is not None
        proc.stdin.close()  # EOF: it exits 0 without running anything
        proc.stdin = None
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@contextmanager
def cluster(
    policy: Policy, policy_path: Path, tmp: Path, *, worker_argvs: Any = None
) -> Iterator[tuple[Any, list[subprocess.Popen[str]]]]:
    """Rank 0's formed session and the workers' processes (which exit when the run ends)."""
    from cctrain_enclave.cluster.handshake import form_cluster, open_rendezvous
    from cctrain_enclave.providers.simulated import SimulatedProvider

    store = open_rendezvous(policy, rank=0, host="127.0.0.1", port=0)
    world = int(policy.cluster["ranks"])
    procs = []
    for r in range(1, world):
        argv = worker_argv(policy_path, r, store.port, tmp / f"rank{r}")
        if worker_argvs is not None:
            argv = worker_argvs(r, argv)
        procs.append(spawn_worker(argv))
    session = None
    try:
        session = form_cluster(
            policy=policy,
            provider=SimulatedProvider(tmp / "rank0"),
            rank=0,
            store=store,
            host="127.0.0.1",
        )
        yield session, procs
    finally:
        if session is not None:
            session.close()
        for p in procs:
            try:
                out, _ = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            p.output = out  # type: ignore[attr-defined]
