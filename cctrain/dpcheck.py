"""Does a release manifest's DP certificate say what the signed policy asked for?

Checked offline by every verifier (``cctrain release verify``, the SDK, journal replay and
``cctrain audit``), with no torch: the certificate must name the policy's δ, clipping norm,
target ε, accountant and noise source; its sample rate and step counts must follow from the
policy's batch size and epochs and the row counts in the manifest's signed receipts; the
batches must have been drawn by the secret sampler (unless the policy chose the insecure
simulated-only noise); and the manifest must list exactly the outputs the policy lets out
beyond the guarantee. :func:`recompute_epsilon` re-derives ε with Google's ``dp-accounting``
when it is installed.

Which tensors the guarantee covers is said in one of two forms (``tensor_names``):

* ``"listed"`` (built-in and host-side custom models, whose names are public): the
  certificate lists ``covers`` and ``unchanged_from_initialisation``;
* ``"sealed"`` (a model owner's package, whose tensor names are its owner's): the plaintext
  certificate, which the host and every party read, carries only ``tensor_names_sha256``, a
  salted commitment to both lists; the lists and the salt travel in the released
  safetensors' ``__metadata__`` (``dp_tensor_names``), which only recipients can unseal.
  :func:`weights_problems` opens them, recomputes the commitment and checks the tensors.
  The salt is what hides the names: without it, names a model owner shares with public
  architectures (``encoder.layer.0.attention.self.query.weight``) could be guessed and
  checked against the digest.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from cctrain.policy import Policy, non_private_outputs, split_rows
from cctrain.untrusted import loads_json

__all__ = [
    "LISTED",
    "NOISE_NAMES",
    "SAMPLING_NAMES",
    "SEALED",
    "TENSOR_NAMES_METADATA",
    "CertifiedTensors",
    "certificate_problems",
    "certified_tensors",
    "recompute_epsilon",
    "release_problems",
    "seal_tensor_names",
    "tensor_names_commitment",
    "tensor_names_form",
    "weights_problems",
]

#: ``privacy.noise_source`` → the noise and sampling names the trainer writes.
NOISE_NAMES = {"csprng": "csprng-aes256ctr-gaussian", "insecure-fast": "insecure-torch-default"}
SAMPLING_NAMES = {"csprng": "csprng-aes256ctr-poisson", "insecure-fast": "insecure-seeded-poisson"}
GRAD_SAMPLE_MODES = frozenset({"fast", "ghost", "hooks"})

#: ``tensor_names`` of a certificate: the names in it, or sealed in the released weights.
LISTED, SEALED = "listed", "sealed"
#: The released safetensors' ``__metadata__`` key that holds a sealed certificate's names.
TENSOR_NAMES_METADATA = "dp_tensor_names"
TENSOR_NAMES_TAG = b"cctrain/dp-tensor-names/v1\x00"
SALT_BYTES = 32
_NAME_LISTS = ("covers", "unchanged_from_initialisation")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def tensor_names_form(policy: Policy) -> str:
    """How a DP certificate of ``policy`` names its tensors: sealed for a model owner's
    package (its names are the owner's), listed for the public architectures."""
    return SEALED if policy.training["model"]["name"] == "package" else LISTED


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def tensor_names_commitment(covers: Sequence[str], unchanged: Sequence[str], *, salt: bytes) -> str:
    """SHA-256 (hex) of the tag and the canonical JSON of both sorted lists and the salt."""
    doc = {
        "covers": sorted(covers),
        "unchanged_from_initialisation": sorted(unchanged),
        "salt": salt.hex(),
    }
    return hashlib.sha256(TENSOR_NAMES_TAG + _canonical(doc)).hexdigest()


def seal_tensor_names(cert: Mapping[str, Any], *, salt: bytes) -> tuple[dict[str, Any], str]:
    """(the certificate as it goes into the plaintext manifest, the ``dp_tensor_names``
    metadata of the released weights) for a certificate that lists its names. ``salt``:
    fresh random bytes of the enclave (``SALT_BYTES``), never stored elsewhere."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"salt: got {len(salt)} bytes, want {SALT_BYTES}")
    covers, unchanged = sorted(cert["covers"]), sorted(cert["unchanged_from_initialisation"])
    public = {k: v for k, v in cert.items() if k not in _NAME_LISTS}
    public |= {
        "tensor_names": SEALED,
        "tensor_names_sha256": tensor_names_commitment(covers, unchanged, salt=salt),
    }
    meta = {"covers": covers, "unchanged_from_initialisation": unchanged, "salt": salt.hex()}
    return public, json.dumps(meta, sort_keys=True)


def _num(value: Any) -> TypeGuard[float]:
    """A finite JSON number (an integer too large for a float is not one)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def certificate_problems(cert: Any, policy: Policy, *, rows: int) -> list[str]:
    """Every way ``cert`` disagrees with ``policy`` for a run on ``rows`` rows."""
    if not isinstance(cert, Mapping):
        return ["the DP certificate is missing or not an object"]
    privacy, training = policy.privacy, policy.training
    problems: list[str] = []

    def same(key: str, want: Any) -> None:
        got = cert.get(key)
        ok = got == want if not _num(want) else _num(got) and float(got) == float(want)
        if not ok:
            problems.append(f"certificate {key} is {got!r}, the policy says {want!r}")

    same("accountant", privacy["accountant"])
    same("delta", privacy["delta"])
    same("max_grad_norm", privacy["max_grad_norm"])
    same("target_epsilon", privacy["target_epsilon"])
    same("noise_source", NOISE_NAMES.get(privacy["noise_source"]))
    same("sampling", SAMPLING_NAMES.get(privacy["noise_source"]))
    mode = cert.get("grad_sample_mode")
    wanted = privacy["grad_sample_mode"]
    if (
        not isinstance(mode, str)
        or mode not in GRAD_SAMPLE_MODES
        or (wanted != "auto" and mode != wanted)
    ):
        problems.append(f"certificate grad_sample_mode is {mode!r}, the policy says {wanted!r}")

    batch, epochs = int(training["batch_size"]), int(training["epochs"])
    if rows < 1:
        return [*problems, "the manifest's receipts hold no rows"]
    steps_per_epoch = math.ceil(rows / batch)
    same("sample_rate", 1.0 / steps_per_epoch)
    same("expected_batch_size", rows / steps_per_epoch)
    same("steps_planned", steps_per_epoch * epochs)
    steps, early = cert.get("steps"), cert.get("stopped_early")
    if not isinstance(steps, int) or isinstance(steps, bool) or not isinstance(early, bool):
        problems.append("certificate steps/stopped_early are missing or not typed")
    elif early and not 0 <= steps < steps_per_epoch * epochs:
        problems.append(f"certificate stopped early after {steps} of {steps_per_epoch * epochs}")
    elif not early and steps != steps_per_epoch * epochs:
        problems.append(
            f"certificate took {steps} steps, not the {steps_per_epoch * epochs} planned, "
            "and does not say it stopped early"
        )
    sigma, eps = cert.get("noise_multiplier"), cert.get("epsilon")
    if not _num(sigma) or sigma <= 0:
        problems.append(f"certificate noise_multiplier {sigma!r} is not a positive number")
    if not _num(eps) or not 0 <= eps <= float(privacy["target_epsilon"]):
        problems.append(
            f"certificate ε {eps!r} is not within the target {privacy['target_epsilon']}"
        )
    problems += _names_problems(cert, want=tensor_names_form(policy))
    return problems


def _names_problems(cert: Mapping[str, Any], *, want: str) -> list[str]:
    form = cert.get("tensor_names")
    if form != want:
        why = "a model package's names are sealed" if want == SEALED else "its names are public"
        return [f"certificate tensor_names: got {form!r}, want {want!r} ({why})"]
    if form == SEALED:
        problems = []
        if any(key in cert for key in _NAME_LISTS):
            problems.append("certificate of a model package lists tensor names in plain text")
        digest = cert.get("tensor_names_sha256")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            problems.append(
                f"certificate tensor_names_sha256: got {str(digest)[:80]!r}, want 64 lowercase hex"
            )
        return problems
    return _lists_problems(cert.get("covers"), cert.get("unchanged_from_initialisation"))


def _lists_problems(covers: Any, frozen: Any) -> list[str]:
    problems = []
    if not isinstance(covers, list) or not covers or not all(isinstance(c, str) for c in covers):
        problems.append("certificate does not name the parameters it covers")
    if not isinstance(frozen, list) or not all(isinstance(c, str) for c in frozen):
        problems.append("certificate does not list the tensors released at their initial value")
    elif isinstance(covers, list) and set(covers) & set(frozen):
        problems.append("certificate lists a tensor as both trained and unchanged")
    return problems


@dataclass(frozen=True)
class CertifiedTensors:
    """What a DP certificate says of the released weights' tensors, by name."""

    covers: tuple[str, ...]
    unchanged_from_initialisation: tuple[str, ...]


def _header(weights: bytes) -> dict[str, Any]:
    size = int.from_bytes(weights[:8], "little")
    if len(weights) < 8 or 8 + size > len(weights):
        raise ValueError("header runs past the end")
    header = loads_json(weights[8 : 8 + size])
    if not isinstance(header, dict):
        raise ValueError("header is not an object")
    return header


def _sealed_names(cert: Mapping[str, Any], header: Mapping[str, Any]) -> CertifiedTensors:
    """The names sealed in the weights' metadata, once they match the certificate's
    commitment; ValueError saying what is wrong otherwise."""
    meta = header.get("__metadata__")
    raw = meta.get(TENSOR_NAMES_METADATA) if isinstance(meta, dict) else None
    if not isinstance(raw, str):
        raise ValueError(
            f"the released weights carry no {TENSOR_NAMES_METADATA} metadata, which the DP "
            "certificate (tensor_names 'sealed') commits to"
        )
    doc = loads_json(raw)
    if not isinstance(doc, dict) or set(doc) != {*_NAME_LISTS, "salt"}:
        raise ValueError(
            f"{TENSOR_NAMES_METADATA}: got keys {sorted(doc) if isinstance(doc, dict) else doc!r}"
            f", want {sorted({*_NAME_LISTS, 'salt'})}"
        )
    salt = doc["salt"]
    if not isinstance(salt, str) or not re.fullmatch(f"[0-9a-f]{{{2 * SALT_BYTES}}}", salt):
        raise ValueError(f"{TENSOR_NAMES_METADATA}.salt: want {2 * SALT_BYTES} lowercase hex")
    lists = []
    for key in _NAME_LISTS:
        names = doc[key]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{TENSOR_NAMES_METADATA}.{key}: want a list of names")
        if names != sorted(set(names)):
            raise ValueError(f"{TENSOR_NAMES_METADATA}.{key}: want sorted names, each once")
        lists.append(names)
    covers, unchanged = lists
    want = cert.get("tensor_names_sha256")
    got = tensor_names_commitment(covers, unchanged, salt=bytes.fromhex(salt))
    if got != want:  # a public commitment: nothing to compare in constant time
        raise ValueError(
            "the tensor names sealed in the released weights are not those the DP certificate "
            "commits to (tensor_names_sha256)"
        )
    problems = _lists_problems(covers, unchanged)
    if problems:
        raise ValueError("; ".join(problems))
    return CertifiedTensors(tuple(covers), tuple(unchanged))


def _certified(cert: Mapping[str, Any], header: Mapping[str, Any]) -> CertifiedTensors:
    if cert.get("tensor_names") == SEALED:
        return _sealed_names(cert, header)
    covers, unchanged = cert.get("covers"), cert.get("unchanged_from_initialisation")
    problems = _lists_problems(covers, unchanged)
    if problems:
        raise ValueError("; ".join(problems))
    assert isinstance(covers, list) and isinstance(unchanged, list)  # _lists_problems
    return CertifiedTensors(tuple(covers), tuple(unchanged))


def certified_tensors(cert: Mapping[str, Any], weights: bytes | None) -> CertifiedTensors:
    """The tensors ``cert`` accounts for, by name: from the certificate when it lists them,
    from the weights' sealed metadata (checked against the commitment) when it does not.
    ValueError when they cannot be read or do not match (:func:`weights_problems` checks
    them against the weights' tensors too)."""
    if cert.get("tensor_names") != SEALED:
        return _certified(cert, {})  # the weights are not read
    if weights is None:
        raise ValueError("the tensor names of a model package are sealed in its weights")
    try:
        header = _header(weights)
    except (ValueError, TypeError):
        raise ValueError("the released weights are not a safetensors file") from None
    return _certified(cert, header)


def weights_problems(cert: Mapping[str, Any] | None, weights: bytes) -> list[str]:
    """The released safetensors must hold exactly the tensors the certificate accounts for:
    those it covers and those released at their initial value (read from the safetensors
    header, no torch needed). A sealed certificate's names are read from the weights'
    metadata and must match its commitment first."""
    if cert is None:
        return []
    try:
        header = _header(weights)
        names = {k for k in header if k != "__metadata__"}
    except (ValueError, TypeError):
        return ["the released weights are not a safetensors file"]
    try:
        certified = _certified(cert, header)
    except ValueError as exc:
        return [str(exc)]
    accounted = {*certified.covers, *certified.unchanged_from_initialisation}
    if names != accounted:
        return [
            "the released tensors are not exactly those the DP certificate accounts for: "
            f"unaccounted {sorted(names - accounted)}, missing {sorted(accounted - names)}"
        ]
    return []


def release_problems(
    doc: Mapping[str, Any], policy: Policy, *, party_rows: Sequence[tuple[str, int]]
) -> list[str]:
    """The manifest's privacy claims against the policy: certificate, metrics, non-private list.

    ``party_rows``: (provider, rows) of each shard trained on; the certificate's sample rate
    follows from the rows left for training once ``[validation]`` held its rows out."""
    rows, _ = split_rows(policy, party_rows)
    problems: list[str] = []
    metrics = doc.get("metrics")
    if not isinstance(metrics, Mapping) or set(metrics) != set(policy.release["metrics"]):
        problems.append(
            f"manifest metrics {sorted(metrics) if isinstance(metrics, Mapping) else metrics!r} "
            f"are not the policy's release.metrics {sorted(policy.release['metrics'])}"
        )
    listed = doc.get("non_private_outputs")
    want = non_private_outputs(policy)
    if listed != want:
        problems.append(
            f"manifest lists non-private outputs {listed!r}, the policy allows exactly {want}"
        )
    cert = doc.get("dp_certificate")
    if policy.privacy["enabled"]:
        problems += certificate_problems(cert, policy, rows=rows)
    elif cert is not None:
        problems.append("manifest of a run without DP carries a DP certificate")
    return problems


def recompute_epsilon(cert: Mapping[str, Any]) -> float | None:
    """ε of ``cert``'s (σ, q, steps, δ) by Google's dp-accounting (RDP for ``rdp``, PLD for
    ``prv``); None when dp-accounting is not installed."""
    try:
        from dp_accounting import dp_event  # type: ignore[import-untyped]
        from dp_accounting.pld import pld_privacy_accountant  # type: ignore[import-untyped]
        from dp_accounting.rdp import rdp_privacy_accountant  # type: ignore[import-untyped]
    except ImportError:
        return None
    accountant: Any = (
        rdp_privacy_accountant.RdpAccountant()
        if cert["accountant"] == "rdp"
        else pld_privacy_accountant.PLDAccountant()
    )
    event = dp_event.PoissonSampledDpEvent(
        float(cert["sample_rate"]), dp_event.GaussianDpEvent(float(cert["noise_multiplier"]))
    )
    accountant.compose(event, int(cert["steps"]))
    return float(accountant.get_epsilon(float(cert["delta"])))
