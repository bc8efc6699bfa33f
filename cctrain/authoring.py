"""Writing a policy: a commented template per scenario, adding parties to it in place, and
merging signatures that the parties collected separately.

Pure functions over text and envelopes; the command line (:mod:`cctrain.cli.policy_tools`)
and the operator API (:mod:`cctrain.operator`) do the file I/O. Adding a party edits the TOML
with tomlkit, which keeps every comment and the layout of the rest of the file.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from cctrain.crypto.keys import PUBLIC_TYPE, decode_public
from cctrain.errors import InputError, PolicyError, PolicyFileError
from cctrain.ids import PARTY_ID, is_party_id
from cctrain.policy import ROLES, SignatureStatus, SignedPolicy
from cctrain.untrusted import loads_json

SCENARIOS = ("hospitals", "model-owner")

_HEADER = """\
# cctrain consortium policy: scenario "{scenario}", written by `cctrain policy init`.
# Every party signs the exact bytes of this file; its SHA-256 is the policy digest that the
# enclave's evidence, every upload, receipt and the release bind to. Change nothing after
# the first signature (a changed byte is another policy, and every party signs again).
#
# Next steps (docs/tutorial-consortium.md walks through them):
#   1. every party:  cctrain keygen PARTY-ID        -> PARTY-ID.key (secret), PARTY-ID.pub.json
#   2. the author:   cctrain policy add-party PARTY-ID --roles ROLE[,ROLE] --pub PARTY-ID.pub.json FILE
#   3. the author:   cctrain policy check FILE       (every problem, named by its field)
#   4. every party:  cctrain policy sign FILE --key PARTY-ID.key --envelope PARTY-ID.signed.json
#   5. the author:   cctrain policy merge *.signed.json -o policy.signed.json
# Values marked REPLACE are placeholders the check refuses until you fill them in; the
# others are working defaults to adjust. docs/policy-reference.md lists every key.

version = 1  # the policy format; always 1
# A name the parties recognise (shown by `cctrain policy verify` and in the release).
name = "{name}"
# After this instant (ISO-8601, with a time zone) the enclave takes no upload, starts no
# training and releases nothing.
expires = "{expires}"
# Signatures needed (default: every party). Leave it out unless the consortium agreed on k-of-n.
# signature_threshold = 2

# The parties are [[parties]] tables that `cctrain policy add-party` appends at the end of
# this file: id, roles (data_provider, model_provider, recipient), signing_key (Ed25519) and,
# for a recipient, hpke_key (X25519: the release is sealed to it).

[attestation]
# Which TEEs may run the training. "simulated" is the local default: its root key is public
# and it proves NOTHING; for real data use e.g. ["sev-snp"] or ["tdx"] with measurements pinned.
platforms = ["simulated"]
allow_simulated = true  # must be true to list "simulated"; false in production
allow_debug = false  # never accept a debuggable enclave (its memory is readable)

# The launch measurements accepted, per platform (`cctrain measure` prints the simulated
# one; hardware platforms must pin theirs). Optional for "simulated".
# [attestation.reference.simulated]
# measurements = ["<hex from cctrain measure>"]
"""

_HOSPITALS_DATA = """
[data]
# What every provider's shard must look like; the enclave refuses anything else.
formats = ["npz"]  # npz (arrays "features", "labels"), csv or parquet
features = { shape = [8], dtype = "float32" }  # REPLACE with your rows' shape: one row's features
labels = { num_classes = 2 }  # class indices 0..num_classes-1 (or vocabulary = ["a", "b"])
min_rows = 10  # a provider's shard with fewer rows is refused
max_rows = 100000  # ... and with more
max_bytes = 67108864  # the most bytes of one shard (64 MiB)

[training]
task = "classification"  # or "regression" (float labels, squared error)
# A built-in model: logreg, mlp (params.hidden = layer widths) or cnn.
model = { name = "mlp", params = { hidden = [32] } }
optimizer = { name = "sgd", lr = 0.1, momentum = 0.9 }  # sgd, adam or adamw
epochs = 3
batch_size = 32
seed = 1  # public: seeds the initial weights only (which rows enter a batch stays secret)
"""

_MODEL_OWNER_DATA = """
[data]
# What every provider's shard must look like; the enclave refuses anything else.
formats = ["csv"]
features = { shape = [30], dtype = "float32" }  # REPLACE with your rows' shape
labels = { vocabulary = ["negative", "positive"] }  # REPLACE with your label values
min_rows = 10
max_rows = 100000
max_bytes = 4194304  # the most bytes of one shard (4 MiB)

[data.csv]
label_column = "label"  # REPLACE with the name of your CSV's label column

[training]
task = "classification"
# The model owner's package (`cctrain model package DIR -o model.pkg` prints its hash): its
# code and initial weights, uploaded by the model_provider party to the attested enclave.
# `cctrain policy add-party --roles model_provider,...` fills in the provider.
model = { name = "package", provider = "REPLACE-model-owner-id", package_sha256 = "REPLACE-sha256-of-the-package" }
optimizer = { name = "adamw", lr = 0.001, weight_decay = 0.05 }
epochs = 10
batch_size = 32
seed = 1
"""

_DP = """
[privacy]
# Differential privacy (Opacus DP-SGD): the released weights are (epsilon, delta)-DP with
# respect to every row of every provider.
enabled = true
target_epsilon = 8.0  # the privacy budget this run spends; lower is more private
delta = 1e-5  # below 1/rows
max_grad_norm = 1.0  # per-sample gradient clipping norm
accountant = "rdp"  # rdp or prv
"""

_NO_DP = """
[privacy]
# No differential privacy: the released weights may memorise rows. Set enabled = true with
# target_epsilon, delta and max_grad_norm to train with DP-SGD.
enabled = false
"""

_TAIL = """
[start]
# Training starts once these providers uploaded (default: every data_provider).
# require_uploads_from = ["hospital-a"]
auto_start = true

[release]
# Who receives the trained weights, sealed to their HPKE key (add-party appends recipients).
recipients = []
# Which metrics may leave with the model: {metrics_hint}
metrics = {metrics}
# Providers whose approval (`cctrain release approve`) the release waits for.
approvals_required_from = []
"""

_CLUSTER = """
[cluster]
# Data-parallel training on this many enclave ranks (rank 0 serves the parties).
ranks = {ranks}
"""


def policy_template(
    scenario: str,
    *,
    dp: bool = False,
    ranks: int = 1,
    name: str = "my-consortium",
    now: _dt.datetime | None = None,
) -> str:
    """The commented TOML template of ``scenario`` (one of :data:`SCENARIOS`)."""
    if scenario not in SCENARIOS:
        raise InputError(f"scenario: got {scenario!r}, want one of {list(SCENARIOS)}")
    if not 1 <= ranks <= 64:
        raise InputError(f"ranks: got {ranks}, want 1..64")
    if not name.strip():
        raise InputError("name: got an empty name")
    now = now or _dt.datetime.now(_dt.timezone.utc)
    expires = (now + _dt.timedelta(days=365)).strftime("%Y-%m-%dT00:00:00Z")
    text = _HEADER.format(scenario=scenario, name=name, expires=expires)
    text += _HOSPITALS_DATA if scenario == "hospitals" else _MODEL_OWNER_DATA
    text += _DP if dp else _NO_DP
    if dp:
        metrics, hint = (
            '["steps"]',
            (
                "under DP only what follows from public values (steps); exact metrics such as "
                "train_loss need release.non_private"
            ),
        )
    else:
        metrics, hint = (
            '["train_loss", "train_accuracy", "steps"]',
            ("train_loss, train_accuracy, steps, samples, val_* (with [validation])"),
        )
    text += _TAIL.format(metrics=metrics, metrics_hint=hint)
    if ranks > 1:
        text += _CLUSTER.format(ranks=ranks)
    return text


# --------------------------------------------------------------------------- add-party


@dataclass(frozen=True)
class PublicKeys:
    """A party's public keys, as ``cctrain keygen`` writes them to ``PARTY.pub.json``."""

    party_id: str
    signing_key: str
    hpke_key: str

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str = "public key file") -> PublicKeys:
        """The keys in a ``PARTY.pub.json`` text; an error names ``where`` and the field."""
        try:
            doc = loads_json(text.decode() if isinstance(text, bytes) else text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{where}: not JSON: {exc}") from None
        if not isinstance(doc, Mapping) or doc.get("type") != PUBLIC_TYPE:
            raise InputError(
                f"{where}: type: got {doc.get('type') if isinstance(doc, Mapping) else doc!r}, "
                f"want {PUBLIC_TYPE!r} (the PARTY.pub.json that cctrain keygen writes)"
            )
        problems = []
        for key, kind in (("signing_key", "ed25519"), ("hpke_key", "x25519")):
            value = doc.get(key)
            try:
                decode_public(value if isinstance(value, str) else "", kind)
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
        pid = doc.get("id")
        if not isinstance(pid, str) or not is_party_id(pid):
            problems.append(f"id: got {pid!r}, want a party id matching {PARTY_ID.pattern}")
        if problems:
            raise InputError(f"{where}: " + "; ".join(problems))
        return cls(str(pid), str(doc["signing_key"]), str(doc["hpke_key"]))


def parse_roles(roles: str | Iterable[str]) -> list[str]:
    """``data_provider,recipient`` (or a list) as a list; unknown or repeated roles refused."""
    items = [r.strip() for r in roles.split(",")] if isinstance(roles, str) else list(roles)
    unknown = [r for r in items if r not in ROLES]
    if unknown or not items:
        raise InputError(
            f"roles: got {','.join(items) or 'none'}, want one or more of {sorted(ROLES)}"
        )
    if len(set(items)) != len(items):
        raise InputError(f"roles: got {','.join(items)}, each role once")
    return items


def add_party(
    text: str, party_id: str, roles: str | Iterable[str], keys: PublicKeys
) -> tuple[str, list[str]]:
    """``text`` (a policy in TOML) with the party appended as a ``[[parties]]`` table, and what
    changed besides, one line each. Comments and layout are kept. A recipient joins
    ``release.recipients``; a model provider becomes ``training.model.provider`` of a package
    model that has none yet. Refuses a party id or signing key already there."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    if not is_party_id(party_id):
        raise InputError(f"party id: got {party_id!r}, want one matching {PARTY_ID.pattern}")
    role_list = parse_roles(roles)
    if keys.party_id != party_id:
        raise InputError(
            f"--pub: the file's id is {keys.party_id!r}, not {party_id!r} (wrong party's keys?)"
        )
    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise PolicyFileError(f"policy is not valid TOML: {exc}") from None
    parties = doc.get("parties")
    if parties is None:
        parties = tomlkit.aot()
        doc.append("parties", parties)
    elif not isinstance(parties, list):
        raise PolicyError("parties: must be an array of [[parties]] tables")
    for existing in parties:
        if not isinstance(existing, Mapping):
            continue
        if existing.get("id") == party_id:
            raise InputError(f"parties: party {party_id!r} is already in the policy")
        if existing.get("signing_key") == keys.signing_key:
            raise InputError(f"parties: party {existing.get('id')!r} already has this signing key")
    entry = tomlkit.table()
    entry.add("id", party_id)
    entry.add("roles", role_list)
    entry.add("signing_key", keys.signing_key)
    if "recipient" in role_list:
        entry.add("hpke_key", keys.hpke_key)
    parties.append(entry)
    changes: list[str] = []
    if "recipient" in role_list:
        release = doc.get("release")
        if isinstance(release, MutableMapping):
            recips = release.get("recipients")
            if recips is None:
                release["recipients"] = [party_id]
                changes.append(f"release.recipients: added {party_id!r}")
            elif isinstance(recips, list) and party_id not in recips:
                recips.append(party_id)
                changes.append(f"release.recipients: added {party_id!r}")
    if "model_provider" in role_list:
        training = doc.get("training")
        model = training.get("model") if isinstance(training, Mapping) else None
        if isinstance(model, MutableMapping) and model.get("name") == "package":
            provider = model.get("provider")
            if not isinstance(provider, str) or provider.startswith("REPLACE"):
                model["provider"] = party_id
                changes.append(f"training.model.provider: set to {party_id!r}")
    out = tomlkit.dumps(doc)
    # A blank line before each appended party, as a person would write it.
    return re.sub(r"(?<=[^\n])\n\[\[parties\]\]", "\n\n[[parties]]", out), changes


def pin_package(text: str, package_sha256: str) -> tuple[str, str]:
    """``text`` (a policy in TOML) with ``training.model.package_sha256`` set to the package's
    hash, and a line saying what it replaced. Only a package model (``name = "package"``)
    takes a pin; comments and layout are kept."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    if not re.fullmatch(r"[0-9a-f]{64}", package_sha256):
        raise InputError(f"package sha256: got {package_sha256!r}, want 64 lowercase hex digits")
    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise PolicyFileError(f"policy is not valid TOML: {exc}") from None
    training = doc.get("training")
    model = training.get("model") if isinstance(training, Mapping) else None
    if not isinstance(model, Mapping) or model.get("name") != "package":
        got = model.get("name") if isinstance(model, Mapping) else None
        raise PolicyError(
            "training.model: a pin needs a package model",
            [
                f"training.model.name: got {got!r}, want 'package' (policy init --scenario model-owner)"
            ],
        )
    before = model.get("package_sha256")
    model["package_sha256"] = package_sha256  # type: ignore[index]
    change = f"training.model.package_sha256: {before!s} -> {package_sha256}"
    return tomlkit.dumps(doc), change


# --------------------------------------------------------------------------- merge


@dataclass(frozen=True)
class MergeResult:
    """What merging brought: ``signed``, the envelope with every signature (``.save(path)``);
    ``status``, who signed and who is missing; ``contributions``, per input, the parties whose
    signature it brought."""

    signed: SignedPolicy
    status: SignatureStatus
    #: per input (in order): the parties whose signature it brought
    contributions: tuple[tuple[str, ...], ...]


def merge_signed(envelopes: Sequence[SignedPolicy], *, names: Sequence[str] = ()) -> MergeResult:
    """One envelope with every signature of ``envelopes``, which must all be over the same
    policy bytes. A signature that does not verify, or is not a party's, is refused, naming
    the input it came from (``names[i]``, default ``#i``)."""
    if not envelopes:
        raise InputError("merge: got no signed policies, want at least one")
    labels = list(names) or [f"#{i}" for i in range(len(envelopes))]
    first = envelopes[0]
    problems: list[str] = []
    for label, sp in zip(labels, envelopes, strict=True):
        if (
            sp.envelope.payload != first.envelope.payload
            or sp.envelope.payload_type != first.envelope.payload_type
        ):
            problems.append(
                f"{label}: signs another policy (digest {sp.digest.hex()}, want "
                f"{first.digest.hex()} as in {labels[0]})"
            )
            continue
        for keyid in sp.status().invalid:
            problems.append(f"{label}: signature of {keyid!r} does not verify or is not a party")
    if problems:
        raise PolicyError("cannot merge these signed policies", problems)
    signatures: dict[str, bytes] = {}
    contributions = []
    for sp in envelopes:
        brought = tuple(k for k in sorted(sp.envelope.signatures) if k not in signatures)
        signatures.update(sp.envelope.signatures)
        contributions.append(brought)
    env = first.envelope
    merged = SignedPolicy(type(env)(env.payload_type, env.payload, signatures), first.policy)
    return MergeResult(merged, merged.status(), tuple(contributions))
