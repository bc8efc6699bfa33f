"""Build a real consortium for tests: party keys, a policy, every signature, a live enclave."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cctrain.crypto.keys import PartyKeys
from cctrain.measure import code_measurement
from cctrain.policy import SignedPolicy, parse_policy

PROVIDERS = ("hospital-a", "hospital-b", "hospital-c")
RECIPIENT = "research-lab"


def policy_document(
    keys: dict[str, PartyKeys],
    *,
    hpke_for_all: bool = False,
    recipient: str = RECIPIENT,
    recipient_roles: Sequence[str] = ("recipient",),
    **overrides: Any,
) -> dict[str, Any]:
    """Every party of ``keys`` is a data provider but ``recipient``, which has
    ``recipient_roles`` (a model owner: ``("model_provider", "recipient")``) and is the one
    the release goes to. ``hpke_for_all``: every party lists its HPKE key (a consortium-held
    state key needs one per party), not only the recipient."""
    parties = []
    for pid, k in keys.items():
        entry: dict[str, Any] = {
            "id": pid,
            "roles": list(recipient_roles) if pid == recipient else ["data_provider"],
            "signing_key": k.signing_public,
        }
        if pid == recipient or hpke_for_all:
            entry["hpke_key"] = k.hpke_public
        parties.append(entry)
    doc: dict[str, Any] = {
        "version": 1,
        "name": "test-consortium",
        "parties": parties,
        "attestation": {
            "platforms": ["simulated"],
            "allow_simulated": True,
            "reference": {"simulated": {"measurements": [code_measurement().hex()]}},
        },
        "data": {
            "features": {"shape": [4], "dtype": "float32"},
            "labels": {"num_classes": 2},
            "max_rows": 1_000_000,
            "max_bytes": 8 << 20,
        },
        "training": {
            "model": {"name": "logreg"},
            "optimizer": {"name": "sgd", "lr": 0.1},
            "epochs": 1,
            "batch_size": 16,
        },
        "privacy": {"enabled": False},
        "release": {"recipients": [recipient], "metrics": ["train_loss"]},
    }
    for key, value in overrides.items():
        doc[key] = value
    if doc["privacy"].get("enabled") and "release" not in overrides:
        # Under DP the exact training loss is a non-private output: not released by default.
        doc["release"] = {"recipients": [recipient], "metrics": ["steps"]}
    return doc


@dataclass
class Consortium:
    root: Path
    keys: dict[str, PartyKeys]
    signed: SignedPolicy

    @property
    def policy_path(self) -> Path:
        return self.root / "policy.signed.json"


def make_consortium(
    root: Path,
    *,
    sign_all: bool = True,
    providers: tuple[str, ...] = PROVIDERS,
    hpke_for_all: bool = False,
    recipient: str = RECIPIENT,
    recipient_roles: Sequence[str] = ("recipient",),
    **overrides: Any,
) -> Consortium:
    """``providers``: the data providers (``recipient`` is always a party too, the last one;
    see :func:`policy_document`)."""
    keys = {pid: PartyKeys.generate(pid) for pid in (*providers, recipient)}
    doc = policy_document(
        keys,
        hpke_for_all=hpke_for_all,
        recipient=recipient,
        recipient_roles=recipient_roles,
        **overrides,
    )
    raw = json.dumps(doc, indent=2).encode()
    signed = SignedPolicy.new(parse_policy(raw, "json"))
    env = signed.envelope
    for pid, k in keys.items():
        if sign_all:
            env = env.sign(pid, k.signing_key)
    signed = SignedPolicy(env, signed.policy)
    root.mkdir(parents=True, exist_ok=True)
    (root / "policy.signed.json").write_text(env.to_json())
    return Consortium(root, keys, signed)


def another_policy(c: Consortium, **overrides: Any) -> SignedPolicy:
    """A policy the same parties signed, differing from ``c``'s (by default in one field)."""
    doc = policy_document(c.keys, **overrides)
    if not overrides:
        doc["training"]["epochs"] += 1
    signed = SignedPolicy.new(parse_policy(json.dumps(doc, indent=2).encode(), "json"))
    env = signed.envelope
    for pid, k in c.keys.items():
        env = env.sign(pid, k.signing_key)
    return SignedPolicy(env, signed.policy)


@contextmanager
def running_enclave(
    consortium: Consortium,
    state_dir: Path,
    *,
    clock: Callable[[], float] = time.time,
    model_source: Path | None = None,
    limits: Any = None,
    sealing: bool = True,
    cluster_listen: tuple[str, int] | None = None,
) -> Iterator[tuple[str, Any]]:
    """A real gRPC+TLS enclave server on a loopback port chosen by the OS.

    ``clock`` is the host's clock, which the host owns (tests move it to play the host);
    ``model_source`` is the custom model's source file, when the policy pins one;
    ``limits`` the server's :class:`~cctrain_enclave.limits.ServerLimits`; ``sealing=False``
    a simulated platform without a sealing key (as TDX); ``cluster_listen`` rank 0's
    rendezvous for a ``[cluster]`` policy (``app.cluster_address`` is where workers join).
    """
    from cctrain_enclave.app import AppConfig
    from cctrain_enclave.server import create_server

    config = AppConfig(
        policy_path=consortium.policy_path,
        state_dir=state_dir,
        platform="simulated",
        clock=clock,
        model_source=model_source,
        sealing=sealing,
        cluster_listen=cluster_listen,
    )
    server, port, app = create_server(config, port=0, limits=limits)
    server.start()
    try:
        yield f"127.0.0.1:{port}", app
    finally:
        server.stop(None).wait()
        app.shutdown()
