"""Evidence providers for real TEEs, exercised against fake device trees.

No TEE is needed: file-based interfaces (configfs-tsm, Gramine) run against a
tree under ``tmp_path`` whose kernel-side behaviour is played by a small fake;
the ioctl interfaces are checked against the kernel's UAPI headers (sizes,
offsets, request numbers) and driven through a fake device that reads and
writes the request/response buffers through the very pointers the provider
packed, as the kernel's copy_from_user/copy_to_user would.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import hashlib
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from cctrain.errors import (
    AttestationError,
    EvidenceParseError,
    NoEvidenceProviderError,
    NoSealingKeyError,
)
from cctrain_enclave.providers import detect_provider
from cctrain_enclave.providers import sev_guest as sev
from cctrain_enclave.providers import tdx_guest as tdx
from cctrain_enclave.providers._common import measurement_of
from cctrain_enclave.providers.configfs_tsm import (
    REPORT_DIR,
    ConfigfsTsm,
    ConfigfsTsmProvider,
    OsFilesystem,
)
from cctrain_enclave.providers.gramine import GramineProvider
from tests.attestation import cca_forge

RD = bytes(range(64))
RD2 = bytes(reversed(range(64)))


# --------------------------------------------------------------------------- helpers


def _iowr_expected(ioc_type: str, nr: int, size: int) -> int:
    # include/uapi/asm-generic/ioctl.h: dir(2 bits) << 30 | size(14) << 16 | type(8) << 8 | nr(8),
    # _IOC_READ|_IOC_WRITE == 3.
    return (3 << 30) | (size << 16) | (ord(ioc_type) << 8) | nr


def _snp_report(report_data: bytes, vmpl: int = 0) -> bytes:
    """A 1184-byte ATTESTATION_REPORT-shaped blob (version 2, VMPL at 0x30, data at 0x50)."""
    rep = bytearray(0x4A0)
    struct.pack_into("<I", rep, 0, 2)
    struct.pack_into("<I", rep, 0x30, vmpl)
    rep[0x50:0x90] = report_data
    return bytes(rep)


def _tdx_quote_v4(report_data: bytes) -> bytes:
    q = bytearray(48 + 584 + 4)
    struct.pack_into("<HHI", q, 0, 4, 2, 0x81)
    q[568:632] = report_data
    return bytes(q)


def _sgx_quote_v3(report_data: bytes) -> bytes:
    q = bytearray(48 + 384 + 4)
    struct.pack_into("<HHI", q, 0, 3, 2, 0)
    q[368:432] = report_data
    return bytes(q)


def _cert(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def chain() -> dict[str, bytes]:
    return {"vcek": _cert("VCEK"), "ask": _cert("SEV-Milan"), "ark": _cert("ARK-Milan")}


def _cert_table(entries: list[tuple[uuid.UUID, bytes]], *, pad_to: int = 0) -> bytes:
    """GHCB cert table: (GUID, offset, length)* + zero entry, then the blobs."""
    header = 24 * (len(entries) + 1)
    table = bytearray()
    data = bytearray()
    for guid, blob in entries:
        table += struct.pack("<16sII", guid.bytes, header + len(data), len(blob))
        data += blob
    table += bytes(24)
    out = bytes(table + data)
    return out + bytes(max(0, pad_to - len(out)))


# --------------------------------------------------------------------------- kernel ABI


def test_snp_structures_match_uapi_sev_guest_h() -> None:
    # include/uapi/linux/sev-guest.h (Linux v6.x):
    #   struct snp_report_req { __u8 user_data[64]; __u32 vmpl; __u8 rsvd[28]; }      -> 96
    #   struct snp_report_resp { __u8 data[4000]; }                                    -> 4000
    #   struct snp_derived_key_req { __u32 root_key_select; __u32 rsvd;
    #       __u64 guest_field_select; __u32 vmpl; __u32 guest_svn; __u64 tcb_version; } -> 32
    #   struct snp_derived_key_resp { __u8 data[64]; }                                 -> 64
    #   struct snp_guest_request_ioctl { __u8 msg_version; __u64 req_data;
    #       __u64 resp_data; union { __u64 exitinfo2; struct { __u32 fw_error;
    #       __u32 vmm_error; }; }; }                                                   -> 32
    #   struct snp_ext_report_req { struct snp_report_req data; __u64 certs_address;
    #       __u32 certs_len; }                                                         -> 112
    assert ctypes.sizeof(sev.SnpReportReq) == 96
    assert ctypes.sizeof(sev.SnpReportResp) == 4000
    assert ctypes.sizeof(sev.SnpDerivedKeyReq) == 32
    assert ctypes.sizeof(sev.SnpDerivedKeyResp) == 64
    assert ctypes.sizeof(sev.SnpGuestRequestIoctl) == 32
    assert ctypes.sizeof(sev.SnpExtReportReq) == 112
    offsets = {
        (sev.SnpReportReq, "vmpl"): 64,
        (sev.SnpReportReq, "rsvd"): 68,
        (sev.SnpDerivedKeyReq, "guest_field_select"): 8,
        (sev.SnpDerivedKeyReq, "vmpl"): 16,
        (sev.SnpDerivedKeyReq, "guest_svn"): 20,
        (sev.SnpDerivedKeyReq, "tcb_version"): 24,
        (sev.SnpGuestRequestIoctl, "req_data"): 8,
        (sev.SnpGuestRequestIoctl, "resp_data"): 16,
        (sev.SnpGuestRequestIoctl, "exit"): 24,
        (sev.SnpExtReportReq, "certs_address"): 96,
        (sev.SnpExtReportReq, "certs_len"): 104,
    }
    for (cls, field), want in offsets.items():
        assert getattr(cls, field).offset == want, (cls.__name__, field)


def test_snp_ioctl_numbers_match_iowr_formula() -> None:
    # #define SNP_GET_REPORT      _IOWR('S', 0x0, struct snp_guest_request_ioctl)
    # #define SNP_GET_DERIVED_KEY _IOWR('S', 0x1, struct snp_guest_request_ioctl)
    # #define SNP_GET_EXT_REPORT  _IOWR('S', 0x2, struct snp_guest_request_ioctl)
    assert sev.SNP_GET_REPORT == _iowr_expected("S", 0, 32) == 0xC0205300
    assert sev.SNP_GET_DERIVED_KEY == _iowr_expected("S", 1, 32) == 0xC0205301
    assert sev.SNP_GET_EXT_REPORT == _iowr_expected("S", 2, 32) == 0xC0205302


def test_tdx_structure_and_ioctl_match_uapi_tdx_guest_h() -> None:
    # include/uapi/linux/tdx-guest.h:
    #   struct tdx_report_req { __u8 reportdata[TDX_REPORTDATA_LEN /*64*/];
    #                           __u8 tdreport[TDX_REPORT_LEN /*1024*/]; }
    #   #define TDX_CMD_GET_REPORT0 _IOWR('T', 1, struct tdx_report_req)
    assert ctypes.sizeof(tdx.TdxReportReq) == 1088
    assert tdx.TdxReportReq.tdreport.offset == 64
    assert tdx.TDX_CMD_GET_REPORT0 == _iowr_expected("T", 1, 1088) == 0xC4405401


# --------------------------------------------------------------------------- SNP packing


def test_pack_report_request_layout() -> None:
    raw = bytes(sev.pack_report_request(RD, vmpl=2))
    assert raw[:64] == RD
    assert struct.unpack_from("<I", raw, 64)[0] == 2
    assert raw[68:] == bytes(28)


@pytest.mark.parametrize("bad", [b"", bytes(63), bytes(65)])
def test_report_data_must_be_64_bytes(bad: bytes) -> None:
    with pytest.raises(AttestationError, match="exactly 64 bytes"):
        sev.pack_report_request(bad, vmpl=0)


def test_vmpl_out_of_range_is_refused() -> None:
    with pytest.raises(AttestationError, match="VMPL"):
        sev.pack_report_request(RD, vmpl=4)


def test_derived_key_request_mixes_measurement_and_policy() -> None:
    raw = bytes(sev.pack_derived_key_request(vmpl=0))
    root, rsvd, fields, vmpl, svn, tcb = struct.unpack("<IIQIIQ", raw)
    assert root == 0  # VCEK-rooted
    assert fields == 0b1001  # bit 0 guest policy, bit 3 measurement
    assert (rsvd, vmpl, svn, tcb) == (0, 0, 0, 0)


def _report_rsp(report: bytes, *, status: int = 0, size: int | None = None) -> bytes:
    rsp = bytearray(4000)
    struct.pack_into("<II", rsp, 0, status, len(report) if size is None else size)
    rsp[0x20 : 0x20 + len(report)] = report
    return bytes(rsp)


def test_parse_report_response() -> None:
    report = _snp_report(RD)
    assert sev.parse_report_response(_report_rsp(report)) == report


def test_parse_report_response_errors() -> None:
    with pytest.raises(AttestationError, match="INVALID_PARAM"):
        sev.parse_report_response(_report_rsp(_snp_report(RD), status=0x16))
    with pytest.raises(EvidenceParseError, match="report_size is 1000"):
        sev.parse_report_response(_report_rsp(_snp_report(RD), size=1000))
    with pytest.raises(EvidenceParseError, match="too short"):
        sev.parse_report_response(b"\x00" * 8)


def test_parse_derived_key_response() -> None:
    rsp = bytearray(64)
    rsp[0x20:0x40] = b"K" * 32
    assert sev.parse_derived_key_response(bytes(rsp)) == b"K" * 32
    struct.pack_into("<I", rsp, 0, 0x27)
    with pytest.raises(AttestationError, match="INVALID_KEY"):
        sev.parse_derived_key_response(bytes(rsp))


# --------------------------------------------------------------------------- SNP cert table


def test_cert_table_gives_leaf_first_chain(chain: dict[str, bytes]) -> None:
    other = uuid.UUID("00000000-1111-2222-3333-444444444444")
    blob = _cert_table(
        [
            (sev.ARK_GUID, chain["ark"]),
            (other, b"not a certificate"),
            (sev.VCEK_GUID, chain["vcek"]),
            (sev.ASK_GUID, chain["ask"]),
        ],
        pad_to=0x4000,
    )
    assert sev.certificates_from_table(blob) == (chain["vcek"], chain["ask"], chain["ark"])


def test_cert_table_accepts_zero_padded_der_and_pem(chain: dict[str, bytes]) -> None:
    pem = x509.load_der_x509_certificate(chain["ask"]).public_bytes(serialization.Encoding.PEM)
    blob = _cert_table([(sev.VCEK_GUID, chain["vcek"] + bytes(100)), (sev.ASK_GUID, pem)])
    assert sev.certificates_from_table(blob) == (chain["vcek"], chain["ask"])


def test_cert_table_keeps_trailing_zero_bytes_inside_der() -> None:
    # A DER body may itself end in 0x00; only bytes past the DER length are padding.
    der = b"\x30\x03\x02\x01\x00"
    blob = _cert_table([(sev.ARK_GUID, der + bytes(7))])
    assert sev.certificates_from_table(blob) == (der,)


def test_cert_table_empty_means_no_certificates() -> None:
    assert sev.certificates_from_table(b"") == ()
    assert sev.certificates_from_table(bytes(0x4000)) == ()


def test_cert_table_structural_errors(chain: dict[str, bytes]) -> None:
    good = _cert_table([(sev.VCEK_GUID, chain["vcek"])])
    # No terminator: cut the table just after the first entry.
    no_term = struct.pack("<16sII", sev.VCEK_GUID.bytes, 24, 10) + b"\x01" * 10
    with pytest.raises(EvidenceParseError, match="no terminating"):
        sev.parse_cert_table(no_term)
    # Offset pointing into the table itself.
    inside = bytearray(good)
    struct.pack_into("<I", inside, 16, 8)
    with pytest.raises(EvidenceParseError, match="outside the data area"):
        sev.parse_cert_table(bytes(inside))
    # Length past the end.
    past = bytearray(good)
    struct.pack_into("<I", past, 20, len(good))
    with pytest.raises(EvidenceParseError, match="outside the data area"):
        sev.parse_cert_table(bytes(past))
    dup = _cert_table([(sev.VCEK_GUID, chain["vcek"]), (sev.VCEK_GUID, chain["vcek"])])
    with pytest.raises(EvidenceParseError, match="twice"):
        sev.parse_cert_table(dup)
    junk = _cert_table([(sev.VCEK_GUID, b"GIF89a")])
    with pytest.raises(EvidenceParseError, match="VCEK .* not a DER certificate"):
        sev.certificates_from_table(junk)
    short = _cert_table([(sev.VCEK_GUID, chain["vcek"][:-5])])
    with pytest.raises(EvidenceParseError, match="VCEK .* truncated"):
        sev.certificates_from_table(short)
    trailing = _cert_table([(sev.VCEK_GUID, chain["vcek"] + b"\x01")])
    with pytest.raises(EvidenceParseError, match="non-zero bytes after its DER"):
        sev.certificates_from_table(trailing)


@pytest.mark.vectors
def test_cert_table_with_real_amd_chain(vectors_dir: Path) -> None:
    vcek = (vectors_dir / "sev-snp" / "go-sev-guest_milan_vcek.der").read_bytes()
    pems = x509.load_pem_x509_certificates(
        (vectors_dir / "sev-snp" / "amd_milan_ask_ark.pem").read_bytes()
    )
    ask, ark = (c.public_bytes(serialization.Encoding.DER) for c in pems)
    blob = _cert_table(
        [(sev.VCEK_GUID, vcek), (sev.ASK_GUID, ask), (sev.ARK_GUID, ark)], pad_to=0x4000
    )
    assert sev.certificates_from_table(blob) == (vcek, ask, ark)


# --------------------------------------------------------------------------- SNP device


class FakeSevGuest:
    """Plays the sev-guest driver and firmware behind ``ioctl(fd, request, arg)``.

    It follows ``req_data``/``resp_data``/``certs_address`` exactly as the kernel
    does, so a wrong pointer, size or layout in the provider shows up here.
    """

    def __init__(self, certs: bytes = b"", *, fail: tuple[int, int, int] | None = None) -> None:
        self.certs = certs
        self.fail = fail  # (errno, fw_error, vmm_error)
        self.secret = b"chip-secret"
        self.measurement = b"M" * 48
        self.policy = 0x30000
        self.calls: list[tuple[int, bytes]] = []

    def __call__(self, fd: int, request: int, arg: Any) -> int:
        assert isinstance(arg, sev.SnpGuestRequestIoctl)
        assert arg.msg_version == 1, "kernel returns EINVAL for msg_version 0"
        if self.fail is not None:
            code, fw, vmm = self.fail
            arg.fw_error, arg.vmm_error = fw, vmm
            raise OSError(code, "fake failure")
        if request == sev.SNP_GET_EXT_REPORT:
            ext = sev.SnpExtReportReq.from_address(arg.req_data)
            self.calls.append((request, bytes(ext)))
            assert ext.certs_len % 4096 == 0 and ext.certs_len <= 0x4000
            ctypes.memmove(ext.certs_address, self.certs, len(self.certs))
            self._report(arg.resp_data, bytes(ext.data.user_data), ext.data.vmpl)
        elif request == sev.SNP_GET_REPORT:
            req = sev.SnpReportReq.from_address(arg.req_data)
            self.calls.append((request, bytes(req)))
            self._report(arg.resp_data, bytes(req.user_data), req.vmpl)
        elif request == sev.SNP_GET_DERIVED_KEY:
            kreq = sev.SnpDerivedKeyReq.from_address(arg.req_data)
            self.calls.append((request, bytes(kreq)))
            mixed = b""
            if kreq.guest_field_select & 1:
                mixed += struct.pack("<Q", self.policy)
            if kreq.guest_field_select & 8:
                mixed += self.measurement
            key = hashlib.sha256(self.secret + mixed).digest()
            rsp = bytearray(64)
            rsp[0x20:0x40] = key
            ctypes.memmove(arg.resp_data, bytes(rsp), 64)
        else:
            raise OSError(errno.ENOTTY, "unknown ioctl")
        return 0

    def _report(self, resp_addr: int, user_data: bytes, vmpl: int) -> None:
        rsp = _report_rsp(_snp_report(user_data, vmpl))
        ctypes.memmove(resp_addr, rsp, len(rsp))


def _sev_tree(tmp_path: Path) -> Path:
    (tmp_path / "dev").mkdir(exist_ok=True)
    (tmp_path / "dev" / "sev-guest").write_bytes(b"")
    return tmp_path


def test_sev_guest_extended_report_with_certificates(
    tmp_path: Path, chain: dict[str, bytes]
) -> None:
    fake = FakeSevGuest(_cert_table([(sev.VCEK_GUID, chain["vcek"]), (sev.ARK_GUID, chain["ark"])]))
    provider = sev.SevGuestProvider(_sev_tree(tmp_path), vmpl=1, ioctl=fake)
    ev = provider.get_evidence(RD)
    assert ev.platform == "sev-snp"
    assert ev.report == _snp_report(RD, vmpl=1)
    assert ev.certificates == (chain["vcek"], chain["ark"])
    [(request, raw)] = fake.calls
    assert request == sev.SNP_GET_EXT_REPORT
    assert raw[:64] == RD and struct.unpack_from("<I", raw, 64)[0] == 1


def test_sev_guest_plain_report(tmp_path: Path) -> None:
    fake = FakeSevGuest()
    provider = sev.SevGuestProvider(_sev_tree(tmp_path), extended=False, ioctl=fake)
    ev = provider.get_evidence(RD2)
    assert ev.report[0x50:0x90] == RD2 and ev.certificates == ()
    assert [c[0] for c in fake.calls] == [sev.SNP_GET_REPORT]


def test_sev_guest_sealing_key_is_bound_to_measurement(tmp_path: Path) -> None:
    fake = FakeSevGuest()
    provider = sev.SevGuestProvider(_sev_tree(tmp_path), ioctl=fake)
    k1 = provider.sealing_key(b"state")
    assert len(k1) == 32
    assert provider.sealing_key(b"state") == k1
    assert provider.sealing_key(b"other") != k1
    fake.measurement = b"N" * 48  # different enclave code on the same chip
    assert provider.sealing_key(b"state") != k1
    # Independent derivation: HKDF-SHA256 over the firmware key, domain tag + platform + label.
    hw = hashlib.sha256(fake.secret + struct.pack("<Q", fake.policy) + b"M" * 48).digest()
    info = b"cctrain/sealing-key/v1\x00" + b"\x00\x07sev-snp" + b"\x00\x00\x00\x05state"
    want = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(hw)
    assert k1 == want


def test_sev_guest_firmware_error_is_reported(tmp_path: Path) -> None:
    provider = sev.SevGuestProvider(
        _sev_tree(tmp_path), ioctl=FakeSevGuest(fail=(errno.EIO, 0x16, 0))
    )
    with pytest.raises(AttestationError, match=r"SNP_GET_EXT_REPORT .* EIO .*firmware error 0x16"):
        provider.get_evidence(RD)
    busy = sev.SevGuestProvider(_sev_tree(tmp_path), ioctl=FakeSevGuest(fail=(errno.EIO, 0, 2)))
    with pytest.raises(AttestationError, match="throttling"):
        busy.sealing_key(b"x")


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_real_ioctl_path_reaches_the_kernel(tmp_path: Path) -> None:
    # The real fcntl.ioctl with our request numbers and ctypes arguments: /dev/null
    # answers ENOTTY, which proves the call was made (no TypeError/OverflowError from
    # Python) and that the failure is mapped to a clear error.
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "sev-guest").symlink_to("/dev/null")
    (tmp_path / "dev" / "tdx_guest").symlink_to("/dev/null")
    with pytest.raises(AttestationError, match="SNP_GET_EXT_REPORT .*ENOTTY"):
        sev.SevGuestProvider(tmp_path).get_evidence(RD)
    with pytest.raises(AttestationError, match="SNP_GET_DERIVED_KEY .*ENOTTY"):
        sev.SevGuestProvider(tmp_path).sealing_key(b"state")
    provider = tdx.TdxGuestProvider(_tsm_tree(tmp_path), fs=FakeTsm("tdx_guest"))
    with pytest.raises(AttestationError, match="TDX_CMD_GET_REPORT0 .*ENOTTY"):
        provider.get_tdreport(RD)


def test_sev_guest_missing_device(tmp_path: Path) -> None:
    provider = sev.SevGuestProvider(tmp_path, ioctl=FakeSevGuest())
    with pytest.raises(NoEvidenceProviderError, match="sev-guest not found"):
        provider.get_evidence(RD)


# --------------------------------------------------------------------------- configfs-tsm


class FakeTsm(OsFilesystem):
    """Real files under tmp_path; plays the kernel's side of configfs-tsm."""

    def __init__(
        self,
        provider: str = "sev_guest",
        *,
        auxblob: bytes = b"",
        extra_generation: int = 0,
        outblob_error: int | None = None,
        stale: bool = False,
        mkdir_error: int | None = None,
    ) -> None:
        self.provider = provider
        self.auxblob = auxblob
        self.extra_generation = extra_generation
        self.outblob_error = outblob_error
        self.stale = stale
        self.mkdir_error = mkdir_error
        self.writes: list[tuple[str, bytes]] = []

    def mkdir(self, path: Path) -> None:
        if self.mkdir_error is not None:
            raise OSError(self.mkdir_error, "fake mkdir failure")
        super().mkdir(path)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")
        (path / "inblob").write_bytes(b"")
        if self.provider == "sev_guest":
            (path / "privlevel").write_bytes(b"")
            (path / "auxblob").write_bytes(self.auxblob)

    def write(self, path: Path, data: bytes) -> None:
        super().write(path, data)
        self.writes.append((path.name, data))
        gen = int((path.parent / "generation").read_text()) + 1 + self.extra_generation
        (path.parent / "generation").write_text(f"{gen}\n")

    def read(self, path: Path) -> bytes:
        if path.name == "outblob":
            if self.outblob_error is not None:
                raise OSError(self.outblob_error, "fake firmware failure")
            inblob = RD2 if self.stale else (path.parent / "inblob").read_bytes()
            if self.provider == "sev_guest":
                return _snp_report(inblob)
            if self.provider == "arm_cca_guest":
                return cca_forge.cca_token(inblob)
            return _tdx_quote_v4(inblob)
        return super().read(path)

    def rmdir(self, path: Path) -> None:
        for child in path.iterdir():
            child.unlink()
        super().rmdir(path)


def _tsm_tree(tmp_path: Path) -> Path:
    (tmp_path / REPORT_DIR).mkdir(parents=True)
    return tmp_path


def _entries(root: Path) -> list[Path]:
    return list((root / REPORT_DIR).iterdir())


def test_configfs_tsm_snp_report_with_certificates(tmp_path: Path, chain: dict[str, bytes]) -> None:
    root = _tsm_tree(tmp_path)
    fs = FakeTsm(auxblob=_cert_table([(sev.VCEK_GUID, chain["vcek"])]))
    provider = ConfigfsTsmProvider(root, fs=fs)
    assert provider.platform == "sev-snp"
    ev = provider.get_evidence(RD)
    assert ev.platform == "sev-snp"
    assert ev.report == _snp_report(RD)
    assert ev.certificates == (chain["vcek"],)
    assert fs.writes == [("inblob", RD)]
    assert _entries(root) == [], "report entries must be removed"


def test_configfs_tsm_privlevel_is_written_and_counted(tmp_path: Path) -> None:
    root = _tsm_tree(tmp_path)
    fs = FakeTsm()
    ConfigfsTsmProvider(root, privlevel=2, fs=fs).get_evidence(RD)
    assert fs.writes == [("privlevel", b"2\n"), ("inblob", RD)]


def test_configfs_tsm_tdx_quote(tmp_path: Path) -> None:
    root = _tsm_tree(tmp_path)
    provider = ConfigfsTsmProvider(root, fs=FakeTsm("tdx_guest"))
    assert provider.platform == "tdx"
    ev = provider.get_evidence(RD)
    assert ev.platform == "tdx" and ev.report == _tdx_quote_v4(RD) and ev.certificates == ()
    with pytest.raises(AttestationError, match="key-release service"):
        provider.sealing_key(b"state")


def test_configfs_tsm_detects_concurrent_writer(tmp_path: Path) -> None:
    root = _tsm_tree(tmp_path)
    provider = ConfigfsTsmProvider(root, fs=FakeTsm(extra_generation=1))
    with pytest.raises(AttestationError, match="another writer"):
        provider.get_evidence(RD)
    assert _entries(root) == []


def test_configfs_tsm_stale_outblob_is_refused(tmp_path: Path) -> None:
    provider = ConfigfsTsmProvider(_tsm_tree(tmp_path), fs=FakeTsm(stale=True))
    with pytest.raises(AttestationError, match="report_data"):
        provider.get_evidence(RD)


def test_configfs_tsm_firmware_failure(tmp_path: Path) -> None:
    root = _tsm_tree(tmp_path)
    provider = ConfigfsTsmProvider(root, fs=FakeTsm(outblob_error=errno.EIO))
    with pytest.raises(AttestationError, match=r"outblob.*EIO"):
        provider.get_evidence(RD)
    assert _entries(root) == []


def test_configfs_tsm_without_tsm_driver(tmp_path: Path) -> None:
    with pytest.raises(NoEvidenceProviderError, match="no TSM driver registered"):
        ConfigfsTsmProvider(_tsm_tree(tmp_path), fs=FakeTsm(mkdir_error=errno.ENXIO))


def test_configfs_tsm_absent(tmp_path: Path) -> None:
    with pytest.raises(NoEvidenceProviderError, match="configfs-tsm needs Linux >= 6.7"):
        ConfigfsTsm(tmp_path).provider()


def test_configfs_tsm_unknown_provider(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match="'example_guest' is not supported"):
        ConfigfsTsmProvider(_tsm_tree(tmp_path), fs=FakeTsm("example_guest"))


def test_configfs_tsm_arm_cca_realm_token(tmp_path: Path) -> None:
    # drivers/virt/coco/arm-cca-guest registers as KBUILD_MODNAME, "arm_cca_guest"; the
    # inblob is the realm challenge, the outblob the whole CCA token.
    root = _tsm_tree(tmp_path)
    fs = FakeTsm("arm_cca_guest")
    provider = ConfigfsTsmProvider(root, fs=fs)
    assert provider.platform == "arm-cca"
    ev = provider.get_evidence(RD)
    assert ev.platform == "arm-cca" and ev.certificates == ()
    assert fs.writes == [("inblob", RD)]
    assert _entries(root) == []
    from cctrain.attestation.base import Evidence
    from cctrain.attestation.cose import point_bytes
    from cctrain.attestation.pipeline import verify_evidence

    cpak = point_bytes(cca_forge.TEST_CPAK.public_key())
    claims = verify_evidence(Evidence("arm-cca", ev.report), trust_keys=[cpak])
    assert claims.report_data == RD and claims.nonce == RD
    assert measurement_of(ev) == claims.measurement == b"\x5a" * 32
    with pytest.raises(NoSealingKeyError, match='key = "consortium"'):
        provider.sealing_key(b"state")
    with pytest.raises(AttestationError, match="privlevel applies to SEV-SNP only"):
        ConfigfsTsmProvider(root, privlevel=1, fs=fs)


def test_configfs_tsm_arm_cca_stale_token_is_refused(tmp_path: Path) -> None:
    provider = ConfigfsTsmProvider(_tsm_tree(tmp_path), fs=FakeTsm("arm_cca_guest", stale=True))
    with pytest.raises(AttestationError, match="arm-cca evidence carries report_data"):
        provider.get_evidence(RD)


def test_detect_arm_cca_through_configfs_tsm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cctrain_enclave.providers.detect as detect

    root = _tsm_tree(tmp_path)
    real = detect.ConfigfsTsmProvider
    monkeypatch.setattr(
        detect, "ConfigfsTsm", lambda r: ConfigfsTsm(r, fs=FakeTsm("arm_cca_guest"))
    )
    monkeypatch.setattr(
        detect, "ConfigfsTsmProvider", lambda r: real(r, fs=FakeTsm("arm_cca_guest"))
    )
    assert detect_provider("auto", root=root).platform == "arm-cca"
    assert detect_provider("arm-cca", root=root).platform == "arm-cca"
    monkeypatch.setattr(detect, "ConfigfsTsmProvider", lambda r: real(r, fs=FakeTsm()))
    with pytest.raises(AttestationError, match="not 'arm_cca_guest'"):
        detect_provider("arm-cca", root=root)


def test_configfs_snp_sealing_key_needs_sev_guest_device(tmp_path: Path) -> None:
    provider = ConfigfsTsmProvider(_tsm_tree(tmp_path), fs=FakeTsm())
    with pytest.raises(NoEvidenceProviderError, match="SNP_GET_DERIVED_KEY"):
        provider.sealing_key(b"state")


# --------------------------------------------------------------------------- TDX


def test_tdx_provider_uses_configfs_quote(tmp_path: Path) -> None:
    provider = tdx.TdxGuestProvider(_tsm_tree(tmp_path), fs=FakeTsm("tdx_guest"))
    ev = provider.get_evidence(RD)
    assert ev.platform == "tdx" and ev.report[568:632] == RD
    with pytest.raises(AttestationError, match="TDX has no hardware sealing key"):
        provider.sealing_key(b"state")


def test_tdx_without_configfs_explains_tdreport_is_not_a_quote(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "tdx_guest").write_bytes(b"")
    with pytest.raises(NoEvidenceProviderError, match="only a TDREPORT"):
        tdx.TdxGuestProvider(tmp_path)


def test_tdx_provider_refuses_snp_tsm(tmp_path: Path) -> None:
    with pytest.raises(NoEvidenceProviderError, match="not a TDX guest"):
        tdx.TdxGuestProvider(_tsm_tree(tmp_path), fs=FakeTsm("sev_guest"))


def test_tdreport_ioctl_round_trip(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "tdx_guest").write_bytes(b"")
    seen: list[bytes] = []

    def fake_ioctl(fd: int, request: int, arg: Any) -> int:
        assert request == tdx.TDX_CMD_GET_REPORT0
        assert isinstance(arg, tdx.TdxReportReq)
        seen.append(bytes(arg.reportdata))
        report = bytearray(1024)
        report[0:8] = b"\x81" + bytes(7)  # REPORTTYPE: TDX
        report[128:192] = bytes(arg.reportdata)
        ctypes.memmove(arg.tdreport, bytes(report), 1024)
        return 0

    provider = tdx.TdxGuestProvider(_tsm_tree(tmp_path), fs=FakeTsm("tdx_guest"), ioctl=fake_ioctl)
    tdreport = provider.get_tdreport(RD)
    assert seen == [RD]
    assert len(tdreport) == 1024 and tdreport[128:192] == RD


def test_tdreport_echo_mismatch_is_refused() -> None:
    req = tdx.pack_tdreport_request(RD)
    ctypes.memmove(req.tdreport, b"\x81" + bytes(1023), 1024)
    with pytest.raises(AttestationError, match="report_data"):
        tdx.parse_tdreport_response(req, RD)


# --------------------------------------------------------------------------- Gramine


def _gramine_tree(tmp_path: Path, *, kind: str = "dcap", quote_data: bytes = RD) -> Path:
    att = tmp_path / "dev" / "attestation"
    (att / "keys").mkdir(parents=True)
    (att / "attestation_type").write_text(kind)
    (att / "quote").write_bytes(_sgx_quote_v3(quote_data))
    (att / "keys" / "_sgx_mrenclave").write_bytes(b"E" * 16)
    return tmp_path


def test_gramine_quote(tmp_path: Path) -> None:
    root = _gramine_tree(tmp_path)
    ev = GramineProvider(root).get_evidence(RD)
    assert ev.platform == "sgx" and ev.report == _sgx_quote_v3(RD)
    assert (root / "dev" / "attestation" / "user_report_data").read_bytes() == RD


def test_gramine_quote_for_other_report_data_is_refused(tmp_path: Path) -> None:
    provider = GramineProvider(_gramine_tree(tmp_path, quote_data=RD2))
    with pytest.raises(AttestationError, match="another writer"):
        provider.get_evidence(RD)


@pytest.mark.parametrize("kind,hint", [("none", 'remote_attestation = "none"'), ("epid", "EPID")])
def test_gramine_needs_dcap(tmp_path: Path, kind: str, hint: str) -> None:
    with pytest.raises(AttestationError, match=hint):
        GramineProvider(_gramine_tree(tmp_path, kind=kind))


def test_gramine_sealing_key(tmp_path: Path) -> None:
    root = _gramine_tree(tmp_path)
    provider = GramineProvider(root)
    k = provider.sealing_key(b"state")
    assert len(k) == 32 and k != b"E" * 16 and provider.sealing_key(b"other") != k
    (root / "dev" / "attestation" / "keys" / "_sgx_mrenclave").write_bytes(b"F" * 16)
    assert provider.sealing_key(b"state") != k
    (root / "dev" / "attestation" / "keys" / "_sgx_mrenclave").write_bytes(b"F" * 15)
    with pytest.raises(AttestationError, match="15 bytes"):
        provider.sealing_key(b"state")


# --------------------------------------------------------------------------- detection


def test_nothing_present_lists_every_path(tmp_path: Path) -> None:
    with pytest.raises(NoEvidenceProviderError) as info:
        detect_provider("auto", root=tmp_path, state_dir=tmp_path / "state")
    msg = str(info.value)
    for rel in (
        "sys/kernel/config/tsm/report",
        "dev/sev-guest",
        "dev/tdx_guest",
        "dev/attestation/attestation_type",
    ):
        assert str(tmp_path / rel) in msg
    assert "--platform simulated" in msg
    assert not (tmp_path / "state").exists(), "auto must never fall back to the simulator"


def test_auto_picks_sev_guest(tmp_path: Path) -> None:
    provider = detect_provider(root=_sev_tree(tmp_path))
    assert isinstance(provider, sev.SevGuestProvider) and provider.platform == "sev-snp"


def test_auto_picks_gramine(tmp_path: Path) -> None:
    provider = detect_provider(root=_gramine_tree(tmp_path))
    assert isinstance(provider, GramineProvider) and provider.platform == "sgx"


def test_auto_reports_gramine_misconfiguration(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match="cctrain needs 'dcap'"):
        detect_provider(root=_gramine_tree(tmp_path, kind="none"))


def test_auto_notes_tdx_guest_without_configfs(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "tdx_guest").write_bytes(b"")
    with pytest.raises(NoEvidenceProviderError, match="only a TDREPORT"):
        detect_provider(root=tmp_path)


def test_auto_skips_configfs_without_provider_and_cleans_up(tmp_path: Path) -> None:
    # A bare report directory (configfs-tsm built, no TSM behind it) falls through
    # to the next interface and leaves no entry behind.
    root = _sev_tree(_tsm_tree(tmp_path))
    provider = detect_provider(root=root)
    assert isinstance(provider, sev.SevGuestProvider)
    assert _entries(root) == []


@pytest.mark.parametrize("platform", ["sev-snp", "tdx", "sgx"])
def test_explicit_platform_absent(tmp_path: Path, platform: str) -> None:
    with pytest.raises(NoEvidenceProviderError):
        detect_provider(platform, root=tmp_path)


def test_explicit_sgx_and_sev(tmp_path: Path) -> None:
    assert isinstance(detect_provider("sgx", root=_gramine_tree(tmp_path)), GramineProvider)
    assert isinstance(detect_provider("sev-snp", root=_sev_tree(tmp_path)), sev.SevGuestProvider)


def test_unknown_platform(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match="unknown platform 'sev'"):
        detect_provider("sev", root=tmp_path)


def test_simulated_needs_state_dir(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match="state directory"):
        detect_provider("simulated", root=tmp_path)


def test_simulated_only_when_named(tmp_path: Path) -> None:
    provider = detect_provider("simulated", root=tmp_path, state_dir=tmp_path / "state")
    assert provider.platform == "simulated"


# --------------------------------------------------------------------------- deploy recipes

DEPLOY = Path(__file__).resolve().parents[2] / "enclave" / "deploy"


def test_policy_snippet_uses_only_reference_keys_the_policy_accepts() -> None:
    import tomllib

    from cctrain.attestation.base import get_platform
    from cctrain.policy import COMMON_REFERENCE_KEYS

    doc = tomllib.loads((DEPLOY / "policy-attestation.example.toml").read_text())
    att = doc["attestation"]
    assert att["allow_debug"] is False and att["allow_simulated"] is False
    assert "simulated" not in att["platforms"]
    assert set(att["reference"]) == set(att["platforms"]) == {"sev-snp", "tdx", "sgx"}
    for plat, ref in att["reference"].items():
        allowed = COMMON_REFERENCE_KEYS | get_platform(plat).reference_keys
        assert set(ref) <= allowed, (plat, sorted(set(ref) - allowed))
        assert ref["measurements"], f"{plat}: measurements must be pinned"


def test_manifest_template_is_production_dcap() -> None:
    text = (DEPLOY / "cctrain-enclave.manifest.template").read_text()
    lines = {
        ln.split("=", 1)[0].strip(): ln.split("=", 1)[1].strip()
        for ln in text.splitlines()
        if "=" in ln and not ln.lstrip().startswith(("#", "{", '"'))
    }
    assert lines["sgx.remote_attestation"] == '"dcap"'
    assert lines["sgx.debug"] == "false"
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert "insecure__" not in code, "argv/env must not come from the untrusted host"
    assert 'type = "encrypted", path = "/state"' in text
