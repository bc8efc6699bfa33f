"""A client whose signed policy differs from the enclave's hears exactly that, with both
digests in full, on every kind of call (not "request signature does not verify")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from cctrain.client import DataOwner, map_rpc_error
from cctrain.errors import AttestationError, AuthenticationError, PolicyMismatchError
from cctrain.policy import SignedPolicy
from cctrain.v1 import enclave_pb2 as pb
from tests.consortium import Consortium, another_policy, make_consortium
from tests.ingest.conftest import make_owner


def _assert_mismatch(err: BaseException, *, client: SignedPolicy, enclave: Consortium) -> None:
    assert isinstance(err, PolicyMismatchError), err
    assert isinstance(err, AttestationError)  # an enclave that cannot serve this client
    assert err.client == client.digest.hex()
    assert err.enclave == enclave.signed.digest.hex()
    assert client.digest.hex() in str(err) and enclave.signed.digest.hex() in str(err)
    assert str(err).startswith("policy mismatch: the enclave serves policy ")
    assert "signature" not in str(err)


def test_same_parties_another_policy(
    enclave: tuple[str, Any], consortium: Consortium, tmp_path: Path
) -> None:
    other = another_policy(consortium)
    with pytest.raises(PolicyMismatchError) as info:
        DataOwner(enclave[0], policy=other, key=consortium.keys["hospital-a"])
    _assert_mismatch(info.value, client=other, enclave=consortium)


def test_another_consortium_learns_nothing(
    enclave: tuple[str, Any], consortium: Consortium, tmp_path: Path
) -> None:
    """A client of another consortium holds none of this policy's keys: to this enclave it
    is a stranger, and a stranger is not told which policy the enclave serves (only a
    holder of a party's key, whose request verifies over the digest it names, is)."""
    other = make_consortium(tmp_path / "other")  # same party names, other keys
    with pytest.raises(AuthenticationError) as info:
        DataOwner(enclave[0], policy=other.signed, key=other.keys["hospital-a"])
    assert not isinstance(info.value, PolicyMismatchError)
    assert consortium.signed.digest.hex() not in str(info.value)
    assert "another policy" in str(info.value)


def test_every_kind_of_call(
    enclave: tuple[str, Any], consortium: Consortium, tmp_path: Path
) -> None:
    """Unary, server-streaming and client-streaming calls of a session whose requests are
    signed for another policy (as after a policy change on one side) each say so."""
    other = another_policy(consortium)
    owner = make_owner(enclave[0], consortium)
    try:
        owner.policy = other.policy  # what its requests now name and sign
        for call in (owner.status, owner.start_training, owner.receipts, owner.journal):
            with pytest.raises(PolicyMismatchError) as info:
                call()
            _assert_mismatch(info.value, client=other, enclave=consortium)
        with pytest.raises(PolicyMismatchError) as info:
            list(owner.watch(timeout=30))
        _assert_mismatch(info.value, client=other, enclave=consortium)
        header = pb.UploadRequest(header=pb.UploadHeader(header=b"x", signature=b"y"))
        with pytest.raises(grpc.RpcError) as raw:
            list(owner.stub.Upload(iter([header]), metadata=owner.metadata("Upload", b"")))
        _assert_mismatch(map_rpc_error(raw.value, upload=True), client=other, enclave=consortium)
    finally:
        owner.close()
