"""A provider's share of the enclave (policy ``[limits]``), tried by a greedy provider
against a real loopback enclave: each refusal comes before any byte is stored."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from cctrain.errors import PolicyError, UploadRejectedError
from cctrain.policy import parse_policy
from tests.consortium import Consortium, make_consortium, policy_document, running_enclave
from tests.ingest.conftest import make_owner, write_shard


def _limits(tmp_path: Path, **limits: object) -> Consortium:
    return make_consortium(tmp_path / "c", limits=limits)


def _stored(state: Path) -> list[str]:
    """Every file under the state directory's shard and upload stores."""
    return sorted(
        str(p.relative_to(state))
        for d in ("shards", "uploads")
        for p in (state / d).rglob("*")
        if p.is_file()
    )


def test_shards_per_provider(tmp_path: Path) -> None:
    c = _limits(tmp_path, shards_per_provider=2)
    state = tmp_path / "state"
    with running_enclave(c, state) as (address, _app):
        with make_owner(address, c, "hospital-a") as a:
            for i in range(2):
                a.upload(
                    write_shard(tmp_path / f"a{i}.npz", seed=i),
                    shard_id=f"s{i}",
                    state_dir=tmp_path / "oa",
                )
            before = _stored(state)
            with pytest.raises(UploadRejectedError, match="limits.shards_per_provider"):
                a.upload(
                    write_shard(tmp_path / "a2.npz", seed=2),
                    shard_id="s2",
                    state_dir=tmp_path / "oa",
                )
            assert _stored(state) == before
        # Another provider's share is its own.
        with make_owner(address, c, "hospital-b") as b:
            for i in range(2):
                b.upload(
                    write_shard(tmp_path / f"b{i}.npz", seed=10 + i),
                    shard_id=f"s{i}",
                    state_dir=tmp_path / "ob",
                )


def test_the_same_bytes_under_another_shard_id_are_refused(tmp_path: Path) -> None:
    c = make_consortium(tmp_path / "c")
    state = tmp_path / "state"
    shard = write_shard(tmp_path / "same.npz", seed=7)
    copy = tmp_path / "copy.npz"
    shutil.copy(shard, copy)
    with running_enclave(c, state) as (address, app):
        with make_owner(address, c, "hospital-a") as a:
            a.upload(shard, shard_id="first", state_dir=tmp_path / "oa")
            for sid in ("second", "third", "fourth"):
                with pytest.raises(UploadRejectedError, match="same content") as e:
                    a.upload(copy, shard_id=sid, state_dir=tmp_path / "oa")
                assert "'first'" in str(e.value)
        # Refusing across providers would tell one provider what another uploaded: the
        # rule is per provider.
        with make_owner(address, c, "hospital-b") as b:
            b.upload(copy, shard_id="first", state_dir=tmp_path / "ob")
        assert [(s.party_id, s.shard_id) for s in app.state.view.shards] == [
            ("hospital-a", "first"),
            ("hospital-b", "first"),
        ]


def test_duplicates_when_the_policy_allows_them(tmp_path: Path) -> None:
    c = _limits(tmp_path, allow_duplicate_shards=True)
    shard = write_shard(tmp_path / "same.npz", seed=7)
    with running_enclave(c, tmp_path / "state") as (address, app):
        with make_owner(address, c, "hospital-a") as a:
            for sid in ("first", "second"):
                a.upload(shard, shard_id=sid, state_dir=tmp_path / "oa")
        assert len(app.state.view.shards) == 2


def test_bytes_per_provider_count_partial_uploads_too(tmp_path: Path) -> None:
    import queue

    from tests.hostile.helpers import (
        first_response,
        open_stream,
        signed_metadata,
        upload_header_request,
    )

    shard = write_shard(tmp_path / "a.npz", rows=400, seed=1)
    size = shard.stat().st_size
    c = _limits(tmp_path, bytes_per_provider=2 * size + size // 2)
    state = tmp_path / "state"
    with running_enclave(c, state) as (address, _app):
        with make_owner(address, c, "hospital-a") as a:
            a.upload(shard, shard_id="one", state_dir=tmp_path / "oa")
            # An upload that stops after its header leaves a partial upload on disk...
            box: queue.Queue[object] = queue.Queue()
            box.put(upload_header_request(a, "two", size=size))
            call = open_stream(a.stub.Upload, box, metadata=signed_metadata(a, "Upload"))
            first_response(call, timeout=1.0)
            call.cancel()
            box.put(None)
            partial = state / "uploads" / "hospital-a" / "two"
            deadline = time.monotonic() + 15
            while not partial.is_dir() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert partial.is_dir()
            # ... which counts: one accepted + one partial + this one exceed 2.5 shards.
            with pytest.raises(UploadRejectedError, match="limits.bytes_per_provider"):
                a.upload(
                    write_shard(tmp_path / "c.npz", rows=400, seed=3),
                    shard_id="three",
                    state_dir=tmp_path / "oa",
                )
            # Finishing the partial one (a fresh upload of "two" replaces it) fits.
            a.upload(
                write_shard(tmp_path / "b.npz", rows=400, seed=2),
                shard_id="two",
                state_dir=tmp_path / "oa",
            )


def test_limits_are_validated(tmp_path: Path) -> None:
    from cctrain.crypto.keys import PartyKeys

    keys = {p: PartyKeys.generate(p) for p in ("hospital-a", "research-lab")}
    for bad, match in (
        ({"shards_per_provider": 0}, "limits.shards_per_provider"),
        ({"bytes_per_provider": -1}, "limits.bytes_per_provider"),
        ({"concurrent_uploads_per_provider": "2"}, "limits.concurrent_uploads_per_provider"),
        ({"allow_duplicate_shards": 1}, "limits.allow_duplicate_shards"),
        ({"withdrawals_per_provider": 0}, "limits.withdrawals_per_provider"),
        ({"withdrawals_per_provider": 5000}, "more than 2048 in all"),
        ({"shards_per_provider": 3000}, "more than 2048 in all"),
        ({"shards": 3}, "limits.shards"),
    ):
        raw = __import__("json").dumps(policy_document(keys, limits=bad)).encode()
        with pytest.raises(PolicyError) as e:
            parse_policy(raw, "json")
        assert any(match in p for p in e.value.problems), e.value.problems
    doc = policy_document(keys)
    p = parse_policy(__import__("json").dumps(doc).encode(), "json")
    assert dict(p.limits) == {
        "shards_per_provider": 8,
        "bytes_per_provider": 8 * doc["data"]["max_bytes"],
        "concurrent_uploads_per_provider": 2,
        "withdrawals_per_provider": 8,
        "allow_duplicate_shards": False,
    }


def test_a_shard_the_parser_refused_is_not_received_to_its_end(tmp_path: Path) -> None:
    """A malformed shard is refused as soon as the parser sees it: the provider does not
    get to make the enclave receive and store the rest (up to data.max_bytes)."""
    import queue

    from cctrain.v1 import enclave_pb2 as pb
    from cctrain_enclave.limits import ServerLimits
    from tests.hostile.helpers import first_response, open_stream, signed_metadata

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c,d,label\n1,2,3,not-a-number,0\n" + "1,2,3,4,1\n" * 40_000)
    c = make_consortium(tmp_path / "c")
    # Without the early refusal the enclave would wait for the last chunk, then time out.
    limits = ServerLimits(upload_idle_s=60.0)
    with running_enclave(c, tmp_path / "state", limits=limits) as (address, _app):
        with make_owner(address, c, "hospital-a") as a:
            data = bad.read_bytes()
            from cctrain.client import _UploadOutcome

            header_bytes, sig, key = a._new_header("csv", "bad", 1 << 14, len(data))
            header = pb.ShardHeader()
            header.ParseFromString(header_bytes)
            requests = list(
                a._requests(
                    bad,
                    header,
                    header_bytes,
                    sig,
                    key,
                    0,
                    lambda *_: None,
                    signing_key=a.keys.signing_key,
                    outcome=_UploadOutcome(),
                )
            )
            box: queue.Queue[object] = queue.Queue()
            for req in requests[:-2]:  # everything but the final chunk (and the trailer)
                box.put(req)
            call = open_stream(a.stub.Upload, box, metadata=signed_metadata(a, "Upload"))
            msg, err = first_response(call, timeout=45.0)
            box.put(None)
    assert err is not None, msg
    assert err.code().name == "INVALID_ARGUMENT", (err.code(), err.details())
    assert "line 2" in (err.details() or "")
