"""Encrypted, ordered links between the ranks of a cluster (DESIGN.md, "Scale-out").

The ranks talk over torch.distributed's gloo point-to-point ``send``/``recv``, whose bytes
cross the network in clear (gloo in the torch CPU wheel has no TLS transport). Every message
is therefore sealed before gloo sees it:

* per direction, a 256-bit AES-GCM key from HKDF-SHA256 over the X25519 secret of the two
  ranks' link keys (each bound into its attestation evidence), salted with the cluster's
  joint nonce (:func:`derive_link_keys`);
* a 96-bit nonce that is the direction's message counter: each key encrypts each counter once,
  and the receiver decrypts only with the counter it expects next, so a replayed, reordered,
  dropped or injected message fails authentication;
* associated data binding the cluster (policy digest, joint nonce), the direction, the
  counter and the message kind (``"step"``, ``"sums"``, ``"rows"``...).

A failed authentication, an over-long frame, a message of another kind than the protocol
expects, or a peer that went away raises :class:`LinkError`: the step (and the run) stops;
nothing is retried and no message is ever used unauthenticated.

Messages are a JSON header plus raw arrays (:func:`pack` / :func:`unpack`): no pickle.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cctrain.errors import CctrainError

__all__ = [
    "LinkError",
    "LinkKeys",
    "SecureLinks",
    "Transport",
    "derive_link_keys",
    "pack",
    "unpack",
]

LINK_INFO = b"cctrain/link/v1"
#: The largest frame a rank accepts (a sealed message): larger is an error, not an allocation.
DEFAULT_MAX_FRAME = 256 << 20
#: dtypes a link message may carry.
_DTYPES = frozenset({"float32", "float64", "int64", "int32", "uint8", "bool", "float16"})
#: numpy's own limit on an array's dimensions.
_MAX_DIMS = 32


class LinkError(CctrainError):
    """A message between ranks failed authentication, came out of order or too large, or a
    rank went away: the run stops (and resumes from its last checkpoint on restart)."""


@dataclass(frozen=True)
class LinkKeys:
    """One rank's two AES-256-GCM keys with one peer."""

    send: bytes
    recv: bytes


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def derive_link_keys(
    private_key: X25519PrivateKey,
    peer_public_key: bytes,
    *,
    me: int,
    peer: int,
    joint_nonce: bytes,
    policy_digest: bytes,
) -> LinkKeys:
    """The per-direction keys of the link between ranks ``me`` and ``peer``: HKDF-SHA256 over
    their X25519 secret, salt the joint nonce, info naming the policy and the two ranks."""
    if me == peer:
        raise ValueError("a rank has no link to itself")
    shared = private_key.exchange(X25519PublicKey.from_public_bytes(peer_public_key))
    lo, hi = min(me, peer), max(me, peer)
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=joint_nonce,
        info=LINK_INFO + _lp(policy_digest) + struct.pack(">II", lo, hi),
    ).derive(shared)
    up, down = okm[:32], okm[32:]  # lo -> hi, hi -> lo
    return LinkKeys(send=up, recv=down) if me == lo else LinkKeys(send=down, recv=up)


class Transport(Protocol):
    """Moves opaque frames between ranks (gloo in production)."""

    def send(self, peer: int, frame: bytes) -> None: ...

    def recv(self, peer: int, max_bytes: int) -> bytes: ...


class GlooTransport:
    """Frames over torch.distributed point-to-point: a length (int64), then the bytes."""

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        self._torch, self._dist = torch, dist

    def send(self, peer: int, frame: bytes) -> None:
        torch, dist = self._torch, self._dist
        try:
            dist.send(torch.tensor([len(frame)], dtype=torch.int64), dst=peer)
            if frame:
                dist.send(torch.frombuffer(bytearray(frame), dtype=torch.uint8), dst=peer)
        except RuntimeError as exc:
            raise LinkError(f"rank {peer} cannot be reached: {_first_line(exc)}") from None

    def recv(self, peer: int, max_bytes: int) -> bytes:
        torch, dist = self._torch, self._dist
        try:
            size = torch.zeros(1, dtype=torch.int64)
            dist.recv(size, src=peer)
            n = int(size.item())
            if not 0 <= n <= max_bytes:
                raise LinkError(f"rank {peer} sent a frame of {n} bytes (at most {max_bytes})")
            buf = torch.empty(n, dtype=torch.uint8)
            if n:
                dist.recv(buf, src=peer)
        except RuntimeError as exc:
            raise LinkError(f"rank {peer} went away: {_first_line(exc)}") from None
        return bytes(buf.numpy().tobytes())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class SecureLinks:
    """This rank's sealed links to its peers, in order, over ``transport``."""

    def __init__(
        self,
        rank: int,
        keys: Mapping[int, LinkKeys],
        transport: Transport,
        *,
        context: bytes,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.rank = rank
        self._aead = {
            peer: (AESGCM(k.send), AESGCM(k.recv)) for peer, k in keys.items() if peer != rank
        }
        self._sent = dict.fromkeys(self._aead, 0)
        self._received = dict.fromkeys(self._aead, 0)
        self._transport = transport
        self._context = context
        self._max_frame = max_frame
        #: Sealed bytes sent and received (what crossed the wire, tags included).
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def peers(self) -> list[int]:
        return sorted(self._aead)

    def _aad(self, src: int, dst: int, counter: int, kind: str) -> bytes:
        return (
            b"cctrain/link-msg/v1"
            + _lp(self._context)
            + struct.pack(">IIQ", src, dst, counter)
            + _lp(kind.encode())
        )

    def _peer(self, peer: int) -> tuple[AESGCM, AESGCM]:
        try:
            return self._aead[peer]
        except KeyError:
            raise LinkError(f"rank {peer} is not a peer of rank {self.rank}") from None

    def send(self, peer: int, kind: str, payload: bytes) -> None:
        sealer, _ = self._peer(peer)
        counter = self._sent[peer]
        self._sent[peer] = counter + 1
        frame = sealer.encrypt(
            struct.pack(">4xQ", counter), payload, self._aad(self.rank, peer, counter, kind)
        )
        self._transport.send(peer, frame)
        self.bytes_sent += len(frame)

    def recv(self, peer: int, kind: str) -> bytes:
        _, opener = self._peer(peer)
        counter = self._received[peer]
        frame = self._transport.recv(peer, self._max_frame)
        self.bytes_received += len(frame)
        try:
            payload = opener.decrypt(
                struct.pack(">4xQ", counter), frame, self._aad(peer, self.rank, counter, kind)
            )
        except InvalidTag:
            raise LinkError(
                f"message {counter} ({kind!r}) from rank {peer} failed authentication: "
                "altered, replayed, reordered, dropped before it, or not from that rank"
            ) from None
        self._received[peer] = counter + 1
        return payload

    def send_msg(
        self, peer: int, kind: str, meta: Mapping[str, Any], arrays: Sequence[np.ndarray] = ()
    ) -> None:
        self.send(peer, kind, pack(meta, arrays))

    def recv_msg(self, peer: int, kind: str) -> tuple[dict[str, Any], list[np.ndarray]]:
        return unpack(self.recv(peer, kind))


def pack(meta: Mapping[str, Any], arrays: Sequence[np.ndarray] = ()) -> bytes:
    """A JSON header (``meta`` and the arrays' dtypes and shapes) and the arrays' bytes."""
    specs = []
    blobs = []
    for a in arrays:
        a = np.ascontiguousarray(a)
        if a.dtype.name not in _DTYPES:
            raise ValueError(f"a link message cannot carry dtype {a.dtype}")
        specs.append({"dtype": a.dtype.name, "shape": list(a.shape)})
        blobs.append(a.tobytes())
    header = json.dumps({"meta": dict(meta), "arrays": specs}, separators=(",", ":")).encode()
    return _lp(header) + b"".join(blobs)


def unpack(data: bytes) -> tuple[dict[str, Any], list[np.ndarray]]:
    """:func:`pack`'s inverse, strict: sizes must add up exactly."""
    try:
        (n,) = struct.unpack_from(">I", data)
        header = json.loads(data[4 : 4 + n])
        meta, specs = header["meta"], header["arrays"]
        if not isinstance(meta, dict) or not isinstance(specs, list):
            raise ValueError("malformed header")
        offset = 4 + n
        arrays = []
        for spec in specs:
            name, shape = spec["dtype"], spec["shape"]
            # A shape is a list of non-negative ints (not bools, floats or a string), and
            # its size is counted exactly: a header cannot overflow it or ask for memory.
            if (
                not isinstance(name, str)
                or name not in _DTYPES
                or not isinstance(shape, list)
                or len(shape) > _MAX_DIMS
                or not all(type(d) is int and d >= 0 for d in shape)
            ):
                raise ValueError(f"bad array spec {spec!r}"[:200])
            dtype = np.dtype(name)
            size = math.prod(shape) * dtype.itemsize
            if offset + size > len(data):
                raise ValueError("arrays overrun the message")
            arrays.append(
                np.frombuffer(data, dtype=dtype, count=size // dtype.itemsize, offset=offset)
                .reshape(shape)
                .copy()
            )
            offset += size
        if offset != len(data):
            raise ValueError("trailing bytes after the arrays")
    except (ValueError, KeyError, TypeError, RecursionError, struct.error) as exc:
        raise LinkError(f"malformed link message: {exc}") from None
    return meta, arrays
