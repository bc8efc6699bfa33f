"""The cctrain exception tree.

Every error the SDK raises on purpose derives from :class:`CctrainError`;
lower-layer errors (``grpc.RpcError``, ``OSError``, ``ValueError`` from
parsers) are mapped onto it at the module that meets them::

    CctrainError
    ├── InputError               what the caller gave cannot be used: an argument, a file, the
    │   │                        installation or configuration (nothing was attempted)
    │   ├── PolicyError              invalid or incompletely signed policy (.problems)
    │   │   └── PolicyFileError          unreadable, or not TOML/JSON/a signed-policy envelope
    │   ├── KeyFileError             a key file is missing, malformed, too permissive or not
    │   │                            a key of this policy
    │   ├── ShardError               a shard file is unreadable or violates the schema
    │   └── EnclaveAddressError      not host:port, or a host that does not resolve
    │                                (also a ProtocolError)
    ├── SignatureError           a signature does not verify
    ├── AttestationError         evidence cannot be trusted
    │   ├── EvidenceParseError       bytes are not evidence of the claimed format
    │   ├── EvidenceVerificationError signatures / chain / collateral fail (.errors)
    │   ├── EvidenceValidationError  verified claims do not match the policy (.mismatches)
    │   ├── NoEvidenceProviderError  no TEE device present to produce evidence (also an
    │   │                            InputError: the host's setup)
    │   ├── NoSealingKeyError        the platform has no sealing key (TDX): the state key
    │   │                            must be consortium-held
    │   └── PolicyMismatchError      the enclave serves another policy (.client, .enclave)
    ├── ProtocolError            the peer broke the protocol or refused a request
    │   ├── AuthenticationError      request not signed by a party of the policy
    │   ├── PermissionDeniedError    the party may not do this
    │   ├── UploadRejectedError      the enclave rejected an upload
    │   ├── EnclaveLockedError       the enclave was locked (waiting for state-key shares)
    │   │                            when this session attested it
    │   └── EnclaveUnavailableError  the enclave cannot be reached, or the connection broke
    ├── ReceiptError             a receipt fails verification
    ├── ReleaseError             a release / manifest fails verification
    │   └── ReleaseFileError         the file is not a release bundle (also an InputError)
    └── JournalError             the enclave's journal does not verify (names the entry)

The command lines turn this tree into their exit status (:mod:`cctrain.commandline`):
``InputError`` (and an upload the enclave refuses as invalid, INVALID_ARGUMENT) is 2,
``EnclaveUnavailableError`` 3, everything else 1.

Messages say what was wrong; they never contain plaintext or key material.
"""

from __future__ import annotations

from collections.abc import Sequence


class CctrainError(Exception):
    """Base of every error cctrain raises on purpose."""


class InputError(CctrainError):
    """What the caller gave cannot be used as given: a bad argument, a missing or malformed
    file, an installation or configuration that cannot work. Nothing was attempted."""


class PolicyError(InputError):
    """A policy document is invalid, or its signatures are incomplete."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        if self.problems:
            message = message + ":\n  - " + "\n  - ".join(self.problems)
        super().__init__(message)


class PolicyFileError(PolicyError):
    """A policy file cannot be read, or is not TOML/JSON (or not a signed-policy envelope)
    at all: there is no policy to check."""


class KeyFileError(InputError):
    """A key file is missing, malformed, readable by others, or not a key of this policy."""


class SignatureError(CctrainError):
    """A signature does not verify."""


class AttestationError(CctrainError):
    """Evidence cannot be trusted."""


class EvidenceParseError(AttestationError):
    """The bytes are not evidence of the claimed format (length, version, structure)."""


class EvidenceVerificationError(AttestationError):
    """Signatures, certificate chain or collateral do not verify."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: tuple[str, ...] = tuple(errors)
        super().__init__("evidence does not verify: " + "; ".join(self.errors))


class EvidenceValidationError(AttestationError):
    """Verified claims do not match the policy's reference values.

    ``mismatches`` holds every mismatch, each naming the field, what was found
    and what was wanted.
    """

    def __init__(self, mismatches: Sequence[str]) -> None:
        self.mismatches: tuple[str, ...] = tuple(mismatches)
        super().__init__("evidence does not satisfy the policy: " + "; ".join(self.mismatches))


class NoEvidenceProviderError(AttestationError, InputError):
    """No TEE interface was found to produce evidence on this host (a setup problem)."""


class NoSealingKeyError(AttestationError):
    """The platform cannot derive a sealing key bound to the enclave's measurement (TDX has
    none): state sealed under a ``platform`` key cannot be kept; a ``consortium`` key can."""


class PolicyMismatchError(AttestationError):
    """The enclave serves another policy than the caller's: both digests (hex) are kept."""

    def __init__(self, *, client: str, enclave: str) -> None:
        self.client = client
        self.enclave = enclave
        super().__init__(
            f"policy mismatch: the enclave serves policy {enclave}, this client's policy is "
            f"{client} (both sides must use the same signed policy)"
        )


class ShardError(InputError):
    """A shard is unreadable, in an unsafe format, or violates the policy schema."""


class ProtocolError(CctrainError):
    """The peer broke the protocol or refused the request."""

    def __init__(self, message: str, code: str | None = None) -> None:
        self.code = code
        super().__init__(message)


class AuthenticationError(ProtocolError):
    """The request was not signed by a party of the policy, or is stale or replayed."""


class PermissionDeniedError(ProtocolError):
    """The authenticated party may not perform this operation."""


class UploadRejectedError(ProtocolError):
    """The enclave rejected an upload; it kept nothing of it."""


class EnclaveLockedError(ProtocolError):
    """The enclave was locked when this session attested it: its attested HPKE key is the
    key of that start's unlock, not the run's, so nothing but Unlock, status and the journal
    may use the session. Reconnect once the enclave is unlocked."""


class EnclaveUnavailableError(ProtocolError):
    """The enclave cannot be reached, or the connection broke: nothing is known to have
    happened, and the same call can be made again (an upload resumes)."""


class EnclaveAddressError(ProtocolError, InputError):
    """An enclave address that is not ``host:port``, or whose host does not resolve."""


class ReceiptError(CctrainError):
    """A receipt does not verify against the enclave key, policy or shard."""


class ReleaseError(CctrainError):
    """A release or its manifest does not verify."""


class ReleaseFileError(ReleaseError, InputError):
    """The file is not a release bundle at all (unreadable, not JSON, fields missing)."""


class JournalError(CctrainError):
    """The enclave's journal does not verify, or an entry breaks the run's rules; the message
    names the entry."""


def describe_parse_error(exc: BaseException) -> str:
    """A parser's error in words: a ``KeyError``'s own text is only the missing key."""
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}" if exc.args else "a field is missing"
    return str(exc) or type(exc).__name__
