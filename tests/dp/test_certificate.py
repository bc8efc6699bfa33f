"""The certificate a recipient reads must say what the signed policy asked for.

A real DP run's manifest, edited one claim at a time and re-signed with the enclave's own key
(the signature holds, so only the privacy check can catch it): every verifier refuses it,
naming the claim. The unedited manifest verifies, lists its non-private outputs, and its ε
agrees with Google's dp-accounting.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cctrain.client import Recipient
from cctrain.dpcheck import recompute_epsilon
from cctrain.errors import ReleaseError
from cctrain.protocol import MANIFEST_SIG_TAG
from cctrain.release import canonical_json, verify_manifest
from tests.consortium import RECIPIENT, Consortium, make_consortium, running_enclave
from tests.state.conftest import session, upload_all, wait_phase

_NAME_KEYS = ("covers", "unchanged_from_initialisation")
PRIVACY = {"enabled": True, "target_epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0}
RELEASE = {
    "recipients": [RECIPIENT],
    "metrics": ["steps", "train_accuracy"],
    "non_private": ["train_accuracy", "progress_loss"],
}


@dataclass
class Released:
    consortium: Consortium
    manifest: dict[str, Any]
    sign: Callable[[bytes], bytes]
    bundle: Path


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Released]:
    tmp = tmp_path_factory.mktemp("dp-cert")
    c = make_consortium(tmp / "c", privacy=PRIVACY, release=RELEASE)
    with running_enclave(c, tmp / "state") as (address, app):
        upload_all(address, c, tmp / "up")
        assert wait_phase(address, c, "released", "failed") == "released"
        with session(Recipient, address, c, RECIPIENT) as r:
            model = r.fetch_model(save_to=tmp / "release.json")
        key = app.state.keys.signing
        yield Released(
            c, model.manifest, lambda m: key.sign(MANIFEST_SIG_TAG + m), tmp / "release.json"
        )


def _verify(r: Released, doc: dict[str, Any]) -> Any:
    raw = canonical_json(doc)
    return verify_manifest(
        raw, r.sign(raw), policy=r.consortium.signed.policy, allow_simulated=True
    )


def test_the_real_manifest_verifies_and_lists_what_dp_does_not_cover(released: Released) -> None:
    rel = _verify(released, released.manifest)
    assert rel.manifest["non_private_outputs"] == ["progress_loss", "train_accuracy"]
    cert = rel.dp_certificate
    assert cert["covers"] == ["1.bias", "1.weight"]  # logreg: Flatten, Linear
    assert cert["sampling"] == "csprng-aes256ctr-poisson"
    again = recompute_epsilon(cert)
    assert again is not None and abs(again - cert["epsilon"]) <= 0.01 * cert["epsilon"]


def _cert(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["dp_certificate"].__setitem__(key, value)


EDITS = {
    "delta": (_cert("delta", 1e-3), "delta"),
    "clip": (_cert("max_grad_norm", 10.0), "max_grad_norm"),
    "target": (_cert("target_epsilon", 30.0), "target_epsilon"),
    "accountant": (_cert("accountant", "prv"), "accountant"),
    "noise": (_cert("noise_source", "insecure-torch-default"), "noise_source"),
    "sampling": (_cert("sampling", "insecure-seeded-poisson"), "sampling"),
    "sample-rate": (_cert("sample_rate", 0.001), "sample_rate"),
    "batch": (_cert("expected_batch_size", 7), "expected_batch_size"),
    "planned": (_cert("steps_planned", 3), "steps_planned"),
    "steps": (_cert("steps", 2), "planned"),
    "epsilon": (_cert("epsilon", 3.5), "ε"),
    "mode": (_cert("grad_sample_mode", "magic"), "grad_sample_mode"),
    "covers": (_cert("covers", []), "covers"),
    # A built-in model's names are public: listed, never sealed (nor left unsaid).
    "names-sealed": (_cert("tensor_names", "sealed"), "tensor_names: got 'sealed', want 'listed'"),
    "names-form": (_cert("tensor_names", None), "tensor_names: got None"),
    "no-cert": (lambda d: d.__setitem__("dp_certificate", None), "certificate is missing"),
    "hidden-output": (
        lambda d: d.__setitem__("non_private_outputs", ["train_accuracy"]),
        "non-private outputs",
    ),
    "extra-metric": (
        lambda d: d["metrics"].__setitem__("train_loss", 0.1),
        "release.metrics",
    ),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_certificate_that_disagrees_with_the_policy_is_refused(
    released: Released, edit: str
) -> None:
    change, named = EDITS[edit]
    doc = copy.deepcopy(released.manifest)
    change(doc)
    with pytest.raises(ReleaseError, match="privacy claims disagree") as info:
        _verify(released, doc)
    assert named in str(info.value)


def test_release_verify_cli_prints_the_certificate_and_what_it_does_not_cover(
    released: Released,
) -> None:
    from click.testing import CliRunner

    from cctrain.cli.main import main

    result = CliRunner().invoke(
        main,
        [
            "release",
            "verify",
            str(released.bundle),
            "--policy",
            str(released.consortium.policy_path),
            "--allow-simulated",
        ],
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "agrees with the policy" in out
    assert "ε recomputed with Google's dp-accounting" in out
    assert "OUTSIDE the DP guarantee (exact, opted in by release.non_private): " in out
    assert "progress_loss, train_accuracy" in out


def test_released_tensors_must_be_exactly_those_the_certificate_accounts_for(
    released: Released,
) -> None:
    from cctrain.dpcheck import weights_problems

    cert = released.manifest["dp_certificate"]

    def safetensors(names: list[str]) -> bytes:
        header = json.dumps(
            {n: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]} for n in names}
        )
        return len(header).to_bytes(8, "little") + header.encode() + bytes(4)

    assert weights_problems(cert, safetensors(cert["covers"])) == []
    extra = weights_problems(cert, safetensors([*cert["covers"], "leak"]))
    assert extra and "unaccounted ['leak']" in extra[0]
    assert weights_problems(cert, b"not safetensors") != []


def test_sealing_the_names_keeps_every_check_and_hides_them_behind_a_salt(
    released: Released,
) -> None:
    """The sealed form of the real certificate: no names left in it, a commitment that
    depends on the salt (so guessing common names and hashing them tells nothing), and the
    weights carrying the names pass the same per-tensor check."""
    import os

    from cctrain.dpcheck import (
        SALT_BYTES,
        TENSOR_NAMES_METADATA,
        certified_tensors,
        seal_tensor_names,
        weights_problems,
    )

    listed = released.manifest["dp_certificate"]
    salt = bytes(range(SALT_BYTES))
    cert, meta = seal_tensor_names(listed, salt=salt)
    assert "covers" not in cert and "unchanged_from_initialisation" not in cert
    assert cert["tensor_names"] == "sealed" and "1.weight" not in json.dumps(cert)
    other, _ = seal_tensor_names(listed, salt=os.urandom(SALT_BYTES))
    assert other["tensor_names_sha256"] != cert["tensor_names_sha256"]
    assert {k: v for k, v in cert.items() if not k.startswith("tensor_names")} == {
        k: v for k, v in listed.items() if k not in ("tensor_names", *_NAME_KEYS)
    }

    def weights(names: list[str], metadata: dict[str, str]) -> bytes:
        header = json.dumps(
            {"__metadata__": metadata}
            | {
                n: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
                for i, n in enumerate(names)
            }
        )
        return len(header).to_bytes(8, "little") + header.encode() + bytes(4 * len(names))

    names = [*listed["covers"], *listed["unchanged_from_initialisation"]]
    good = weights(names, {TENSOR_NAMES_METADATA: meta})
    assert weights_problems(cert, good) == []
    assert certified_tensors(cert, good).covers == tuple(listed["covers"])
    with pytest.raises(ValueError, match="sealed in its weights"):
        certified_tensors(cert, None)
    assert "commits to" in weights_problems(other, good)[0]
    assert "carry no dp_tensor_names" in weights_problems(cert, weights(names, {}))[0]
    assert weights_problems(cert, good[:40]) == ["the released weights are not a safetensors file"]
