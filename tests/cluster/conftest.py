"""A real cluster on loopback: rank 0 in the test's process, each worker its own
``cctrain-enclave worker`` process, every rank attested to every other."""

from __future__ import annotations

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
        procs.append(
            subprocess.Popen(
                argv, env=_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
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
