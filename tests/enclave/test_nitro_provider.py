"""The AWS Nitro evidence provider, without a Nitro Enclave.

The ioctl structure and request number are checked against ``include/uapi/linux/nsm.h``;
the CBOR request and response against AWS's ``aws-nitro-enclaves-nsm-api`` messages; and
the provider is driven through a fake NSM that reads the request and writes the response
through the very addresses the provider packed, as the kernel's copy_from_user/copy_to_user
would. Documents the fake returns are the real veracruz vector with ``user_data`` swapped
(well-formed, no longer signed: the provider only parses, the verifier verifies).
"""

from __future__ import annotations

import ctypes
import errno
from pathlib import Path
from typing import Any

import cbor2
import pytest
from click.testing import CliRunner

from cctrain.attestation.base import Evidence
from cctrain.errors import AttestationError, NoEvidenceProviderError, NoSealingKeyError
from cctrain_enclave.providers import PLATFORMS, detect_provider
from cctrain_enclave.providers import nitro_nsm as nsm
from cctrain_enclave.providers._common import measurement_of
from cctrain_enclave.providers.detect import searched_paths

RD = bytes(range(64))
VECTOR = "aws-nitro/veracruz_eu-west-1_2022-11-09.cbor"
PCR0 = (
    "22f9e1c949208da55eb01b9b9fc88f87454f77ba133f0d82320b509621c92482"
    "152a99d0a12335b97178c02d6f977d01"
)


def _iowr_expected(ioc_type: int, nr: int, size: int) -> int:
    # include/uapi/asm-generic/ioctl.h: dir(2) << 30 | size(14) << 16 | type(8) << 8 | nr(8).
    return (3 << 30) | (size << 16) | (ioc_type << 8) | nr


@pytest.fixture(scope="module")
def document_with(vectors_dir: Path) -> Any:
    raw = (vectors_dir / VECTOR).read_bytes()
    prot, unprot, payload, sig = cbor2.loads(raw)

    def make(user_data: bytes | None) -> bytes:
        p = dict(cbor2.loads(payload))
        p["user_data"] = user_data
        return bytes(cbor2.dumps([prot, unprot, cbor2.dumps(p), sig]))

    return make


def _nsm_tree(root: Path) -> Path:
    (root / "dev").mkdir(parents=True, exist_ok=True)
    (root / "dev" / "nsm").write_bytes(b"")
    return root


class FakeNsm:
    """Plays the nsm driver and the NSM behind ``ioctl(fd, NSM_IOCTL_RAW, arg)``."""

    def __init__(self, answer: Any, *, length: int | None = None, fail: int | None = None):
        self.answer = answer  # a callable(request) -> response bytes
        self.length = length
        self.fail = fail
        self.requests: list[Any] = []

    def __call__(self, fd: int, request: int, arg: Any) -> int:
        if request != nsm.NSM_IOCTL_RAW or not isinstance(arg, nsm.NsmRaw):
            raise OSError(errno.EINVAL, "bad ioctl")
        if self.fail is not None:
            raise OSError(self.fail, "refused")
        assert 0 < arg.request.len <= nsm.NSM_REQUEST_MAX_SIZE
        assert arg.response.len == nsm.NSM_RESPONSE_MAX_SIZE
        message = ctypes.string_at(arg.request.addr, arg.request.len)
        self.requests.append(cbor2.loads(message))
        response = self.answer(self.requests[-1])
        assert len(response) <= arg.response.len
        ctypes.memmove(arg.response.addr, response, len(response))
        arg.response.len = self.length if self.length is not None else len(response)
        return 0


def _attestation(document: bytes) -> bytes:
    return bytes(cbor2.dumps({"Attestation": {"document": document}}))


# --------------------------------------------------------------------------- layout


def test_structures_match_uapi_nsm_h() -> None:
    # struct nsm_iovec { __u64 addr; __u64 len; };
    # struct nsm_raw { struct nsm_iovec request; struct nsm_iovec response; };
    # #define NSM_IOCTL_RAW _IOWR(NSM_MAGIC /*0x0A*/, 0x0, struct nsm_raw)
    assert ctypes.sizeof(nsm.NsmIovec) == 16
    assert nsm.NsmIovec.addr.offset == 0 and nsm.NsmIovec.len.offset == 8
    assert ctypes.sizeof(nsm.NsmRaw) == 32
    assert nsm.NsmRaw.request.offset == 0 and nsm.NsmRaw.response.offset == 16
    assert nsm.NSM_IOCTL_RAW == nsm.NSM_IOCTL_REQUEST == _iowr_expected(0x0A, 0, 32) == 0xC0200A00
    assert (nsm.NSM_REQUEST_MAX_SIZE, nsm.NSM_RESPONSE_MAX_SIZE) == (0x1000, 0x3000)


def test_attestation_request_encoding() -> None:
    data = nsm.encode_attestation_request(RD)
    want = (
        bytes.fromhex("a1") + b"\x6bAttestation" + bytes.fromhex("a3")
        + b"\x69user_data" + b"\x58\x40" + RD
        + b"\x65nonce" + b"\xf6"
        + b"\x6apublic_key" + b"\xf6"
    )  # fmt: skip
    assert data == want
    assert cbor2.loads(data) == {
        "Attestation": {"user_data": RD, "nonce": None, "public_key": None}
    }


def test_attestation_response_decoding() -> None:
    assert nsm.parse_attestation_response(_attestation(b"\x84doc")) == b"\x84doc"


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (cbor2.dumps({"Error": "InvalidArgument"}), "refused the attestation request: 'Invalid"),
        (cbor2.dumps({"DescribeNSM": {}}), "answered 'DescribeNSM'"),
        (cbor2.dumps({"Attestation": {"document": "text"}}), "document is not a byte string"),
        (cbor2.dumps({"Attestation": {"document": b""}}), "document is not a byte string"),
        (cbor2.dumps({"Attestation": {"document": b"x", "more": 1}}), "is not {'document'"),
        (cbor2.dumps({"Attestation": [1, 2]}), "is not {'document'"),
        (cbor2.dumps({"Attestation": {}, "Error": "x"}), "one-entry map"),
        (cbor2.dumps(["Attestation"]), "one-entry map"),
        (b"\xa1\x6bAttest", "not well-formed CBOR"),
        (_attestation(b"\x84doc") + b"\x00", "after the CBOR item"),
        (b"", "not well-formed CBOR"),
    ],
)
def test_bad_responses_are_refused(response: bytes, reason: str) -> None:
    with pytest.raises(AttestationError, match=reason):
        nsm.parse_attestation_response(bytes(response))


# --------------------------------------------------------------------------- the device


def test_round_trip_through_fake_nsm(tmp_path: Path, document_with: Any) -> None:
    fake = FakeNsm(lambda req: _attestation(document_with(req["Attestation"]["user_data"])))
    provider = nsm.NitroNsmProvider(_nsm_tree(tmp_path), ioctl=fake)
    assert provider.platform == "aws-nitro" and provider.available()
    ev = provider.get_evidence(RD)
    assert ev == Evidence(platform="aws-nitro", report=document_with(RD))
    assert fake.requests == [{"Attestation": {"user_data": RD, "nonce": None, "public_key": None}}]
    assert measurement_of(ev).hex() == PCR0


def test_document_for_other_user_data_is_refused(tmp_path: Path, document_with: Any) -> None:
    for other in (bytes(64), None, RD[:32]):
        fake = FakeNsm(lambda req, o=other: _attestation(document_with(o)))
        provider = nsm.NitroNsmProvider(_nsm_tree(tmp_path), ioctl=fake)
        with pytest.raises(AttestationError, match="carries user_data .* was requested"):
            provider.get_evidence(RD)


def test_unparseable_document_is_refused(tmp_path: Path) -> None:
    fake = FakeNsm(lambda req: _attestation(b"\x84\x00"))
    provider = nsm.NitroNsmProvider(_nsm_tree(tmp_path), ioctl=fake)
    with pytest.raises(AttestationError, match="unparseable document"):
        provider.get_evidence(RD)


def test_nsm_error_response(tmp_path: Path) -> None:
    fake = FakeNsm(lambda req: bytes(cbor2.dumps({"Error": "InvalidArgument"})))
    provider = nsm.NitroNsmProvider(_nsm_tree(tmp_path), ioctl=fake)
    with pytest.raises(AttestationError, match="InvalidArgument"):
        provider.get_evidence(RD)


@pytest.mark.parametrize("length", [0, nsm.NSM_RESPONSE_MAX_SIZE + 1])
def test_response_length_out_of_range(tmp_path: Path, length: int, document_with: Any) -> None:
    fake = FakeNsm(lambda req: _attestation(document_with(RD)), length=length)
    provider = nsm.NitroNsmProvider(_nsm_tree(tmp_path), ioctl=fake)
    with pytest.raises(AttestationError, match="response length"):
        provider.get_evidence(RD)


def test_ioctl_failure_names_the_errno(tmp_path: Path) -> None:
    provider = nsm.NitroNsmProvider(_nsm_tree(tmp_path), ioctl=FakeNsm(None, fail=errno.EPERM))
    with pytest.raises(AttestationError, match=r"NSM_IOCTL_RAW .* failed: EPERM"):
        provider.get_evidence(RD)


def test_real_ioctl_reaches_the_kernel(tmp_path: Path) -> None:
    # The real fcntl.ioctl with our request number and ctypes argument: /dev/null answers
    # ENOTTY, which must come back as an AttestationError, not an OSError.
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "nsm").symlink_to("/dev/null")
    with pytest.raises(AttestationError, match="ENOTTY"):
        nsm.NitroNsmProvider(tmp_path).get_evidence(RD)


def test_missing_device(tmp_path: Path) -> None:
    provider = nsm.NitroNsmProvider(tmp_path, ioctl=FakeNsm(None))
    assert not provider.available()
    with pytest.raises(NoEvidenceProviderError, match="dev/nsm not found"):
        provider.get_evidence(RD)


@pytest.mark.parametrize("bad", [b"", bytes(63), bytes(65)])
def test_report_data_must_be_64_bytes(tmp_path: Path, bad: bytes) -> None:
    fake = FakeNsm(None)
    with pytest.raises(AttestationError, match="exactly 64 bytes"):
        nsm.NitroNsmProvider(_nsm_tree(tmp_path), ioctl=fake).get_evidence(bad)
    assert fake.requests == []


def test_no_sealing_key(tmp_path: Path) -> None:
    provider = nsm.NitroNsmProvider(_nsm_tree(tmp_path), ioctl=FakeNsm(None))
    with pytest.raises(NoSealingKeyError) as info:
        provider.sealing_key(b"state")
    msg = str(info.value)
    assert "no sealing key" in msg and '[state] key = "consortium"' in msg


# --------------------------------------------------------------------------- detection


def test_auto_picks_nsm(tmp_path: Path) -> None:
    provider = detect_provider(root=_nsm_tree(tmp_path))
    assert isinstance(provider, nsm.NitroNsmProvider) and provider.platform == "aws-nitro"


def test_explicit_aws_nitro(tmp_path: Path) -> None:
    with pytest.raises(NoEvidenceProviderError, match="AWS Nitro"):
        detect_provider("aws-nitro", root=tmp_path)
    assert isinstance(detect_provider("aws-nitro", root=_nsm_tree(tmp_path)), nsm.NitroNsmProvider)


def test_nsm_is_a_searched_path_and_a_platform(tmp_path: Path) -> None:
    assert tmp_path / "dev" / "nsm" in searched_paths(tmp_path)
    assert "aws-nitro" in PLATFORMS
    with pytest.raises(NoEvidenceProviderError) as info:
        detect_provider(root=tmp_path)
    assert str(tmp_path / "dev" / "nsm") in str(info.value)


def test_enclave_cli_accepts_aws_nitro() -> None:
    from cctrain_enclave.cli import main

    r = CliRunner().invoke(main, ["serve", "--help"])
    assert r.exit_code == 0 and "aws-nitro" in r.stdout
