from cctrain.v1 import enclave_pb2 as _enclave_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignedJournalEntry(_message.Message):
    __slots__ = ("entry", "signature")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    entry: bytes
    signature: bytes
    def __init__(self, entry: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class JournalEntry(_message.Message):
    __slots__ = ("version", "seq", "prev_sha256", "policy_digest", "time_unix_ms", "genesis", "shard_accepted", "uploads_closed", "checkpoint", "manifest", "approval", "released", "failed", "expired", "shard_withdrawn", "vetoed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PREV_SHA256_FIELD_NUMBER: _ClassVar[int]
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    GENESIS_FIELD_NUMBER: _ClassVar[int]
    SHARD_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    UPLOADS_CLOSED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    SHARD_WITHDRAWN_FIELD_NUMBER: _ClassVar[int]
    VETOED_FIELD_NUMBER: _ClassVar[int]
    version: int
    seq: int
    prev_sha256: bytes
    policy_digest: bytes
    time_unix_ms: int
    genesis: Genesis
    shard_accepted: ShardAccepted
    uploads_closed: UploadsClosed
    checkpoint: CheckpointSaved
    manifest: ManifestBuilt
    approval: ReleaseApproved
    released: Released
    failed: RunFailed
    expired: PolicyExpired
    shard_withdrawn: ShardWithdrawn
    vetoed: ReleaseVetoed
    def __init__(self, version: _Optional[int] = ..., seq: _Optional[int] = ..., prev_sha256: _Optional[bytes] = ..., policy_digest: _Optional[bytes] = ..., time_unix_ms: _Optional[int] = ..., genesis: _Optional[_Union[Genesis, _Mapping]] = ..., shard_accepted: _Optional[_Union[ShardAccepted, _Mapping]] = ..., uploads_closed: _Optional[_Union[UploadsClosed, _Mapping]] = ..., checkpoint: _Optional[_Union[CheckpointSaved, _Mapping]] = ..., manifest: _Optional[_Union[ManifestBuilt, _Mapping]] = ..., approval: _Optional[_Union[ReleaseApproved, _Mapping]] = ..., released: _Optional[_Union[Released, _Mapping]] = ..., failed: _Optional[_Union[RunFailed, _Mapping]] = ..., expired: _Optional[_Union[PolicyExpired, _Mapping]] = ..., shard_withdrawn: _Optional[_Union[ShardWithdrawn, _Mapping]] = ..., vetoed: _Optional[_Union[ReleaseVetoed, _Mapping]] = ...) -> None: ...

class Genesis(_message.Message):
    __slots__ = ("state_format", "run_id", "platform", "measurement", "hpke_public_key", "signing_public_key", "tls_spki_sha256", "evidence", "state_key")
    STATE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENT_FIELD_NUMBER: _ClassVar[int]
    HPKE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNING_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TLS_SPKI_SHA256_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    STATE_KEY_FIELD_NUMBER: _ClassVar[int]
    state_format: int
    run_id: bytes
    platform: str
    measurement: bytes
    hpke_public_key: bytes
    signing_public_key: bytes
    tls_spki_sha256: bytes
    evidence: _enclave_pb2.Evidence
    state_key: StateKey
    def __init__(self, state_format: _Optional[int] = ..., run_id: _Optional[bytes] = ..., platform: _Optional[str] = ..., measurement: _Optional[bytes] = ..., hpke_public_key: _Optional[bytes] = ..., signing_public_key: _Optional[bytes] = ..., tls_spki_sha256: _Optional[bytes] = ..., evidence: _Optional[_Union[_enclave_pb2.Evidence, _Mapping]] = ..., state_key: _Optional[_Union[StateKey, _Mapping]] = ...) -> None: ...

class StateKey(_message.Message):
    __slots__ = ("mode", "threshold", "shares")
    MODE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    mode: str
    threshold: int
    shares: _containers.RepeatedCompositeFieldContainer[SealedShare]
    def __init__(self, mode: _Optional[str] = ..., threshold: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[SealedShare, _Mapping]]] = ...) -> None: ...

class SealedShare(_message.Message):
    __slots__ = ("party_id", "sealed", "share_sha256")
    PARTY_ID_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    SHARE_SHA256_FIELD_NUMBER: _ClassVar[int]
    party_id: str
    sealed: bytes
    share_sha256: bytes
    def __init__(self, party_id: _Optional[str] = ..., sealed: _Optional[bytes] = ..., share_sha256: _Optional[bytes] = ...) -> None: ...

class ShardAccepted(_message.Message):
    __slots__ = ("header", "receipt", "trailer", "duplicate_tag")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_TAG_FIELD_NUMBER: _ClassVar[int]
    header: _enclave_pb2.UploadHeader
    receipt: _enclave_pb2.SignedReceipt
    trailer: _enclave_pb2.UploadTrailer
    duplicate_tag: bytes
    def __init__(self, header: _Optional[_Union[_enclave_pb2.UploadHeader, _Mapping]] = ..., receipt: _Optional[_Union[_enclave_pb2.SignedReceipt, _Mapping]] = ..., trailer: _Optional[_Union[_enclave_pb2.UploadTrailer, _Mapping]] = ..., duplicate_tag: _Optional[bytes] = ...) -> None: ...

class ShardRef(_message.Message):
    __slots__ = ("party_id", "shard_id", "header_sha256", "accepted_seq")
    PARTY_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    HEADER_SHA256_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    party_id: str
    shard_id: str
    header_sha256: bytes
    accepted_seq: int
    def __init__(self, party_id: _Optional[str] = ..., shard_id: _Optional[str] = ..., header_sha256: _Optional[bytes] = ..., accepted_seq: _Optional[int] = ...) -> None: ...

class UploadsClosed(_message.Message):
    __slots__ = ("shards", "requested_by")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[ShardRef]
    requested_by: str
    def __init__(self, shards: _Optional[_Iterable[_Union[ShardRef, _Mapping]]] = ..., requested_by: _Optional[str] = ...) -> None: ...

class CheckpointSaved(_message.Message):
    __slots__ = ("step", "epsilon", "checkpoint_sha256")
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    step: int
    epsilon: float
    checkpoint_sha256: bytes
    def __init__(self, step: _Optional[int] = ..., epsilon: _Optional[float] = ..., checkpoint_sha256: _Optional[bytes] = ...) -> None: ...

class ManifestBuilt(_message.Message):
    __slots__ = ("manifest", "manifest_signature")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    manifest_signature: bytes
    def __init__(self, manifest: _Optional[bytes] = ..., manifest_signature: _Optional[bytes] = ...) -> None: ...

class ReleaseApproved(_message.Message):
    __slots__ = ("approval",)
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    approval: _enclave_pb2.SignedApproval
    def __init__(self, approval: _Optional[_Union[_enclave_pb2.SignedApproval, _Mapping]] = ...) -> None: ...

class Released(_message.Message):
    __slots__ = ("manifest_sha256", "approvals")
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    manifest_sha256: bytes
    approvals: _containers.RepeatedCompositeFieldContainer[_enclave_pb2.SignedApproval]
    def __init__(self, manifest_sha256: _Optional[bytes] = ..., approvals: _Optional[_Iterable[_Union[_enclave_pb2.SignedApproval, _Mapping]]] = ...) -> None: ...

class RunFailed(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ShardWithdrawn(_message.Message):
    __slots__ = ("request", "header_sha256", "accepted_seq")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    HEADER_SHA256_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_SEQ_FIELD_NUMBER: _ClassVar[int]
    request: _enclave_pb2.SignedConsent
    header_sha256: bytes
    accepted_seq: int
    def __init__(self, request: _Optional[_Union[_enclave_pb2.SignedConsent, _Mapping]] = ..., header_sha256: _Optional[bytes] = ..., accepted_seq: _Optional[int] = ...) -> None: ...

class ReleaseVetoed(_message.Message):
    __slots__ = ("veto",)
    VETO_FIELD_NUMBER: _ClassVar[int]
    veto: _enclave_pb2.SignedConsent
    def __init__(self, veto: _Optional[_Union[_enclave_pb2.SignedConsent, _Mapping]] = ...) -> None: ...

class PolicyExpired(_message.Message):
    __slots__ = ("expires_unix_ms", "refused")
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    expires_unix_ms: int
    refused: str
    def __init__(self, expires_unix_ms: _Optional[int] = ..., refused: _Optional[str] = ...) -> None: ...
