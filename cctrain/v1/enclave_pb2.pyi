from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Evidence(_message.Message):
    __slots__ = ("platform", "report", "certificates", "collateral_json")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    COLLATERAL_JSON_FIELD_NUMBER: _ClassVar[int]
    platform: str
    report: bytes
    certificates: _containers.RepeatedScalarFieldContainer[bytes]
    collateral_json: str
    def __init__(self, platform: _Optional[str] = ..., report: _Optional[bytes] = ..., certificates: _Optional[_Iterable[bytes]] = ..., collateral_json: _Optional[str] = ...) -> None: ...

class AttestRequest(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class AttestResponse(_message.Message):
    __slots__ = ("evidence", "hpke_public_key", "signing_public_key", "tls_certificate", "policy_digest", "locked", "gpu_evidence")
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    HPKE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNING_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TLS_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    LOCKED_FIELD_NUMBER: _ClassVar[int]
    GPU_EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    evidence: Evidence
    hpke_public_key: bytes
    signing_public_key: bytes
    tls_certificate: bytes
    policy_digest: bytes
    locked: bool
    gpu_evidence: _containers.RepeatedCompositeFieldContainer[Evidence]
    def __init__(self, evidence: _Optional[_Union[Evidence, _Mapping]] = ..., hpke_public_key: _Optional[bytes] = ..., signing_public_key: _Optional[bytes] = ..., tls_certificate: _Optional[bytes] = ..., policy_digest: _Optional[bytes] = ..., locked: _Optional[bool] = ..., gpu_evidence: _Optional[_Iterable[_Union[Evidence, _Mapping]]] = ...) -> None: ...

class ShardHeader(_message.Message):
    __slots__ = ("version", "policy_digest", "party_id", "shard_id", "format", "encapsulated_key", "nonce_prefix", "chunk_size", "plaintext_size", "chunk_count", "created_unix_ms", "commitment_key_sealed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PARTY_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ENCAPSULATED_KEY_FIELD_NUMBER: _ClassVar[int]
    NONCE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    COMMITMENT_KEY_SEALED_FIELD_NUMBER: _ClassVar[int]
    version: int
    policy_digest: bytes
    party_id: str
    shard_id: str
    format: str
    encapsulated_key: bytes
    nonce_prefix: bytes
    chunk_size: int
    plaintext_size: int
    chunk_count: int
    created_unix_ms: int
    commitment_key_sealed: bytes
    def __init__(self, version: _Optional[int] = ..., policy_digest: _Optional[bytes] = ..., party_id: _Optional[str] = ..., shard_id: _Optional[str] = ..., format: _Optional[str] = ..., encapsulated_key: _Optional[bytes] = ..., nonce_prefix: _Optional[bytes] = ..., chunk_size: _Optional[int] = ..., plaintext_size: _Optional[int] = ..., chunk_count: _Optional[int] = ..., created_unix_ms: _Optional[int] = ..., commitment_key_sealed: _Optional[bytes] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("header", "signature", "resume_from")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    header: bytes
    signature: bytes
    resume_from: int
    def __init__(self, header: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., resume_from: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("index", "last", "ciphertext")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    index: int
    last: bool
    ciphertext: bytes
    def __init__(self, index: _Optional[int] = ..., last: _Optional[bool] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class UploadTrailer(_message.Message):
    __slots__ = ("header_sha256", "plaintext_size", "chunk_count", "commitment", "signature")
    HEADER_SHA256_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    header_sha256: bytes
    plaintext_size: int
    chunk_count: int
    commitment: bytes
    signature: bytes
    def __init__(self, header_sha256: _Optional[bytes] = ..., plaintext_size: _Optional[int] = ..., chunk_count: _Optional[int] = ..., commitment: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("header", "chunk", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: Chunk
    trailer: UploadTrailer
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., trailer: _Optional[_Union[UploadTrailer, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("next_index",)
    NEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    next_index: int
    def __init__(self, next_index: _Optional[int] = ...) -> None: ...

class SignedReceipt(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ReceiptBody(_message.Message):
    __slots__ = ("version", "policy_digest", "party_id", "shard_id", "commitment", "rows", "plaintext_size", "header_sha256", "accepted_unix_ms", "enclave_signing_key", "journal_seq", "journal_prev_sha256", "package_sha256")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PARTY_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_SIZE_FIELD_NUMBER: _ClassVar[int]
    HEADER_SHA256_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ENCLAVE_SIGNING_KEY_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_PREV_SHA256_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_SHA256_FIELD_NUMBER: _ClassVar[int]
    version: int
    policy_digest: bytes
    party_id: str
    shard_id: str
    commitment: bytes
    rows: int
    plaintext_size: int
    header_sha256: bytes
    accepted_unix_ms: int
    enclave_signing_key: bytes
    journal_seq: int
    journal_prev_sha256: bytes
    package_sha256: bytes
    def __init__(self, version: _Optional[int] = ..., policy_digest: _Optional[bytes] = ..., party_id: _Optional[str] = ..., shard_id: _Optional[str] = ..., commitment: _Optional[bytes] = ..., rows: _Optional[int] = ..., plaintext_size: _Optional[int] = ..., header_sha256: _Optional[bytes] = ..., accepted_unix_ms: _Optional[int] = ..., enclave_signing_key: _Optional[bytes] = ..., journal_seq: _Optional[int] = ..., journal_prev_sha256: _Optional[bytes] = ..., package_sha256: _Optional[bytes] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("ack", "receipt")
    ACK_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    receipt: SignedReceipt
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ..., receipt: _Optional[_Union[SignedReceipt, _Mapping]] = ...) -> None: ...

class UploadStatusRequest(_message.Message):
    __slots__ = ("shard_id",)
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    shard_id: str
    def __init__(self, shard_id: _Optional[str] = ...) -> None: ...

class UploadStatusResponse(_message.Message):
    __slots__ = ("state", "header_sha256", "next_index", "receipt")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[UploadStatusResponse.State]
        PARTIAL: _ClassVar[UploadStatusResponse.State]
        ACCEPTED: _ClassVar[UploadStatusResponse.State]
    UNKNOWN: UploadStatusResponse.State
    PARTIAL: UploadStatusResponse.State
    ACCEPTED: UploadStatusResponse.State
    STATE_FIELD_NUMBER: _ClassVar[int]
    HEADER_SHA256_FIELD_NUMBER: _ClassVar[int]
    NEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    state: UploadStatusResponse.State
    header_sha256: bytes
    next_index: int
    receipt: SignedReceipt
    def __init__(self, state: _Optional[_Union[UploadStatusResponse.State, str]] = ..., header_sha256: _Optional[bytes] = ..., next_index: _Optional[int] = ..., receipt: _Optional[_Union[SignedReceipt, _Mapping]] = ...) -> None: ...

class ListReceiptsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListReceiptsResponse(_message.Message):
    __slots__ = ("receipts",)
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    receipts: _containers.RepeatedCompositeFieldContainer[SignedReceipt]
    def __init__(self, receipts: _Optional[_Iterable[_Union[SignedReceipt, _Mapping]]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("phase", "providers_uploaded", "providers_missing", "approvals", "detail", "policy_digest", "manifest", "manifest_signature", "approvals_missing", "journal_seq", "journal_head_sha256", "epsilon_spent", "locked", "unlock_threshold", "unlocked_by", "state_key")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_UPLOADED_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_MISSING_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_MISSING_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_HEAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    LOCKED_FIELD_NUMBER: _ClassVar[int]
    UNLOCK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    UNLOCKED_BY_FIELD_NUMBER: _ClassVar[int]
    STATE_KEY_FIELD_NUMBER: _ClassVar[int]
    phase: str
    providers_uploaded: _containers.RepeatedScalarFieldContainer[str]
    providers_missing: _containers.RepeatedScalarFieldContainer[str]
    approvals: _containers.RepeatedScalarFieldContainer[str]
    detail: str
    policy_digest: bytes
    manifest: bytes
    manifest_signature: bytes
    approvals_missing: _containers.RepeatedScalarFieldContainer[str]
    journal_seq: int
    journal_head_sha256: bytes
    epsilon_spent: float
    locked: bool
    unlock_threshold: int
    unlocked_by: _containers.RepeatedScalarFieldContainer[str]
    state_key: str
    def __init__(self, phase: _Optional[str] = ..., providers_uploaded: _Optional[_Iterable[str]] = ..., providers_missing: _Optional[_Iterable[str]] = ..., approvals: _Optional[_Iterable[str]] = ..., detail: _Optional[str] = ..., policy_digest: _Optional[bytes] = ..., manifest: _Optional[bytes] = ..., manifest_signature: _Optional[bytes] = ..., approvals_missing: _Optional[_Iterable[str]] = ..., journal_seq: _Optional[int] = ..., journal_head_sha256: _Optional[bytes] = ..., epsilon_spent: _Optional[float] = ..., locked: _Optional[bool] = ..., unlock_threshold: _Optional[int] = ..., unlocked_by: _Optional[_Iterable[str]] = ..., state_key: _Optional[str] = ...) -> None: ...

class StartTrainingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StartTrainingResponse(_message.Message):
    __slots__ = ("phase",)
    PHASE_FIELD_NUMBER: _ClassVar[int]
    phase: str
    def __init__(self, phase: _Optional[str] = ...) -> None: ...

class WatchTrainingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrainingEvent(_message.Message):
    __slots__ = ("step", "total_steps", "epoch", "loss", "epsilon", "phase", "detail")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    epoch: int
    loss: float
    epsilon: float
    phase: str
    detail: str
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[int] = ..., loss: _Optional[float] = ..., epsilon: _Optional[float] = ..., phase: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ApprovalBody(_message.Message):
    __slots__ = ("version", "policy_digest", "party_id", "manifest_sha256", "created_unix_ms", "release_index")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PARTY_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_INDEX_FIELD_NUMBER: _ClassVar[int]
    version: int
    policy_digest: bytes
    party_id: str
    manifest_sha256: bytes
    created_unix_ms: int
    release_index: int
    def __init__(self, version: _Optional[int] = ..., policy_digest: _Optional[bytes] = ..., party_id: _Optional[str] = ..., manifest_sha256: _Optional[bytes] = ..., created_unix_ms: _Optional[int] = ..., release_index: _Optional[int] = ...) -> None: ...

class SignedApproval(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ApproveReleaseRequest(_message.Message):
    __slots__ = ("approval",)
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    approval: SignedApproval
    def __init__(self, approval: _Optional[_Union[SignedApproval, _Mapping]] = ...) -> None: ...

class ApproveReleaseResponse(_message.Message):
    __slots__ = ("approvals", "phase")
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedScalarFieldContainer[str]
    phase: str
    def __init__(self, approvals: _Optional[_Iterable[str]] = ..., phase: _Optional[str] = ...) -> None: ...

class FetchReleaseRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FetchReleaseResponse(_message.Message):
    __slots__ = ("manifest", "manifest_signature", "encapsulated_key", "sealed_weights", "release_record")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ENCAPSULATED_KEY_FIELD_NUMBER: _ClassVar[int]
    SEALED_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_RECORD_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    manifest_signature: bytes
    encapsulated_key: bytes
    sealed_weights: bytes
    release_record: bytes
    def __init__(self, manifest: _Optional[bytes] = ..., manifest_signature: _Optional[bytes] = ..., encapsulated_key: _Optional[bytes] = ..., sealed_weights: _Optional[bytes] = ..., release_record: _Optional[bytes] = ...) -> None: ...

class GetJournalRequest(_message.Message):
    __slots__ = ("from_seq",)
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    from_seq: int
    def __init__(self, from_seq: _Optional[int] = ...) -> None: ...

class GetJournalResponse(_message.Message):
    __slots__ = ("entries", "head_seq")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedScalarFieldContainer[bytes]
    head_seq: int
    def __init__(self, entries: _Optional[_Iterable[bytes]] = ..., head_seq: _Optional[int] = ...) -> None: ...

class UnlockRequest(_message.Message):
    __slots__ = ("sealed_share", "journal_seq", "journal_head_sha256")
    SEALED_SHARE_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_HEAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    sealed_share: bytes
    journal_seq: int
    journal_head_sha256: bytes
    def __init__(self, sealed_share: _Optional[bytes] = ..., journal_seq: _Optional[int] = ..., journal_head_sha256: _Optional[bytes] = ...) -> None: ...

class UnlockResponse(_message.Message):
    __slots__ = ("locked", "threshold", "unlocked_by")
    LOCKED_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    UNLOCKED_BY_FIELD_NUMBER: _ClassVar[int]
    locked: bool
    threshold: int
    unlocked_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, locked: _Optional[bool] = ..., threshold: _Optional[int] = ..., unlocked_by: _Optional[_Iterable[str]] = ...) -> None: ...

class ConsentBody(_message.Message):
    __slots__ = ("version", "policy_digest", "party_id", "action", "shard_id", "manifest_sha256", "created_unix_ms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PARTY_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    version: int
    policy_digest: bytes
    party_id: str
    action: str
    shard_id: str
    manifest_sha256: bytes
    created_unix_ms: int
    def __init__(self, version: _Optional[int] = ..., policy_digest: _Optional[bytes] = ..., party_id: _Optional[str] = ..., action: _Optional[str] = ..., shard_id: _Optional[str] = ..., manifest_sha256: _Optional[bytes] = ..., created_unix_ms: _Optional[int] = ...) -> None: ...

class SignedConsent(_message.Message):
    __slots__ = ("body", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class WithdrawShardRequest(_message.Message):
    __slots__ = ("withdrawal",)
    WITHDRAWAL_FIELD_NUMBER: _ClassVar[int]
    withdrawal: SignedConsent
    def __init__(self, withdrawal: _Optional[_Union[SignedConsent, _Mapping]] = ...) -> None: ...

class WithdrawShardResponse(_message.Message):
    __slots__ = ("deletion_receipt",)
    DELETION_RECEIPT_FIELD_NUMBER: _ClassVar[int]
    deletion_receipt: bytes
    def __init__(self, deletion_receipt: _Optional[bytes] = ...) -> None: ...

class VetoReleaseRequest(_message.Message):
    __slots__ = ("veto",)
    VETO_FIELD_NUMBER: _ClassVar[int]
    veto: SignedConsent
    def __init__(self, veto: _Optional[_Union[SignedConsent, _Mapping]] = ...) -> None: ...

class VetoReleaseResponse(_message.Message):
    __slots__ = ("phase",)
    PHASE_FIELD_NUMBER: _ClassVar[int]
    phase: str
    def __init__(self, phase: _Optional[str] = ...) -> None: ...
