"""``cctrain policy init | add-party | pin-package | merge``: writing the policy, collecting
signatures.

Registered on the ``policy`` group by :mod:`cctrain.cli.main`; the work is in
:mod:`cctrain.authoring`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cctrain.commandline import BAD_INPUT, fail, format_option


def _replace_text(path: Path, text: str) -> None:
    """Replace ``path``'s text all or nothing: a crash leaves the old file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _out(fmt: str, lines: list[str], doc: dict[str, Any]) -> None:
    """The lines in text mode, the document in JSON mode."""
    if fmt == "json":
        click.echo(json.dumps(doc))
    else:
        for line in lines:
            click.echo(line)


@click.command("init")
@click.option(
    "--scenario",
    required=True,
    type=click.Choice(["hospitals", "model-owner"]),
    help="hospitals: data providers pool rows, a recipient gets the model; model-owner: a "
    "model owner's package trains on the providers' rows.",
)
@click.option("--dp/--no-dp", default=False, show_default=True, help="Train with DP-SGD.")
@click.option("--ranks", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--name", default="my-consortium", show_default=True, help="The policy's name.")
@click.option("-o", "--out", "out_file", required=True, type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@format_option
def policy_init(
    scenario: str, dp: bool, ranks: int, name: str, out_file: Path, force: bool, fmt: str
) -> None:
    """Write a commented policy template for SCENARIO to OUT (then: policy add-party)."""
    from cctrain.authoring import policy_template

    if out_file.exists() and not force:
        fail(f"{out_file} exists; refusing to overwrite it (pass --force)", BAD_INPUT)
    out_file.write_text(policy_template(scenario, dp=dp, ranks=ranks, name=name))
    _out(
        fmt,
        [
            f"wrote {out_file} ({scenario}, DP {'on' if dp else 'off'}, {ranks} rank(s))",
            f"next: cctrain policy add-party PARTY-ID --roles ROLES --pub PARTY-ID.pub.json "
            f"{out_file}",
        ],
        {"written": str(out_file), "scenario": scenario, "dp": dp, "ranks": ranks},
    )


@click.command("add-party")
@click.argument("party_id")
@click.option(
    "--roles",
    required=True,
    help="Comma-separated: data_provider, model_provider, recipient.",
)
@click.option(
    "--pub",
    "pub_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The party's PARTY-ID.pub.json, as cctrain keygen wrote it.",
)
@click.argument("policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@format_option
def policy_add_party(
    party_id: str, roles: str, pub_file: Path, policy_file: Path, fmt: str
) -> None:
    """Add PARTY_ID to POLICY_FILE (TOML) in place, keeping its comments."""
    from cctrain.authoring import PublicKeys, add_party

    if policy_file.suffix != ".toml":
        fail(f"{policy_file}: add-party edits TOML policies (.toml)", BAD_INPUT)
    keys = PublicKeys.from_json(pub_file.read_bytes(), where=str(pub_file))
    text, changes = add_party(policy_file.read_text(), party_id, roles, keys)
    _replace_text(policy_file, text)
    _out(
        fmt,
        [f"added {party_id} ({roles}) to {policy_file}", *(f"  {line}" for line in changes)],
        {
            "party": party_id,
            "roles": roles.split(","),
            "policy": str(policy_file),
            "changes": changes,
        },
    )


@click.command("pin-package")
@click.argument("policy_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("package_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@format_option
def policy_pin_package(policy_file: Path, package_file: Path, fmt: str) -> None:
    """Pin PACKAGE_FILE in POLICY_FILE (TOML) in place: training.model.package_sha256 becomes
    the package's SHA-256, after its structure is checked (cctrain model inspect)."""
    from cctrain.authoring import pin_package
    from cctrain.client import file_sha256
    from cctrain.package import check_package_file

    if policy_file.suffix != ".toml":
        fail(f"{policy_file}: pin-package edits TOML policies (.toml)", BAD_INPUT)
    check_package_file(package_file)
    sha = file_sha256(package_file)[0].hex()
    text, change = pin_package(policy_file.read_text(), sha)
    _replace_text(policy_file, text)
    _out(
        fmt,
        [f"pinned {package_file} in {policy_file}", f"  {change}"],
        {"policy": str(policy_file), "package": str(package_file), "package_sha256": sha},
    )


@click.command("merge")
@click.argument(
    "envelope_files",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("-o", "--out", "out_file", required=True, type=click.Path(path_type=Path))
@format_option
def policy_merge(envelope_files: tuple[Path, ...], out_file: Path, fmt: str) -> None:
    """Combine the signatures of ENVELOPE_FILES (each over the same policy) into OUT."""
    from cctrain.authoring import merge_signed
    from cctrain.policy import SignedPolicy

    signed = [SignedPolicy.load(p) for p in envelope_files]
    result = merge_signed(signed, names=[str(p) for p in envelope_files])
    result.signed.save(out_file)
    st = result.status
    pairs = list(zip(envelope_files, result.contributions, strict=True))
    _out(
        fmt,
        [
            *(f"{path}: {', '.join(brought) or 'no new signature'}" for path, brought in pairs),
            f"wrote {out_file}; digest {result.signed.digest.hex()}",
            f"signed:  {', '.join(st.signed) or '-'}",
            f"missing: {', '.join(st.missing) or '-'}",
        ],
        {
            "written": str(out_file),
            "digest": result.signed.digest.hex(),
            "contributions": {str(path): list(brought) for path, brought in pairs},
            "signed": list(st.signed),
            "missing": list(st.missing),
        },
    )


def register(group: click.Group) -> None:
    for command in (policy_init, policy_add_party, policy_pin_package, policy_merge):
        group.add_command(command)
