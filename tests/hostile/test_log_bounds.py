"""hostile.md: "Untrusted strings that an error echoes are repr'd and cut to 64 characters".
The PERMISSION_DENIED refusal of an upload header naming another party echoes the header's
party_id with a bare ``!r`` (ingest.py ``_check_header``), and service.py logs the refusal's
text: a party writes megabytes per request into the host's log (and into its own error).
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from cctrain.protocol import sign_header
from cctrain.v1 import enclave_pb2 as pb
from tests.consortium import make_consortium, running_enclave
from tests.hostile.helpers import signed_metadata
from tests.ingest.conftest import make_owner


def test_a_long_party_id_in_a_header_is_cut_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    c = make_consortium(tmp_path / "c")
    with running_enclave(c, tmp_path / "state") as (address, _app):
        with make_owner(address, c, "hospital-a") as a:
            raw, _sig, _key = a._new_header("npz", "s", 1 << 14, 1 << 16)
            header = pb.ShardHeader.FromString(raw)
            header.party_id = "x" * 1_700  # the longest a header (≤ 2048 bytes) can carry
            raw = header.SerializeToString()
            req = pb.UploadRequest(
                header=pb.UploadHeader(header=raw, signature=sign_header(a.keys.signing_key, raw))
            )
            with pytest.raises(grpc.RpcError) as e:
                list(a.stub.Upload(iter([req]), metadata=signed_metadata(a, "Upload")))
    # The refusal echoes the id cut to 64 characters (before: all of it; a 1 MB id even
    # overflowed the client's 16 KiB metadata limit and arrived as RESOURCE_EXHAUSTED, and
    # headers are now refused over 2048 bytes).
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value.code()
    assert len(e.value.details() or "") < 300
    assert any("refused (PERMISSION_DENIED)" in r.getMessage() for r in caplog.records)
    longest = max(len(r.getMessage()) for r in caplog.records)
    assert longest < 1000, f"a log line of {longest} characters"
