"""Forming a cluster: every rank attests to every other before any key or row moves.

The rendezvous is torch.distributed's ``TCPStore``, served by rank 0 on the host's network:
**untrusted**. It carries only what is public or authenticated:

1. each rank publishes a hello (its rank, a fresh 32-byte nonce, a fresh X25519 link key, the
   policy digest it runs under);
2. every rank computes the joint nonce, SHA-256 over the policy digest and every hello in rank
   order, so each verifier's own nonce is in it (freshness for everyone);
3. each rank publishes evidence whose report_data is
   :func:`cctrain.attestation.binding.cluster_report_data` (policy digest, joint nonce, its
   rank, its link key);
4. each rank verifies every other rank's evidence with the attestation pipeline against the
   same signed policy: rank 0 against ``attestation.reference`` (what the parties accepted),
   the other ranks against ``cluster.measurements`` when the policy names them;
5. the link keys (:func:`.links.derive_link_keys`) come from the attested X25519 keys.

Any failure raises :class:`ClusterError` naming the rank and why; nothing is retried with a
weaker check. Only then is the gloo process group created, on a prefix of the same store
(gloo's own rendezvous data is public addresses; what the ranks send is sealed).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cctrain.attestation.base import Evidence
from cctrain.attestation.binding import NONCE_SIZE, cluster_report_data
from cctrain.attestation.cluster import verify_rank_evidence
from cctrain.errors import AttestationError, CctrainError
from cctrain.policy import Policy
from cctrain.v1 import enclave_pb2 as pb

from .links import GlooTransport, LinkKeys, SecureLinks, derive_link_keys

__all__ = [
    "ClusterError",
    "ClusterMember",
    "ClusterSession",
    "form_cluster",
    "joint_nonce_of",
    "open_rendezvous",
]

log = logging.getLogger("cctrain.enclave.cluster")

JOINT_NONCE_TAG = b"cctrain/cluster-nonce/v1"


class ClusterError(CctrainError):
    """The cluster could not be formed: a rank's evidence, hello or timing failed."""


@dataclass(frozen=True)
class ClusterMember:
    """A rank as the others verified it (what the manifest lists)."""

    rank: int
    platform: str
    measurement: bytes
    link_public_key: bytes
    evidence: Evidence

    @property
    def evidence_sha256(self) -> str:
        from cctrain.release import evidence_digest

        return evidence_digest(self.evidence).hex()

    def describe(self) -> dict[str, Any]:
        from cctrain.release import evidence_to_json

        return {
            "rank": self.rank,
            "link_public_key": self.link_public_key.hex(),
            "evidence": evidence_to_json(self.evidence),
            "evidence_sha256": self.evidence_sha256,
        }


@dataclass
class ClusterSession:
    """This rank's view of a formed cluster: every member verified, the links keyed."""

    rank: int
    world_size: int
    joint_nonce: bytes
    members: list[ClusterMember]
    links: SecureLinks
    #: The rendezvous store (rank 0 serves it): kept alive as long as the process group.
    store: Any = None

    def describe(self) -> dict[str, Any]:
        """The manifest's ``cluster`` entry: enough for anyone to re-verify every rank."""
        return {
            "ranks": self.world_size,
            "joint_nonce": self.joint_nonce.hex(),
            "members": [m.describe() for m in self.members],
        }

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def joint_nonce_of(policy_digest: bytes, hellos: Sequence[bytes]) -> bytes:
    h = hashlib.sha256(JOINT_NONCE_TAG)
    h.update(struct.pack(">I", len(policy_digest)) + policy_digest)
    for hello in hellos:
        h.update(struct.pack(">I", len(hello)) + hello)
    return h.digest()


def _parse_hello(raw: bytes, rank: int, policy_digest: bytes) -> tuple[bytes, bytes]:
    try:
        hello = json.loads(raw)
        nonce = bytes.fromhex(hello["nonce"])
        key = bytes.fromhex(hello["link_key"])
        digest = bytes.fromhex(hello["policy"])
        claimed = hello["rank"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterError(f"rank {rank}'s hello is malformed: {exc}") from None
    if claimed != rank or len(nonce) != NONCE_SIZE or len(key) != 32:
        raise ClusterError(f"rank {rank}'s hello is malformed (rank, nonce or key size)")
    if digest != policy_digest:
        raise ClusterError(
            f"rank {rank} runs under another policy ({digest.hex()[:16]}…, this rank "
            f"{policy_digest.hex()[:16]}…): every rank must be started with the same signed policy"
        )
    return nonce, key


def _line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _store_get(store: Any, key: str, what: str) -> bytes:
    try:
        return bytes(store.get(key))
    except RuntimeError as exc:  # the store's timeout, or rank 0 gone
        raise ClusterError(f"{what}: {str(exc).splitlines()[0][:200]}") from None


def open_rendezvous(policy: Policy, *, rank: int, host: str, port: int) -> Any:
    """The rendezvous store: rank 0 serves it at ``host:port`` (``port`` 0: any free port,
    then ``store.port``), the others connect to it."""
    import torch.distributed as dist

    world = int(policy.cluster["ranks"])
    if not 0 <= rank < world:
        raise ClusterError(f"rank {rank} is not in this policy's cluster of {world} ranks")
    timeout = _dt.timedelta(seconds=float(policy.cluster["timeout_s"]))
    try:
        return dist.TCPStore(
            host, port, world, is_master=rank == 0, timeout=timeout, wait_for_workers=False
        )
    except (RuntimeError, OSError) as exc:
        raise ClusterError(
            f"cannot {'serve' if rank == 0 else 'reach'} the cluster rendezvous at "
            f"{host}:{port}: {str(exc).splitlines()[0][:200]}"
        ) from None


def form_cluster(
    *,
    policy: Policy,
    provider: Any,
    rank: int,
    store: Any,
    host: str,
    now: _dt.datetime | None = None,
) -> ClusterSession:
    """Attest every rank to every other over the rendezvous ``store`` (of
    :func:`open_rendezvous`), key the links, create the gloo process group. Blocks up to
    ``cluster.timeout_s`` for the other ranks."""
    import torch.distributed as dist

    world = int(policy.cluster["ranks"])
    timeout = _dt.timedelta(seconds=float(policy.cluster["timeout_s"]))
    policy_digest = policy.digest
    private = X25519PrivateKey.generate()
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    hello = json.dumps(
        {
            "rank": rank,
            "nonce": os.urandom(NONCE_SIZE).hex(),
            "link_key": public.hex(),
            "policy": policy_digest.hex(),
        },
        sort_keys=True,
    ).encode()
    store.set(f"hello/{rank}", hello)
    if rank != 0:  # a worker may start long before rank 0 starts training: it waits
        while True:
            try:
                store.wait(["hello/0"], timeout)
                break
            except RuntimeError as exc:
                if "timeout" not in str(exc).lower() and "timed out" not in str(exc).lower():
                    raise ClusterError(f"rank 0's rendezvous went away: {_line(exc)}") from None
                log.info("rank %d: waiting for rank 0 to start training", rank)
    hellos = [
        hello if r == rank else _store_get(store, f"hello/{r}", f"rank {r} did not join")
        for r in range(world)
    ]
    keys = {r: _parse_hello(hellos[r], r, policy_digest)[1] for r in range(world)}
    joint = joint_nonce_of(policy_digest, hellos)
    evidence = provider.get_evidence(
        cluster_report_data(
            policy_digest=policy_digest, joint_nonce=joint, rank=rank, link_public_key=public
        )
    )
    from cctrain.protocol import evidence_from_pb, evidence_to_pb

    own = evidence_to_pb(evidence).SerializeToString()
    store.set(f"evidence/{rank}", own)
    members: list[ClusterMember] = []
    for r in range(world):
        raw = own if r == rank else _store_get(store, f"evidence/{r}", f"rank {r} sent no evidence")
        try:
            msg = pb.Evidence()
            msg.ParseFromString(raw)
            ev: Evidence = evidence_from_pb(msg)
            claims = verify_rank_evidence(
                ev, policy, rank=r, joint_nonce=joint, link_public_key=keys[r], now=now
            )
        except (AttestationError, ValueError) as exc:
            raise ClusterError(f"rank {r}'s evidence is refused: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and kin: bad input
            raise ClusterError(f"rank {r}'s evidence cannot be parsed: {exc}") from None
        members.append(ClusterMember(r, claims.platform, claims.measurement, keys[r], ev))
    link_keys: dict[int, LinkKeys] = {
        r: derive_link_keys(
            private, keys[r], me=rank, peer=r, joint_nonce=joint, policy_digest=policy_digest
        )
        for r in range(world)
        if r != rank
    }
    if host in ("127.0.0.1", "localhost") and "GLOO_SOCKET_IFNAME" not in os.environ:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # a loopback cluster: gloo on loopback too
    try:
        dist.init_process_group(
            "gloo",
            store=dist.PrefixStore("gloo", store),
            rank=rank,
            world_size=world,
            timeout=timeout,
        )
    except (RuntimeError, ValueError) as exc:
        raise ClusterError(f"the process group did not form: {str(exc).splitlines()[0]}") from None
    log.info("cluster formed: %d ranks attested, links keyed (this is rank %d)", world, rank)
    links = SecureLinks(rank, link_keys, GlooTransport(), context=policy_digest + joint)
    return ClusterSession(rank, world, joint, members, links, store)
