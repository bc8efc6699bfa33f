"""Does a release manifest's DP certificate say what the signed policy asked for?

Checked offline by every verifier (``cctrain release verify``, the SDK, journal replay and
``cctrain audit``), with no torch: the certificate must name the policy's δ, clipping norm,
target ε, accountant and noise source; its sample rate and step counts must follow from the
policy's batch size and epochs and the row counts in the manifest's signed receipts; the
batches must have been drawn by the secret sampler (unless the policy chose the insecure
simulated-only noise); and the manifest must list exactly the outputs the policy lets out
beyond the guarantee. :func:`recompute_epsilon` re-derives ε with Google's ``dp-accounting``
when it is installed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from cctrain.policy import Policy, non_private_outputs, split_rows
from cctrain.untrusted import loads_json

__all__ = [
    "NOISE_NAMES",
    "SAMPLING_NAMES",
    "certificate_problems",
    "recompute_epsilon",
    "release_problems",
    "weights_problems",
]

#: ``privacy.noise_source`` → the noise and sampling names the trainer writes.
NOISE_NAMES = {"csprng": "csprng-aes256ctr-gaussian", "insecure-fast": "insecure-torch-default"}
SAMPLING_NAMES = {"csprng": "csprng-aes256ctr-poisson", "insecure-fast": "insecure-seeded-poisson"}
GRAD_SAMPLE_MODES = frozenset({"fast", "ghost", "hooks"})


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
    covers = cert.get("covers")
    if not isinstance(covers, list) or not covers or not all(isinstance(c, str) for c in covers):
        problems.append("certificate does not name the parameters it covers")
    frozen = cert.get("unchanged_from_initialisation")
    if not isinstance(frozen, list) or not all(isinstance(c, str) for c in frozen):
        problems.append("certificate does not list the tensors released at their initial value")
    elif isinstance(covers, list) and set(covers) & set(frozen):
        problems.append("certificate lists a tensor as both trained and unchanged")
    return problems


def weights_problems(cert: Mapping[str, Any] | None, weights: bytes) -> list[str]:
    """The released safetensors must hold exactly the tensors the certificate accounts for:
    those it covers and those released at their initial value (read from the safetensors
    header, no torch needed)."""
    if cert is None:
        return []
    try:
        size = int.from_bytes(weights[:8], "little")
        header = loads_json(weights[8 : 8 + size])
        names = {k for k in header if k != "__metadata__"}
    except (ValueError, TypeError):
        return ["the released weights are not a safetensors file"]
    accounted: set[str] = set()
    for key in ("covers", "unchanged_from_initialisation"):
        listed = cert.get(key)
        if isinstance(listed, list):
            accounted |= {name for name in listed if isinstance(name, str)}
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
