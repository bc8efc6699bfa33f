"""``cctrain``: keys, policy, attestation, upload, training and release from the shell.

Exit status (the contract, in full, is in :mod:`cctrain.commandline`): 0 success; 1 a check
or an operation failed; 2 bad input (usage, a missing or malformed file, a policy or key that
cannot be used); 3 the enclave cannot be reached (run the command again). Every error is one
``error: ...`` line on stderr; with ``--format json`` (every command takes it) the result and
any error are one JSON document on stdout (``{"error": {"code", "message", "exit"}}``).
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cctrain.commandline import (
    BAD_INPUT,
    FAILED,
    CommandGroup,
    error_document,
    fail,
    fail_with,
    format_option,
)
from cctrain.errors import PolicyError, PolicyFileError


class _OnceSimulatedNotice(logging.Filter):
    """Drops the attestation pipeline's own simulated-evidence warning: the banner said it."""

    def filter(self, record: logging.LogRecord) -> bool:
        from cctrain.attestation.pipeline import SIMULATED_WARNING

        return record.getMessage() != SIMULATED_WARNING


_banner_shown = False


def _quiet_simulated_repeats() -> None:
    """Silence the SDK's own repeats of the banner in this process (a Python warning and a
    log record at every verification): call only where the banner is, or will be, shown."""
    warnings.filterwarnings("ignore", message="SIMULATED TEE: ")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _OnceSimulatedNotice) for f in handler.filters):
            handler.addFilter(_OnceSimulatedNotice())


def _simulated_banner() -> None:
    """One line on stderr, once, for --allow-simulated, in either --format; the SDK's
    repeats of it are silenced, not duplicated."""
    global _banner_shown
    _quiet_simulated_repeats()
    if _banner_shown:
        return
    _banner_shown = True
    click.secho(
        "WARNING: accepting SIMULATED attestation. Its root key is public; this proves nothing. "
        "Local development only.",
        fg="red",
        bold=True,
        err=True,
    )


def _say(fmt: str) -> Callable[[str], None]:
    """``click.echo`` in text mode; nothing in JSON mode (the document says it)."""
    return click.echo if fmt == "text" else (lambda _line: None)


def _result(fmt: str, doc: dict[str, Any]) -> None:
    """The command's JSON document, in JSON mode."""
    if fmt == "json":
        click.echo(json.dumps(doc))


@click.group(cls=CommandGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
@click.version_option(package_name="cctrain")
def main(verbose: bool) -> None:
    """Multi-party confidential training: attest, upload, train, release."""
    global _banner_shown
    _banner_shown = False  # once per invocation (several may run in one process)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    warnings.simplefilter("default")


# --------------------------------------------------------------------------- keys


@main.command()
@click.argument("party_id")
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=Path("."), show_default=True
)
@format_option
def keygen(party_id: str, out_dir: Path, fmt: str) -> None:
    """Create PARTY_ID.key (0600: Ed25519 identity + X25519 HPKE) and PARTY_ID.pub.json."""
    from cctrain.crypto.keys import PartyKeys
    from cctrain.ids import PARTY_ID, is_party_id

    if not is_party_id(party_id):
        fail(f"party id must match {PARTY_ID.pattern}", BAD_INPUT, "bad-party-id")
    try:
        priv, pub = PartyKeys.generate(party_id).save(out_dir)
    except OSError as exc:
        fail(f"cannot write the keys to {out_dir}: {exc.strerror}", BAD_INPUT, "os-error")
    say = _say(fmt)
    say(f"private key: {priv} (mode 0600; never share it)")
    say(f"public keys: {pub} (put them in the policy's [[parties]] entry)")
    _result(fmt, {"party_id": party_id, "private_key": str(priv), "public_keys": str(pub)})


# --------------------------------------------------------------------------- policy


@main.group()
def policy() -> None:
    """Check, sign and verify the consortium policy."""


def _add_policy_authoring() -> None:
    """`cctrain policy init | add-party | merge` (cctrain.cli.policy_tools)."""
    from cctrain.cli.policy_tools import register

    register(policy)


_add_policy_authoring()


@policy.command("check")
@click.argument("policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--model-source",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The custom model's source file (checked against the policy's pin, then run).",
)
@click.option(
    "--model-package",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The model package (checked against the policy's pin, then run): the model "
    "owner's own check before it uploads.",
)
@format_option
def policy_check(
    policy_file: Path, model_source: Path | None, model_package: Path | None, fmt: str
) -> None:
    """Validate a TOML/JSON policy strictly, print its digest, and check its training plan.

    The plan check builds the model, runs Opacus's validator and the gradient-mode checks,
    and trains one epoch on synthetic rows, as `cctrain-enclave serve` does before it accepts
    any data. It needs the trainer (pip install 'cctrain[enclave]'); without it, it is skipped
    and says so.
    """
    from cctrain.policy import load_policy_file

    try:
        p = load_policy_file(policy_file)
    except PolicyFileError:
        raise  # nothing to check: bad input
    except PolicyError as exc:
        fail_with(exc, FAILED)  # the check this command exists for
    say = _say(fmt)
    say(f"policy {p.name!r} is valid")
    say(f"digest: {p.digest.hex()}")
    doc: dict[str, Any] = {"name": p.name, "digest": p.digest.hex(), "valid": True}

    def not_checked(why: str) -> None:
        say(f"training plan: NOT CHECKED ({why})")
        _result(fmt, doc | {"training_plan": "not-checked", "training_plan_note": why})

    custom = p.training["model"]["name"] == "custom"
    source = model_source.read_bytes() if model_source is not None else None
    if source is not None and not custom:
        raise PolicyError("--model-source given, but the policy's model is not 'custom'")
    if custom and source is None:
        not_checked("custom model: pass --model-source FILE")
        return
    package = model_package.read_bytes() if model_package is not None else None
    if package is not None and p.model_package is None:
        raise PolicyError("--model-package given, but the policy's model is not 'package'")
    if p.model_package is not None and package is None:
        not_checked("the model owner's package: its owner checks it with --model-package FILE")
        return
    try:
        from cctrain_enclave.trainer.precheck import check_training_plan
    except ImportError:
        not_checked("the trainer is not installed here: pip install 'cctrain[enclave]'")
        return
    problems = check_training_plan(
        p,
        custom_model_source=source,
        simulated_platform=list(p.attestation["platforms"]) == ["simulated"],
        model_package=package,
    )
    if problems:
        plan = PolicyError("the policy's training plan cannot run", problems)
        fail(str(plan), FAILED, "training-plan", plan.problems)
    say("training plan: ok (model built, one epoch trained on synthetic rows)")
    _result(fmt, doc | {"training_plan": "ok", "device": p.training.get("device", "cpu")})
    if p.training.get("device", "cpu") != "cpu":
        say(
            f"training.device = {p.training['device']!r}: checked here on the CPU; the enclave "
            "checks its GPU when it starts (and refuses to start without one for 'cuda')"
        )


@policy.command("sign")
@click.argument("policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "key_file", required=True, type=click.Path(path_type=Path))
@click.option(
    "--envelope",
    "envelope_file",
    type=click.Path(path_type=Path),
    help="Signed envelope to add to (created if missing). Default: POLICY.signed.json",
)
@format_option
def policy_sign(policy_file: Path, key_file: Path, envelope_file: Path | None, fmt: str) -> None:
    """Add your signature over the exact POLICY_FILE bytes to the DSSE envelope."""
    from cctrain.crypto.keys import PartyKeys
    from cctrain.policy import SignedPolicy, load_policy_file

    keys = PartyKeys.load(key_file)
    p = load_policy_file(policy_file)
    party = p.party(keys.party_id)
    if party is None:
        fail(
            f"the policy names no party {keys.party_id!r}; refusing to sign", BAD_INPUT, "no-party"
        )
    if party.signing_key != keys.signing_public:
        fail(
            f"the policy lists another signing key for {keys.party_id!r}; refusing to sign",
            BAD_INPUT,
            "wrong-key",
        )
    envelope_file = envelope_file or policy_file.with_suffix(".signed.json")
    if envelope_file.exists():
        sp = SignedPolicy.load(envelope_file)
        if sp.digest != p.digest:
            fail(
                f"{envelope_file} holds another policy (digest {sp.digest.hex()}); "
                "pass --envelope to write a new one",
                BAD_INPUT,
                "another-policy",
            )
    else:
        sp = SignedPolicy.new(p)
    sp = SignedPolicy(sp.envelope.sign(keys.party_id, keys.signing_key), sp.policy)
    envelope_file.write_text(sp.envelope.to_json())
    st = sp.status()
    say = _say(fmt)
    say(f"signed as {keys.party_id}; digest {p.digest.hex()}")
    say(
        f"signatures: {len(st.signed)}/{len(p.parties)}; missing: {', '.join(st.missing) or 'none'}"
    )
    _result(
        fmt,
        {
            "signed_as": keys.party_id,
            "digest": p.digest.hex(),
            "envelope": str(envelope_file),
            "signed": list(st.signed),
            "missing": list(st.missing),
        },
    )


@policy.command("verify")
@click.argument("envelope_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@format_option
def policy_verify(envelope_file: Path, fmt: str) -> None:
    """Show digest, who signed, who is missing; exit 1 unless fully signed and unexpired."""
    from cctrain.policy import SignedPolicy

    try:
        sp = SignedPolicy.load(envelope_file)
    except PolicyFileError:
        raise  # not a signed policy at all: bad input
    except PolicyError as exc:
        fail_with(exc, FAILED)  # a signed policy whose payload is not a valid policy
    st = sp.status()
    problem = None
    try:
        sp.require_complete()
    except PolicyError as exc:
        problem = "; ".join(exc.problems) or str(exc)
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "name": sp.policy.name,
                    "digest": sp.digest.hex(),
                    "signed": list(st.signed),
                    "missing": list(st.missing),
                    "invalid": list(st.invalid),
                    "threshold": sp.policy.signature_threshold,
                    "complete": problem is None,
                    "problem": problem,
                }
                | ({} if problem is None else error_document(problem, FAILED, "incomplete"))
            )
        )
    else:
        click.echo(f"policy:  {sp.policy.name}")
        click.echo(f"digest:  {sp.digest.hex()}")
        click.echo(f"signed:  {', '.join(st.signed) or '-'}")
        click.echo(f"missing: {', '.join(st.missing) or '-'}")
        if st.invalid:
            click.echo(f"INVALID: {', '.join(st.invalid)}")
        click.echo("status:  complete" if problem is None else f"status:  INCOMPLETE ({problem})")
    if problem is not None:
        sys.exit(1)


# --------------------------------------------------------------------------- measure


@main.command()
@format_option
def measure(fmt: str) -> None:
    """Print the simulated-platform measurement of the installed enclave code (pin it in the policy)."""
    from cctrain.measure import code_measurement

    digest = code_measurement().hex()
    _say(fmt)(digest)
    _result(fmt, {"measurement": digest})


# --------------------------------------------------------------------------- attestation


@main.group()
def attest() -> None:
    """Verify attestation evidence offline, or attest a running enclave."""


@attest.command("verify")
@click.argument("evidence_file", type=click.Path(path_type=Path))
@click.option(
    "--platform",
    default="auto",
    show_default=True,
    # Not a click.Choice: an unknown platform must still produce the JSON document (exit 2).
    help="auto, sev-snp, tdx, sgx, nvidia-gpu, aws-nitro, arm-cca, arm-psa or simulated",
)
@click.option("--cert", "cert_files", multiple=True, type=click.Path(path_type=Path))
@click.option(
    "--key",
    "key_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A trust-anchor public key that is not a certificate (an Arm CCA platform's CPAK, a "
    "PSA device's IAK): PEM/DER SubjectPublicKeyInfo or a raw uncompressed EC point.",
)
@click.option(
    "--gpu",
    "gpu_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="An NVIDIA GPU report attested with EVIDENCE (composite CPU+GPU): it must verify and "
    "be bound to EVIDENCE's nonce. Repeat per GPU.",
)
@click.option(
    "--gpu-cert",
    "gpu_cert_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="The GPUs' certificate chains (PEM).",
)
@click.option("--collateral", "collateral_path", type=click.Path(path_type=Path))
@click.option("--at", "at", help="Verification time, ISO-8601 (default: now).")
@click.option("--allow-simulated", is_flag=True, help="Accept the simulated root (insecure).")
@format_option
def attest_verify(
    evidence_file: Path,
    platform: str,
    cert_files: tuple[Path, ...],
    key_files: tuple[Path, ...],
    gpu_files: tuple[Path, ...],
    gpu_cert_files: tuple[Path, ...],
    collateral_path: Path | None,
    at: str | None,
    allow_simulated: bool,
    fmt: str,
) -> None:
    """Verify EVIDENCE (raw or hex). Exit 0 verified, 1 does not verify, 2 unparseable/bad args."""
    from cctrain.attestation.verify_cli import run_attest_verify

    if allow_simulated:
        _quiet_simulated_repeats()  # the banner follows if simulated evidence verifies
    code, doc = run_attest_verify(
        evidence_file,
        platform=platform,
        cert_files=cert_files,
        collateral_path=collateral_path,
        at=at,
        allow_simulated=allow_simulated,
        key_files=key_files,
        gpu_files=gpu_files,
        gpu_cert_files=gpu_cert_files,
    )
    if fmt == "json":
        if code != 0:
            kind = "not-verified" if code == FAILED else "bad-input"
            doc = doc | error_document("; ".join(doc["errors"]) or kind, code, kind)
        click.echo(json.dumps(doc))
    else:
        status = "VERIFIED" if doc["verified"] else "NOT VERIFIED"
        click.echo(f"{status} ({doc['platform']})")
        for k in (
            "signer",
            "measurement",
            "report_data",
            "debug",
            "chip_id",
            "tcb_status",
            "advisories",
            "nonce",
        ):
            click.echo(f"  {k}: {doc.get(k)}")
        for e in doc["errors"]:
            click.echo(f"error: {e}", err=True)
    if doc.get("platform") == "simulated" and doc["verified"]:
        _simulated_banner()
    sys.exit(code)


def _session_options(f: Any) -> Any:
    f = format_option(f)
    f = click.option(
        "--allow-simulated", is_flag=True, help="Accept simulated evidence (insecure)."
    )(f)
    f = click.option("--key", "key_file", required=True, type=click.Path(path_type=Path))(f)
    f = click.option("--policy", "policy_file", required=True, type=click.Path(path_type=Path))(f)
    f = click.option("--enclave", "address", required=True, help="host:port of the enclave")(f)
    return f


def _connect(
    cls: Any, address: str, policy_file: Path | Any, key_file: Path, allow_simulated: bool
) -> Any:
    """An attested session of ``cls`` (EnclaveSession, DataOwner, Recipient)."""
    if allow_simulated:
        _simulated_banner()
    return cls(address, policy=policy_file, key=key_file, allow_simulated=allow_simulated)


@attest.command("enclave")
@_session_options
@click.option(
    "--evidence-out",
    "evidence_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also save the verified evidence in this folder (created): evidence.bin (the report), "
    "cert-N.der (its certificates), collateral.json (if any), for `cctrain attest verify` "
    "later, offline.",
)
def attest_enclave(
    address: str,
    policy_file: Path,
    key_file: Path,
    allow_simulated: bool,
    fmt: str,
    evidence_dir: Path | None,
) -> None:
    """Attest a running enclave against the signed policy and print the verified claims."""
    from cctrain.client import EnclaveSession

    with _connect(EnclaveSession, address, policy_file, key_file, allow_simulated) as s:
        claims, digest = s.enclave.claims.to_json(), s.policy.digest.hex()
        evidence = s.enclave.evidence
    doc: dict[str, Any] = {"claims": claims, "policy_digest": digest}
    if evidence_dir is not None:
        written = _save_evidence(evidence, evidence_dir)
        doc["evidence_files"] = [str(p) for p in written]
        doc["verify_command"] = _verify_command(evidence.platform, written)
    if fmt == "json":
        click.echo(json.dumps(doc))
        return
    click.echo(json.dumps(claims, indent=2))
    click.echo(f"policy digest: {digest}")
    if evidence_dir is not None:
        click.echo(f"evidence saved in {evidence_dir}; verify it offline with:")
        click.echo(f"  {doc['verify_command']}")


def _save_evidence(evidence: Any, folder: Path) -> list[Path]:
    """The evidence's report, certificates and collateral as files in ``folder``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        written = [folder / "evidence.bin"]
        written[0].write_bytes(evidence.report)
        for i, der in enumerate(evidence.certificates):
            (folder / f"cert-{i}.der").write_bytes(der)
            written.append(folder / f"cert-{i}.der")
        if evidence.collateral:
            (folder / "collateral.json").write_text(json.dumps(evidence.collateral, indent=2))
            written.append(folder / "collateral.json")
    except OSError as exc:
        fail(f"--evidence-out: cannot write {folder}: {exc.strerror}", BAD_INPUT, "unwritable")
    return written


def _verify_command(platform: str, written: list[Path]) -> str:
    """The ``cctrain attest verify`` line for the files :func:`_save_evidence` wrote."""
    import shlex

    report, *rest = written
    parts = ["cctrain", "attest", "verify", str(report), "--platform", platform]
    for path in rest:
        parts += ["--collateral" if path.suffix == ".json" else "--cert", str(path)]
    if platform == "simulated":
        parts.append("--allow-simulated")
    return " ".join(shlex.quote(p) for p in parts)


# --------------------------------------------------------------------------- model owners


@main.group()
def model() -> None:
    """A model owner's package: build it, inspect it, upload it to the attested enclave."""


@model.command("package")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out_file", required=True, type=click.Path(path_type=Path))
@format_option
def model_package(directory: Path, out_file: Path, fmt: str) -> None:
    """Build a package from DIRECTORY (flat *.py modules, optional weights.safetensors) and
    print the SHA-256 the policy pins (training.model.package_sha256)."""
    from cctrain.package import package_from_dir, package_sha256, read_package

    data = package_from_dir(directory)
    out_file.write_bytes(data)
    info = read_package(data).summary()
    doc = {"package": str(out_file), "sha256": package_sha256(data), "bytes": len(data), **info}
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"wrote {out_file} ({len(data)} bytes)")
    click.echo(f"modules: {', '.join(info['files'])}; initial weights: {info['tensors']} tensors")
    click.echo(f'package_sha256 = "{doc["sha256"]}"')


@model.command("inspect")
@click.argument("package_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@format_option
def model_inspect(package_file: Path, fmt: str) -> None:
    """Check PACKAGE_FILE's structure and print what it holds and its SHA-256."""
    from cctrain.client import file_sha256
    from cctrain.package import check_package_file

    info = check_package_file(package_file).summary()
    digest, size = file_sha256(package_file)
    doc = {"package": str(package_file), "sha256": digest.hex(), "bytes": size, **info}
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"{package_file}: {size} bytes, sha256 {digest.hex()}")
    for name, n in info["files"].items():
        click.echo(f"  {name}: {n} bytes")
    click.echo(f"  initial weights: {info['tensors']} tensors, {info['weights_bytes']} bytes")


@model.command("upload")
@click.argument("package_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_session_options
@click.option("--receipt-out", type=click.Path(path_type=Path), help="Also write the receipt here.")
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar (default: on a terminal)."
)
def model_upload(
    package_file: Path,
    address: str,
    policy_file: Path,
    key_file: Path,
    allow_simulated: bool,
    receipt_out: Path | None,
    progress: bool | None,
    fmt: str,
) -> None:
    """Attest the enclave, then stream PACKAGE_FILE encrypted to it; verify the receipt.

    The package must be the one the policy pins: checked before connecting."""
    from cctrain.client import ModelOwner
    from cctrain.package import check_package_file

    check_package_file(package_file)  # before connecting: a wrong file is bad input
    with _connect(ModelOwner, address, policy_file, key_file, allow_simulated) as owner:
        receipt = owner.upload_package(package_file, progress=_progress(progress, fmt))
    if receipt_out:
        receipt_out.write_text(json.dumps(receipt.to_json(), indent=2) + "\n")
    _result(fmt, {"receipt": receipt.to_json()})
    _say(fmt)(
        f"receipt verified: party={receipt.party_id} model package "
        f"sha256={receipt.package_sha256.hex()} policy={receipt.policy_digest.hex()}"
    )


# --------------------------------------------------------------------------- upload


@main.command()
@click.argument("shard", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_session_options
@click.option("--shard-id", help="Default: the file name without extension.")
@click.option(
    "--dataset",
    help="Name of the data in your ε ledger: every file uploaded under one name (another "
    "export of the same rows) counts against one lifetime budget. Default: the file's SHA-256.",
)
@click.option("--receipt-out", type=click.Path(path_type=Path), help="Also write the receipt here.")
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar (default: on a terminal)."
)
def upload(
    shard: Path,
    address: str,
    policy_file: Path,
    key_file: Path,
    allow_simulated: bool,
    shard_id: str | None,
    dataset: str | None,
    receipt_out: Path | None,
    progress: bool | None,
    fmt: str,
) -> None:
    """Attest the enclave, then stream SHARD (.npz, .csv or .parquet) encrypted to it; verify the receipt."""
    from cctrain.alloc import tune_for_streaming
    from cctrain.client import DataOwner, check_shard_file
    from cctrain.memory import dataset_key

    tune_for_streaming()  # this process streams the shard: keep its chunk buffers mapped
    check_shard_file(shard)  # before connecting: a wrong file is bad input, not a failed upload
    if dataset is not None:
        dataset_key(dataset)  # a bad label is bad input too
    with _connect(DataOwner, address, policy_file, key_file, allow_simulated) as owner:
        receipt = owner.upload(
            shard, shard_id=shard_id, progress=_progress(progress, fmt), dataset=dataset
        )
    doc = receipt.to_json()
    if receipt_out:
        receipt_out.write_text(json.dumps(doc, indent=2) + "\n")
    _result(fmt, {"receipt": doc})
    _say(fmt)(
        f"receipt verified: party={receipt.party_id} shard={receipt.shard_id} rows={receipt.rows} "
        f"policy={receipt.policy_digest.hex()}"
    )


@main.command()
@_session_options
@click.option("--shard-id", required=True, help="The id of your accepted shard to withdraw.")
@click.option(
    "--receipt-out", type=click.Path(path_type=Path), help="Also write the deletion receipt here."
)
def withdraw(
    address: str,
    policy_file: Path,
    key_file: Path,
    allow_simulated: bool,
    shard_id: str,
    receipt_out: Path | None,
    fmt: str,
) -> None:
    """Withdraw one of your shards before training starts; verify the deletion receipt.

    The enclave drops the shard from the run (no training set or manifest can contain it)
    and deletes its ciphertext. Refused once training has started. The shard id is not used
    again: upload replacement data under a new id.
    """
    from cctrain.client import DataOwner
    from cctrain.errors import ShardError
    from cctrain.ids import SHARD_ID, is_shard_id

    if not is_shard_id(shard_id):
        raise ShardError(f"--shard-id {shard_id!r} must match {SHARD_ID.pattern}")
    with _connect(DataOwner, address, policy_file, key_file, allow_simulated) as owner:
        receipt = owner.withdraw(shard_id)
    if receipt_out:
        receipt_out.write_text(json.dumps(receipt.to_json(), indent=2) + "\n")
    _result(fmt, {"receipt": receipt.to_json()})
    _say(fmt)(
        f"withdrawn: party={receipt.party_id} shard={receipt.shard_id}; deletion receipt "
        f"verified: journal entry #{receipt.journal_seq} {receipt.journal_sha256.hex()}"
    )


# --------------------------------------------------------------------------- training


@main.command()
@_session_options
def status(
    address: str, policy_file: Path, key_file: Path, allow_simulated: bool, fmt: str
) -> None:
    """The run's phase, who has uploaded, and the approvals still missing."""
    from cctrain.client import EnclaveSession

    with _connect(EnclaveSession, address, policy_file, key_file, allow_simulated) as s:
        st = s.status()
    doc = {
        "phase": st.phase,
        "state_key": st.state_key or "platform",
        "locked": st.locked,
        "unlock_threshold": st.unlock_threshold,
        "unlocked_by": list(st.unlocked_by),
        "detail": st.detail,
        "providers_uploaded": list(st.providers_uploaded),
        "providers_missing": list(st.providers_missing),
        "approvals": list(st.approvals),
        "approvals_missing": list(st.approvals_missing),
        "policy_digest": bytes(st.policy_digest).hex(),
        "journal_head": {"seq": st.journal_seq, "sha256": bytes(st.journal_head_sha256).hex()},
        "epsilon_spent": st.epsilon_spent if st.epsilon_spent >= 0 else None,
    }
    if fmt == "json":
        click.echo(json.dumps(doc))
        return
    click.echo(f"phase: {st.phase}")
    click.echo(f"state_key: {doc['state_key']}")
    if doc["state_key"] == "consortium":
        click.echo(f"lock: {unlock_line(st.locked, st.unlock_threshold, st.unlocked_by)}")
    for k, v in doc.items():
        if k in ("phase", "state_key", "locked", "unlock_threshold", "unlocked_by"):
            continue
        if k == "journal_head":
            v = f"#{st.journal_seq} {bytes(st.journal_head_sha256).hex()}"
        click.echo(f"{k}: {', '.join(v) if isinstance(v, list) else v}")


def _progress(progress: bool | None, fmt: str) -> bool | None:
    """No progress bar in JSON mode unless asked for (it would be on stderr, but unasked)."""
    return False if progress is None and fmt == "json" else progress


def unlock_line(locked: bool, threshold: int, unlocked_by: Any) -> str:
    """``locked, 1 of 2 shares (hospital-a)`` or ``unlocked (2 of 2 shares)``."""
    who = list(unlocked_by)
    if not locked:
        if not who:  # the key this start made at genesis: nobody needed to unlock it
            return "unlocked (the enclave made its state key in this start)"
        return f"unlocked ({len(who)} of {threshold} shares)"
    return f"locked, {len(who)} of {threshold} shares" + (f" ({', '.join(who)})" if who else "")


@main.command()
@_session_options
def unlock(
    address: str, policy_file: Path, key_file: Path, allow_simulated: bool, fmt: str
) -> None:
    """Return your share of the consortium-held state key to a restarted (locked) enclave.

    Attests the enclave, fetches and verifies its journal (and the genesis evidence), opens
    your share of the state key with your key, and seals it to the key this start of the
    enclave attested, bound to the journal head you verified. The enclave opens its state
    once the policy's threshold of parties did so.
    """
    from cctrain.client import EnclaveSession

    with _connect(EnclaveSession, address, policy_file, key_file, allow_simulated) as s:
        resp = s.unlock()
    _say(fmt)(unlock_line(resp.locked, resp.threshold, resp.unlocked_by))
    doc = {
        "locked": resp.locked,
        "threshold": resp.threshold,
        "unlocked_by": list(resp.unlocked_by),
    }
    _result(fmt, doc)


@main.group()
def train() -> None:
    """Ask the enclave to start training (when the policy's start rule allows it)."""


@train.command("start")
@_session_options
def train_start(
    address: str, policy_file: Path, key_file: Path, allow_simulated: bool, fmt: str
) -> None:
    """Request the start; refused with the reason unless every required provider has uploaded."""
    from cctrain.client import EnclaveSession

    with _connect(EnclaveSession, address, policy_file, key_file, allow_simulated) as s:
        phase = s.start_training()
    _say(fmt)(f"phase: {phase}")
    _result(fmt, {"phase": phase})


@main.command()
@_session_options
def watch(address: str, policy_file: Path, key_file: Path, allow_simulated: bool, fmt: str) -> None:
    """Stream training progress (step, epoch, loss, ε spent) until the run ends."""
    from cctrain.client import EnclaveSession

    with _connect(EnclaveSession, address, policy_file, key_file, allow_simulated) as s:
        events = s.watch()
        if fmt == "json":
            for ev in events:
                click.echo(json.dumps(_progress_json(ev)), nl=True)
            return
        _watch_with_bar(events)


def _progress_json(ev: Any) -> dict[str, Any]:
    """One watch event: a step of training (1-based epoch; loss and ε null where the policy
    does not release them) or a change of phase (no step, epoch or loss)."""
    step = bool(ev.total_steps)
    return {
        "phase": ev.phase,
        "step": ev.step if step else None,
        "total_steps": ev.total_steps if step else None,
        "epoch": ev.epoch + 1 if step else None,
        "loss": ev.loss if step else None,
        "epsilon": ev.epsilon,
        "detail": ev.detail,
    }


def _watch_with_bar(events: Any) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console()
    with Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epoch {task.fields[epoch]}  loss {task.fields[loss]}  ε {task.fields[eps]}"),
        console=console,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("train", total=None, epoch="-", loss="-", eps="-")
        for ev in events:
            if not ev.total_steps:
                console.print(f"phase: {ev.phase} {ev.detail}".rstrip())
                continue
            eps = f"{ev.epsilon:.3f}" if ev.epsilon is not None else "-"
            loss = f"{ev.loss:.4f}" if ev.loss is not None else "-"
            epoch = ev.epoch + 1  # the trainer counts from 0; people count from 1
            bar.update(
                task, total=ev.total_steps, completed=ev.step, epoch=epoch, loss=loss, eps=eps
            )
            if not console.is_terminal:
                console.print(f"step {ev.step}/{ev.total_steps} epoch {epoch} loss {loss} ε {eps}")


# --------------------------------------------------------------------------- release


@main.group()
def release() -> None:
    """Approve (data providers), fetch and verify (recipients) the sealed model."""


@release.command("approve")
@_session_options
def release_approve(
    address: str, policy_file: Path, key_file: Path, allow_simulated: bool, fmt: str
) -> None:
    """Verify the release manifest, show what it says, and approve exactly it."""
    from cctrain.client import DataOwner

    say = _say(fmt)
    with _connect(DataOwner, address, policy_file, key_file, allow_simulated) as o:
        m = o.release_manifest()
        say(f"model sha256: {m.manifest['model_sha256']}")
        say(f"metrics: {json.dumps(m.manifest['metrics'])}")
        privacy = _privacy_summary(m.manifest, o.policy, say=say)
        approvals = o.approve_release()
    say(f"approved; approvals so far: {', '.join(approvals)}")
    doc = {
        "model_sha256": m.manifest["model_sha256"],
        "manifest_sha256": m.manifest_sha256.hex(),
        "metrics": m.manifest["metrics"],
        "privacy": privacy,
        "approvals": list(approvals),
    }
    _result(fmt, doc)


@release.command("veto")
@_session_options
def release_veto(
    address: str, policy_file: Path, key_file: Path, allow_simulated: bool, fmt: str
) -> None:
    """Verify the release manifest, show what it says, and veto exactly it: nothing of the
    run is released, and its sealed weights are deleted. Refused after the release."""
    from cctrain.client import DataOwner

    with _connect(DataOwner, address, policy_file, key_file, allow_simulated) as o:
        m = o.release_manifest()
        say = _say(fmt)
        say(f"model sha256: {m.manifest['model_sha256']}")
        say(f"manifest sha256: {m.manifest_sha256.hex()}")
        phase = o.veto_release()
    say(f"vetoed; phase: {phase} (nothing of this run will be released)")
    doc = {
        "model_sha256": m.manifest["model_sha256"],
        "manifest_sha256": m.manifest_sha256.hex(),
        "vetoed": True,
        "phase": phase,
    }
    _result(fmt, doc)


@release.command("fetch")
@_session_options
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=Path("release"), show_default=True
)
def release_fetch(
    address: str, policy_file: Path, key_file: Path, allow_simulated: bool, out_dir: Path, fmt: str
) -> None:
    """Fetch, verify and unseal the model: OUT/release.json (sealed) and OUT/model.safetensors."""
    from cctrain.client import Recipient

    with _connect(Recipient, address, policy_file, key_file, allow_simulated) as r:
        model = r.fetch_model(save_to=out_dir / "release.json")
    (out_dir / "model.safetensors").write_bytes(model.weights)
    (out_dir / "manifest.json").write_text(json.dumps(model.manifest, indent=2) + "\n")
    say = _say(fmt)
    say(
        f"verified and unsealed: {out_dir / 'model.safetensors'} (sha256 {model.manifest['model_sha256']})"
    )
    privacy = _privacy_summary(model.manifest, r.policy, weights=model.weights, say=say)
    doc = {
        "model": str(out_dir / "model.safetensors"),
        "model_sha256": model.manifest["model_sha256"],
        "release": str(out_dir / "release.json"),
        "manifest": str(out_dir / "manifest.json"),
        "privacy": privacy,
    }
    _result(fmt, doc)


def _privacy_summary(
    manifest: dict[str, Any],
    policy: Any,
    *,
    weights: bytes | None = None,
    say: Callable[[str], None] = click.echo,
) -> dict[str, Any]:
    """What the release's privacy claims are (already checked against the policy), ε
    recomputed independently where dp-accounting is installed, and what DP does not cover.
    ``weights``: the unsealed (already checked) weights, where a sealed certificate's
    tensor names are. Said line by line with ``say``; returned as a JSON document."""
    from cctrain.dpcheck import SEALED, certified_tensors, recompute_epsilon
    from cctrain.errors import ReleaseError

    cert = manifest.get("dp_certificate")
    outside = manifest.get("non_private_outputs") or []
    doc: dict[str, Any] = {"dp_certificate": cert, "non_private_outputs": list(outside)}
    if cert is None:
        say("DP: none. Nothing released is private: " + ", ".join(outside))
        return doc
    say(
        f"DP: ε = {cert['epsilon']:.4g} ≤ {cert['target_epsilon']:g}, δ = {cert['delta']:g} "
        f"({cert['accountant']}; σ = {cert['noise_multiplier']:.4g}, q = {cert['sample_rate']:.4g}, "
        f"{cert['steps']} steps, clip {cert['max_grad_norm']:g}; noise {cert['noise_source']}, "
        f"batches {cert['sampling']}): agrees with the policy"
    )
    if cert.get("tensor_names") == SEALED and weights is None:
        say(
            "    covers: the model package's tensors, named only inside the sealed weights "
            f"(commitment {cert['tensor_names_sha256'][:16]}…; recipients check them)"
        )
    else:
        tensors = certified_tensors(cert, weights)
        doc["covers"] = list(tensors.covers)
        doc["unchanged_from_initialisation"] = list(tensors.unchanged_from_initialisation)
        say(f"    covers: {', '.join(tensors.covers)}")
        if tensors.unchanged_from_initialisation:
            say(
                "    released at their initial value: "
                + ", ".join(tensors.unchanged_from_initialisation)
            )
    again = recompute_epsilon(cert)
    doc["epsilon_recomputed"] = again
    if again is None:
        say("    ε not recomputed independently (pip install dp-accounting to do so)")
    else:
        diff = (again - cert["epsilon"]) / max(cert["epsilon"], 1e-12)
        say(
            f"    ε recomputed with Google's dp-accounting: {again:.4g} ({diff:+.2%}; its RDP "
            "bound at fractional orders is slightly looser, see docs/dp.md)"
        )
        if again > float(policy.privacy["target_epsilon"]) * 1.01:
            raise ReleaseError(
                f"dp-accounting puts ε at {again:.4g}, above the policy's target "
                f"{policy.privacy['target_epsilon']} by more than 1%"
            )
    if outside:
        say(
            "OUTSIDE the DP guarantee (exact, opted in by release.non_private): "
            + ", ".join(outside)
        )
    return doc


@release.command("verify")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--policy", "policy_file", required=True, type=click.Path(path_type=Path))
@click.option(
    "--key",
    "key_file",
    type=click.Path(path_type=Path),
    help="Recipient key: also unseal and check the model hash.",
)
@click.option("--allow-simulated", is_flag=True)
@click.option(
    "--out", "out_file", type=click.Path(path_type=Path), help="Write the unsealed model here."
)
@format_option
def release_verify(
    bundle: Path,
    policy_file: Path,
    key_file: Path | None,
    allow_simulated: bool,
    out_file: Path | None,
    fmt: str,
) -> None:
    """Verify a release bundle offline: manifest signature, evidence, policy digest (and model hash)."""
    from cctrain.client import load_release_bundle, open_release, verify_release
    from cctrain.crypto.keys import PartyKeys
    from cctrain.policy import SignedPolicy

    sp = SignedPolicy.load(policy_file)
    sp.require_complete(check_expiry=False)  # a release made before expiry stays verifiable
    rb = load_release_bundle(bundle)
    if allow_simulated:
        _simulated_banner()
    say = _say(fmt)
    if key_file is None:
        rel = verify_release(rb, policy=sp.policy, allow_simulated=allow_simulated)
        say(
            f"release verified: model sha256 {rel.manifest['model_sha256']}; "
            f"{len(rel.manifest['receipts'])} shards, each once; "
            f"approved by {', '.join(rel.approved_by) or 'nobody (none required)'} "
            "(weights not opened: no --key)"
        )
        privacy = _privacy_summary(rel.manifest, sp.policy, say=say)
        doc = {
            "verified": True,
            "unsealed": False,
            "model_sha256": rel.manifest["model_sha256"],
            "shards": len(rel.manifest["receipts"]),
            "approved_by": list(rel.approved_by),
            "privacy": privacy,
        }
        _result(fmt, doc)
        return
    model = open_release(
        rb, policy=sp.policy, keys=PartyKeys.load(key_file), allow_simulated=allow_simulated
    )
    if out_file:
        out_file.write_bytes(model.weights)
    say(
        f"release verified and unsealed: model sha256 {model.manifest['model_sha256']}; "
        f"approved by {', '.join(model.release.approved_by) or 'nobody (none required)'}"
    )
    privacy = _privacy_summary(model.manifest, sp.policy, weights=model.weights, say=say)
    doc = {
        "verified": True,
        "unsealed": True,
        "model_sha256": model.manifest["model_sha256"],
        "shards": len(model.manifest["receipts"]),
        "approved_by": list(model.release.approved_by),
        "model": str(out_file) if out_file else None,
        "privacy": privacy,
    }
    _result(fmt, doc)


# --------------------------------------------------------------------------- audit


@main.command("audit")
@click.option(
    "--enclave", "address", help="host:port of a running enclave to fetch the journal from"
)
@click.option(
    "--journal",
    "journal_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Verify a saved journal instead (e.g. a copy of STATE/journal.log).",
)
@click.option("--policy", "policy_file", required=True, type=click.Path(path_type=Path))
@click.option(
    "--key",
    "key_file",
    type=click.Path(path_type=Path),
    help="Your party key (needed with --enclave: requests are signed).",
)
@click.option("--allow-simulated", is_flag=True, help="Accept simulated evidence (insecure).")
@click.option(
    "--save",
    "save_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the fetched journal here (verifiable later with --journal).",
)
@format_option
def audit_cmd(
    address: str | None,
    journal_file: Path | None,
    policy_file: Path,
    key_file: Path | None,
    allow_simulated: bool,
    save_file: Path | None,
    fmt: str,
) -> None:
    """Verify the enclave's journal offline and print its history; exit 1 if it does not verify.

    Checks the hash chain, every enclave signature, the genesis evidence that binds the
    enclave key to the pinned code under this policy, every header, receipt and approval
    signature in it, and that each entry follows the run's rules.
    """
    from cctrain.journal import audit, frame, read_journal_file, summary_line
    from cctrain.policy import SignedPolicy

    if (address is None) == (journal_file is None):
        fail("give exactly one of --enclave HOST:PORT or --journal FILE", BAD_INPUT, "usage")
    if address is not None and key_file is None:
        fail("--enclave needs --key: every request to the enclave is signed", BAD_INPUT, "usage")
    sp = SignedPolicy.load(policy_file)
    sp.require_complete(check_expiry=False)  # a journal outlives its policy's expiry
    if address is not None:
        from cctrain.client import EnclaveSession

        assert key_file is not None
        with _connect(EnclaveSession, address, sp, key_file, allow_simulated) as s:
            report = s.audit()
        records = list(report.records)
    else:
        assert journal_file is not None
        try:
            records = read_journal_file(journal_file)
        except OSError as exc:
            fail(f"cannot read {journal_file}: {exc.strerror}", BAD_INPUT, "os-error")
        if allow_simulated:
            _simulated_banner()
        report = audit(records, sp.policy, allow_simulated=allow_simulated)
    if save_file is not None:
        save_file.write_bytes(b"".join(frame(r.raw) for r in records))
    if fmt == "json":
        click.echo(json.dumps(report.to_json()))
        return
    st = report.state
    click.echo(f"journal of policy {sp.policy.name!r} {st.policy_digest.hex()}")
    click.echo(
        f"verified: {len(records)} entries, head #{st.head.seq} {st.head.sha256.hex()}; "
        f"enclave key {st.signing_public_key.hex()} on {report.platform} "
        f"(measurement {report.measurement.hex()})"
    )
    for event in report.history():
        click.echo(summary_line(event))
    click.echo(f"phase: {st.phase}")


# --------------------------------------------------------------------------- ledger


def _state_dir_option(f: Any) -> Any:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="This party's state directory (default: $CCTRAIN_HOME or ~/.cctrain).",
    )(f)


@main.group(invoke_without_command=True)
@_state_dir_option
@format_option
@click.pass_context
def ledger(ctx: click.Context, state_dir: Path | None, fmt: str) -> None:
    """The ε this party granted per dataset, across every policy, and each lifetime budget.

    A dataset is a shard file (named by its SHA-256) or the name given at upload
    (``cctrain upload --dataset NAME``)."""
    if ctx.invoked_subcommand is not None:
        return
    from cctrain.client import default_state_dir
    from cctrain.memory import PartyMemory, ledger_summary

    with PartyMemory(state_dir or default_state_dir()) as mem:
        rows = ledger_summary(mem)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no dataset granted to any policy yet")
    for d in rows:
        budget = "none" if d["budget"] is None else f"{d['budget']:g}"
        spent = "unbounded (no DP)" if d["granted"] is None else f"{d['granted']:g}"
        label = f" ({d['label']})" if d["label"] else ""
        click.echo(
            f"dataset {d['dataset_sha256'][:16]}…{label}: ε granted {spent}, budget {budget}"
        )
        for g in d["policies"]:
            eps = "no DP" if g["epsilon"] is None else f"ε {g['epsilon']:g}"
            click.echo(
                f"    {g['policy_name']} ({g['policy_digest'][:12]}…) shard {g['shard_id']}: "
                f"{eps}, {g['status']}"
            )


@ledger.command("budget")
@click.argument(
    "file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--dataset", help="A dataset name given at upload (upload --dataset), not a FILE.")
@click.option("--epsilon", type=float, required=True, help="Lifetime ε budget of this dataset.")
@_state_dir_option
@format_option
def ledger_budget(
    file: Path | None, dataset: str | None, epsilon: float, state_dir: Path | None, fmt: str
) -> None:
    """Set a dataset's lifetime ε budget: uploads and approvals that would exceed it are
    refused. The dataset is FILE (named by its SHA-256) or the name given by --dataset."""
    from cctrain.client import default_state_dir, file_sha256
    from cctrain.errors import InputError
    from cctrain.memory import PartyMemory, dataset_key

    if (file is None) == (dataset is None):
        raise InputError("name the dataset by FILE or by --dataset NAME (one of them)")
    if dataset is not None:
        digest, name = dataset_key(dataset), dataset
    else:
        assert file is not None
        (digest, _), name = file_sha256(file), file.name
    with PartyMemory(state_dir or default_state_dir()) as mem:
        mem.set_budget(digest, epsilon, label=name)
        granted = mem.granted(digest)
    doc = {
        "dataset_sha256": digest.hex(),
        "label": name,
        "budget": epsilon,
        "granted": None if granted == float("inf") else granted,
    }
    _result(fmt, doc)
    _say(fmt)(
        f"lifetime budget of {name} ({digest.hex()[:16]}…): ε {epsilon:g}; "
        f"granted so far: {'unbounded (no DP)' if granted == float('inf') else f'{granted:g}'}"
    )


# --------------------------------------------------------------------------- memory


@main.group("memory", invoke_without_command=True)
@_state_dir_option
@format_option
@click.pass_context
def memory_group(ctx: click.Context, state_dir: Path | None, fmt: str) -> None:
    """The runs this party remembers: per policy, the newest journal head it verified.

    A session refuses an enclave whose journal does not extend it ("fork or rollback"),
    and a new run of a policy while a run it saw has not ended.
    """
    if ctx.invoked_subcommand is not None:
        return
    from cctrain.client import default_state_dir
    from cctrain.memory import PartyMemory

    with PartyMemory(state_dir or default_state_dir()) as mem:
        runs = mem.all_runs()
    if fmt == "json":
        click.echo(json.dumps({"runs": [_run_json(r) for r in runs]}))
        return
    if not runs:
        click.echo("no run remembered yet")
    for r in runs:
        click.echo(f"policy {r.policy_digest.hex()[:16]}…: {r.describe()}")


def _run_json(r: Any) -> dict[str, Any]:
    return {
        "policy_digest": r.policy_digest.hex(),
        "run_id": r.run_id.hex(),
        "genesis_sha256": r.genesis_sha256.hex(),
        "head": {"seq": r.head.seq, "sha256": r.head.sha256.hex()},
        "phase": r.phase,
    }


@memory_group.command("forget")
@click.argument("run_id")
@click.option(
    "--policy",
    "policy_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The signed policy of the run.",
)
@_state_dir_option
@format_option
def memory_forget(run_id: str, policy_file: Path, state_dir: Path | None, fmt: str) -> None:
    """Forget RUN_ID (a prefix of at least 8 hex digits), an unreleased run the consortium
    knows was abandoned, so that a new run of the policy is accepted. Approvals and the ε
    ledger are kept; a released run is never forgotten."""
    from cctrain.client import default_state_dir
    from cctrain.memory import PartyMemory
    from cctrain.policy import SignedPolicy

    digest = SignedPolicy.load(policy_file).digest
    with PartyMemory(state_dir or default_state_dir()) as mem:
        run = mem.forget_run(digest, run_id.lower())
    _result(fmt, {"forgot": _run_json(run)})
    _say(fmt)(f"forgot {run.describe()}; approvals and the ε ledger are kept")


# --------------------------------------------------------------------------- enclave


@main.group()
def enclave() -> None:
    """Run the enclave service (needs the cctrain[enclave] extra for training)."""


def _add_enclave_serve() -> None:
    """`cctrain enclave serve` is the enclave's own command (one definition of its options)."""
    import copy

    from cctrain_enclave.cli import serve_cmd

    # Its output is the service's log; --format json makes its setup errors JSON.
    cmd = copy.copy(serve_cmd)
    serve = serve_cmd.callback
    assert serve is not None
    cmd.params = [*serve_cmd.params, *format_option(click.Command("-")).params]
    cmd.callback = lambda fmt, **kw: serve(**kw)
    enclave.add_command(cmd, "serve")


_add_enclave_serve()


def _add_dashboard() -> None:
    from cctrain.cli.dashboard import dashboard_cmd

    main.add_command(dashboard_cmd, "dashboard")


_add_dashboard()
