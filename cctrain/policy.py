"""The consortium policy: authored as TOML or JSON, validated strictly, signed by every party.

The signed object is a DSSE envelope over the exact policy bytes; the policy
digest (SHA-256 of those bytes) is what evidence, uploads, receipts and the
release manifest all bind to.  Validation collects every problem, each naming
its field, before refusing.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import hashlib
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import tomllib

from cctrain.crypto.dsse import Envelope
from cctrain.crypto.keys import decode_public, ed25519_public
from cctrain.errors import PolicyError, PolicyFileError
from cctrain.ids import PARTY_ID, is_party_id
from cctrain.untrusted import loads_json

PAYLOAD_TYPES = {
    "toml": "application/vnd.cctrain.policy+toml",
    "json": "application/vnd.cctrain.policy+json",
}
ROLES = frozenset({"data_provider", "model_provider", "recipient"})
SHARD_FORMATS = frozenset({"npz", "csv", "parquet"})
FEATURE_DTYPES = frozenset({"float32", "float64"})
#: ``training.task``: what the labels are and what the model minimises (see
#: :func:`_check_labels`): class indices or vocabulary labels (cross-entropy), or float
#: targets (squared error).
TASKS = ("classification", "regression")
#: ``data.labels.vocabulary``: at most this many labels, each at most this many characters.
MAX_VOCABULARY = 4096
MAX_LABEL_CHARS = 256
#: ``data.parquet.max_row_group_bytes``: the default and the most a policy may allow (one row
#: group is decoded at a time; this bounds what that takes).
DEFAULT_MAX_ROW_GROUP_BYTES = 128 << 20
MAX_ROW_GROUP_BYTES = 1 << 30
MODELS = frozenset({"logreg", "mlp", "cnn", "custom", "package"})
#: ``training.model.max_bytes`` default for a model package (sources + initial weights).
DEFAULT_PACKAGE_MAX_BYTES = 256 << 20
MAX_PACKAGE_BYTES = 16 << 30
OPTIMIZERS = frozenset({"sgd", "adam", "adamw", "package"})
LR_SCHEDULES = frozenset({"constant", "cosine", "linear", "step", "package"})
#: ``training.loss``: the task's own loss, or the model package's per-sample ``loss``.
LOSSES = frozenset({"task", "package"})
#: At most this many ``training.metrics`` (a package's own metrics): each is computed on every
#: training row and, with validation, on every held-out row.
MAX_PACKAGE_METRICS = 16
#: Names the built-in objectives use (a package metric may not shadow them).
BUILTIN_METRIC_NAMES = frozenset({"loss", "accuracy", "mse", "mae"})
ACCOUNTANTS = frozenset({"rdp", "prv"})
NOISE_SOURCES = frozenset({"csprng", "insecure-fast"})
GRAD_SAMPLE_MODES = frozenset({"auto", "hooks", "ghost", "fast"})
RELEASABLE_METRICS = frozenset(
    {
        "train_loss",
        "train_accuracy",
        "train_mse",
        "train_mae",
        "steps",
        "samples",
        "val_loss",
        "val_accuracy",
        "val_mse",
        "val_mae",
    }
)
#: Metrics computed on the validation rows (``[validation]``), at every epoch's end.
VALIDATION_METRICS = frozenset({"val_loss", "val_accuracy", "val_mse", "val_mae"})
#: The metrics only one task computes (``*_loss`` is the task's loss: cross-entropy, or the
#: squared error, which ``*_mse`` repeats under its own name).
TASK_METRICS = {
    "classification": frozenset({"train_accuracy", "val_accuracy"}),
    "regression": frozenset({"train_mse", "train_mae", "val_mse", "val_mae"}),
}
#: What a DP run can release outside its guarantee, each only if ``release.non_private`` names
#: it: metrics computed exactly on the pooled private data (``samples``, the sum of the secret
#: Poisson batch sizes, included), and the per-step loss ``cctrain watch`` streams. ``steps``
#: is not among them: it follows from the public noise, sample rate and budget alone.
NON_PRIVATE_OUTPUTS = frozenset(
    {
        "train_loss",
        "train_accuracy",
        "train_mse",
        "train_mae",
        "samples",
        "progress_loss",
        "val_loss",
        "val_accuracy",
        "val_mse",
        "val_mae",
        # When training stopped: under early stopping, a function of the validation rows.
        "early_stopping",
    }
)
COMMON_REFERENCE_KEYS = frozenset({"measurements", "accepted_tcb_statuses", "accepted_advisories"})
#: Hardware platforms whose launch measurement the policy must pin: without an
#: allow-list, any code on a genuine chip would be trusted with the data.
MUST_PIN_MEASUREMENT = frozenset(
    {"sev-snp", "tdx", "sgx", "arm-cca", "aws-nitro", "azure-snp-vtpm"}
)
#: Platforms whose launch measurement covers only the cloud's firmware (Azure's SNP
#: measurement is the paravisor's): the policy must also pin the PCRs that measure the image.
MUST_PIN_PCRS = frozenset({"azure-snp-vtpm"})
#: ``attestation.gpu``: whether the enclave may (``optional``) or must (``required``) train on
#: attested GPUs, each bound to the CPU evidence's nonce; ``forbidden`` (default): none.
GPU_MODES = ("forbidden", "optional", "required")
GPU_PLATFORM = "nvidia-gpu"
HEX = re.compile(r"^[0-9a-fA-F]*$")


@dataclass(frozen=True)
class Party:
    id: str
    roles: frozenset[str]
    signing_key: str
    hpke_key: str | None
    name: str

    @property
    def is_provider(self) -> bool:
        return "data_provider" in self.roles

    @property
    def is_recipient(self) -> bool:
        return "recipient" in self.roles

    @property
    def is_model_provider(self) -> bool:
        return "model_provider" in self.roles

    @property
    def signing_public_raw(self) -> bytes:
        return decode_public(self.signing_key, "ed25519")


@dataclass(frozen=True)
class Policy:
    """A parsed, checked policy (:func:`parse_policy`): every section normalised, frozen.
    ``raw`` is the exact bytes the parties sign; ``digest`` their SHA-256."""

    raw: bytes
    format: str
    name: str
    expires: _dt.datetime | None
    parties: tuple[Party, ...]
    signature_threshold: int
    attestation: Mapping[str, Any]
    data: Mapping[str, Any]
    training: Mapping[str, Any]
    privacy: Mapping[str, Any]
    start: Mapping[str, Any]
    release: Mapping[str, Any]
    #: What one provider may put into the enclave (see :func:`_check_limits`).
    limits: Mapping[str, Any]
    #: Who holds the state key: ``{"key": "platform"}`` or ``{"key": "consortium",
    #: "threshold": k}`` (see :func:`_check_state`).
    state: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({"key": "platform"}))
    #: Held-out rows (``{}``: none): ``fraction`` or ``parties``, optional ``early_stopping``
    #: (see :func:`_check_validation`).
    validation: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: The enclave ranks training runs on (see :func:`_check_cluster`): ``ranks`` (1: one
    #: enclave), ``timeout_s``, optional ``measurements`` of the ranks other than 0.
    cluster: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({"ranks": 1, "timeout_s": 300})
    )

    @property
    def max_releases(self) -> int:
        """How many releases this policy allows (``release.max_releases``)."""
        return int(self.release["max_releases"])

    @property
    def digest(self) -> bytes:
        """SHA-256 of the policy's exact bytes: what evidence, receipts and manifests bind."""
        return hashlib.sha256(self.raw).digest()

    def party(self, party_id: str) -> Party | None:
        """The party with this id, or None."""
        for p in self.parties:
            if p.id == party_id:
                return p
        return None

    @property
    def providers(self) -> list[str]:
        """The data providers' ids."""
        return [p.id for p in self.parties if p.is_provider]

    @property
    def recipients(self) -> list[str]:
        """The parties the weights are sealed to."""
        return list(self.release["recipients"])

    @property
    def model_package(self) -> Mapping[str, Any] | None:
        """``training.model`` when it names a model owner's package, else None."""
        model: Mapping[str, Any] = self.training["model"]
        return model if model.get("name") == "package" else None

    @property
    def model_provider(self) -> str | None:
        """The party whose package the policy pins (it must upload it before training)."""
        pkg = self.model_package
        return str(pkg["provider"]) if pkg is not None else None

    @property
    def task(self) -> str:
        """``training.task``: ``classification`` or ``regression``."""
        return str(self.training["task"])

    @property
    def num_outputs(self) -> int:
        """The model's outputs: one per class (``num_classes`` or the vocabulary's size), or
        one for a regression target."""
        return num_outputs(self.data)

    def reference_for(self, platform: str) -> Mapping[str, Any]:
        """``attestation.reference`` for ``platform`` (measurements, TCB statuses, ...)."""
        ref: Mapping[str, Any] = self.attestation.get("reference", {}).get(platform, {})
        return ref


# --------------------------------------------------------------------------- validation


def unknown_key_message(key: Any, allowed: Iterable[str]) -> str:
    """``unknown key``, with the closest allowed key when one is near enough to be a typo."""
    if isinstance(key, str):
        close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
        if close:
            return f"unknown key; did you mean {close[0]!r}?"
    return "unknown key"


class _Checker:
    """Walks a parsed document, recording problems as ``field: message``."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, path: str, msg: str) -> None:
        self.problems.append(f"{path}: {msg}")

    def table(
        self,
        doc: Any,
        path: str,
        *,
        required: Sequence[str] = (),
        optional: Sequence[str] = (),
    ) -> dict[str, Any]:
        if not isinstance(doc, Mapping):
            self.add(path, f"must be a table/object, got {type(doc).__name__}")
            return {}
        allowed = set(required) | set(optional)
        for key in doc:
            if key not in allowed:
                self.add(f"{path}.{key}" if path else key, unknown_key_message(key, allowed))
        for key in required:
            if key not in doc:
                self.add(f"{path}.{key}" if path else key, "missing required key")
        return dict(doc)

    def typed(self, value: Any, path: str, kind: type | tuple[type, ...], what: str) -> bool:
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float))
        if kind == (int, float) and isinstance(value, bool):
            ok = False
        if not ok:
            self.add(path, f"must be {what}, got {value!r}")
        return ok

    def positive_int(self, value: Any, path: str) -> None:
        if self.typed(value, path, int, "a positive integer") and value <= 0:
            self.add(path, f"must be a positive integer, got {value}")

    def number(self, value: Any, path: str, check: Callable[[float], bool], what: str) -> None:
        if self.typed(value, path, (int, float), what) and not check(float(value)):
            self.add(path, f"must be {what}, got {value}")

    def choice(self, value: Any, path: str, choices: frozenset[str]) -> None:
        if not isinstance(value, str) or value not in choices:
            self.add(path, f"must be one of {sorted(choices)}, got {value!r}")

    def str_list(self, value: Any, path: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.add(path, f"must be a list of strings, got {value!r}")
            return []
        return list(value)


def _parse_bytes(raw: bytes, fmt: str) -> Any:
    try:
        if fmt == "toml":
            return tomllib.loads(raw.decode("utf-8"))
        return loads_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise PolicyFileError(f"policy is not valid {fmt.upper()}: {exc}") from None


def _check_parties(c: _Checker, doc: Any) -> list[Party]:
    parties: list[Party] = []
    if not isinstance(doc, list) or not doc:
        c.add("parties", "must be a non-empty list of party tables")
        return parties
    seen: set[str] = set()
    seen_keys: dict[str, str] = {}
    for i, entry in enumerate(doc):
        path = f"parties[{i}]"
        t = c.table(
            entry, path, required=("id", "roles", "signing_key"), optional=("hpke_key", "name")
        )
        pid = t.get("id")
        if not isinstance(pid, str) or not is_party_id(pid):
            c.add(f"{path}.id", f"must match {PARTY_ID.pattern}, got {pid!r}")
            continue
        if pid in seen:
            c.add(f"{path}.id", f"duplicate party id {pid!r}")
        seen.add(pid)
        roles = c.str_list(t.get("roles", []), f"{path}.roles")
        if not roles:
            c.add(f"{path}.roles", "must name at least one role")
        for r in roles:
            if r not in ROLES:
                c.add(f"{path}.roles", f"unknown role {r!r} (known: {sorted(ROLES)})")
        sk = t.get("signing_key")
        if isinstance(sk, str):
            try:
                decode_public(sk, "ed25519")
            except ValueError as exc:
                c.add(f"{path}.signing_key", str(exc))
            if sk in seen_keys:
                c.add(f"{path}.signing_key", f"same key as party {seen_keys[sk]!r}")
            seen_keys[sk] = pid
        else:
            c.add(f"{path}.signing_key", "must be a string 'ed25519:<base64>'")
        hk = t.get("hpke_key")
        if hk is not None:
            if not isinstance(hk, str):
                c.add(f"{path}.hpke_key", "must be a string 'x25519:<base64>'")
            else:
                try:
                    decode_public(hk, "x25519")
                except ValueError as exc:
                    c.add(f"{path}.hpke_key", str(exc))
        if "recipient" in roles and hk is None:
            c.add(f"{path}.hpke_key", f"recipient {pid!r} has no HPKE key to seal the release to")
        name = t.get("name", pid)
        parties.append(
            Party(
                id=pid,
                roles=frozenset(roles),
                signing_key=sk if isinstance(sk, str) else "",
                hpke_key=hk if isinstance(hk, str) else None,
                name=str(name),
            )
        )
    return parties


def _check_attestation(c: _Checker, doc: Any) -> dict[str, Any]:
    from cctrain.attestation.base import get_platform, registered_platforms

    t = c.table(
        doc,
        "attestation",
        required=("platforms",),
        optional=("allow_simulated", "allow_debug", "reference", "gpu"),
    )
    known = set(registered_platforms())
    gpu = t.setdefault("gpu", "forbidden")
    if gpu not in GPU_MODES:
        c.add("attestation.gpu", f"got {gpu!r}, want one of {list(GPU_MODES)}")
    platforms = c.str_list(t.get("platforms", []), "attestation.platforms")
    if not platforms and "platforms" in t:
        c.add("attestation.platforms", "must accept at least one platform")
    for p in platforms:
        if p not in known:
            c.add("attestation.platforms", f"unknown platform {p!r} (known: {sorted(known)})")
    allow_sim = t.setdefault("allow_simulated", False)
    c.typed(allow_sim, "attestation.allow_simulated", bool, "true or false")
    c.typed(t.setdefault("allow_debug", False), "attestation.allow_debug", bool, "true or false")
    if "simulated" in platforms and allow_sim is not True:
        c.add(
            "attestation.allow_simulated",
            "platforms lists 'simulated' but allow_simulated is not true",
        )
    ref = t.setdefault("reference", {})
    if not isinstance(ref, Mapping):
        c.add("attestation.reference", "must be a table of platform → reference values")
        return t
    for plat in platforms:
        if plat in MUST_PIN_MEASUREMENT and not (
            isinstance(ref.get(plat), Mapping) and ref[plat].get("measurements")
        ):
            c.add(
                f"attestation.reference.{plat}.measurements",
                f"platform {plat!r} is accepted but no launch measurement is pinned",
            )
        if plat in MUST_PIN_PCRS and not (
            isinstance(ref.get(plat), Mapping) and ref[plat].get("pcrs")
        ):
            c.add(
                f"attestation.reference.{plat}.pcrs",
                f"platform {plat!r} is accepted but no PCR is pinned (its measurement covers "
                "only the cloud's paravisor, the PCRs measure the image)",
            )
    for plat, values in ref.items():
        path = f"attestation.reference.{plat}"
        if plat not in known:
            c.add(path, f"unknown platform {plat!r}")
            continue
        if plat == GPU_PLATFORM:
            if gpu == "forbidden":
                c.add(path, 'GPU reference values, but attestation.gpu = "forbidden"')
        elif plat not in platforms:
            c.add(
                path, f"reference values for {plat!r}, which attestation.platforms does not accept"
            )
        allowed = COMMON_REFERENCE_KEYS | get_platform(plat).reference_keys
        vt = c.table(values, path, optional=sorted(allowed))
        for m in c.str_list(vt.get("measurements", []), f"{path}.measurements"):
            if not HEX.match(m) or len(m) % 2:
                c.add(f"{path}.measurements", f"not a hex string: {m!r}")
    return t


def _check_data(c: _Checker, doc: Any) -> dict[str, Any]:
    t = c.table(
        doc,
        "data",
        required=("features", "labels", "max_rows", "max_bytes"),
        optional=("formats", "min_rows", "csv", "parquet"),
    )
    formats = c.str_list(t.setdefault("formats", ["npz", "csv"]), "data.formats")
    for f in formats:
        c.choice(f, "data.formats", SHARD_FORMATS)
    ft = c.table(t.get("features", {}), "data.features", required=("shape", "dtype"))
    shape = ft.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        c.add(
            "data.features.shape", f"must be a non-empty list of positive integers, got {shape!r}"
        )
    if "dtype" in ft:
        c.choice(ft["dtype"], "data.features.dtype", FEATURE_DTYPES)
    # data.labels depends on training.task: checked by _check_labels, after the training table.
    for key in ("max_rows", "max_bytes"):
        if key in t:
            c.positive_int(t[key], f"data.{key}")
    t.setdefault("min_rows", 1)
    c.positive_int(t["min_rows"], "data.min_rows")
    if isinstance(t.get("max_rows"), int) and isinstance(t["min_rows"], int):
        if t["min_rows"] > t["max_rows"]:
            c.add("data.min_rows", f"{t['min_rows']} exceeds data.max_rows {t['max_rows']}")
    csv = c.table(
        t.setdefault("csv", {}),
        "data.csv",
        optional=("header", "label_column", "feature_columns", "ignore_extra_columns"),
    )
    csv.setdefault("header", True)
    csv.setdefault("label_column", "label")
    c.typed(csv["header"], "data.csv.header", bool, "true or false")
    c.typed(csv["label_column"], "data.csv.label_column", str, "a column name")
    if "features" in t and isinstance(shape, list) and len(shape) != 1 and "csv" in formats:
        c.add("data.formats", "csv shards need 1-D features; use npz for shaped features")
    _check_csv_columns(c, csv, shape)
    t["csv"] = csv
    if "parquet" in formats or "parquet" in t:
        t["parquet"] = _check_parquet(c, t.get("parquet", {}), shape)
    return t


def _check_parquet(c: _Checker, doc: Any, shape: Any) -> dict[str, Any]:
    """``data.parquet``: the named, typed columns of a Parquet shard (``label_column``,
    ``feature_columns``, ``ignore_extra_columns``: as in ``data.csv``) and the bound on one
    row group, which is all a shard's reader decodes at a time."""
    t = c.table(
        doc,
        "data.parquet",
        optional=("label_column", "feature_columns", "ignore_extra_columns", "max_row_group_bytes"),
    )
    t.setdefault("label_column", "label")
    c.typed(t["label_column"], "data.parquet.label_column", str, "a column name")
    if isinstance(t["label_column"], str) and not t["label_column"]:
        c.add("data.parquet.label_column", "must not be empty")
    if isinstance(shape, list) and len(shape) != 1:
        c.add("data.formats", "parquet shards need 1-D features; use npz for shaped features")
    _check_csv_columns(c, t, shape, table="data.parquet")
    mb = t.setdefault("max_row_group_bytes", DEFAULT_MAX_ROW_GROUP_BYTES)
    if c.typed(mb, "data.parquet.max_row_group_bytes", int, "an integer") and not (
        1 <= mb <= MAX_ROW_GROUP_BYTES
    ):
        c.add(
            "data.parquet.max_row_group_bytes",
            f"must be in [1, {MAX_ROW_GROUP_BYTES}], got {mb}",
        )
    return t


def _check_labels(c: _Checker, data: dict[str, Any], task: Any) -> None:
    """``data.labels``, which the task decides:

    * classification: ``{ num_classes = k }`` (integer labels in ``[0, k)``) or
      ``{ vocabulary = ["benign", "malignant"] }`` (text labels, each mapped to its index);
    * regression: ``{ dtype = "float32" }`` (the default): float targets, which train as
      float32 (a shard may hold float32 or float64; each must be finite in float32).
    """
    if "labels" not in data:
        return  # reported missing already
    path = "data.labels"
    lt = c.table(data["labels"], path, optional=("num_classes", "vocabulary", "dtype"))
    if task == "regression":
        for key in ("num_classes", "vocabulary"):
            if key in lt:
                c.add(f"{path}.{key}", 'a regression (training.task = "regression") has no classes')
        dtype = lt.setdefault("dtype", "float32")
        if dtype != "float32":
            c.add(
                f"{path}.dtype",
                f"got {dtype!r}, want 'float32' (targets train as float32; a shard may hold "
                "float32 or float64)",
            )
    elif task == "classification":
        if "dtype" in lt:
            c.add(f"{path}.dtype", 'float targets need training.task = "regression"')
        if ("num_classes" in lt) == ("vocabulary" in lt):
            c.add(
                path, "give exactly one of num_classes (integer labels) or vocabulary (text labels)"
            )
        nc: Any = lt.get("num_classes")
        if "num_classes" in lt and c.typed(nc, f"{path}.num_classes", int, "an integer ≥ 2"):
            if nc < 2:
                c.add(f"{path}.num_classes", f"must be ≥ 2, got {nc}")
        if "vocabulary" in lt:
            _check_vocabulary(c, lt["vocabulary"], f"{path}.vocabulary")
    data["labels"] = lt


def _check_vocabulary(c: _Checker, value: Any, path: str) -> None:
    """Labels as text: distinct, non-empty, at most MAX_LABEL_CHARS characters each, no control
    characters (a NUL is the padding of a fixed-width string) and no surrounding spaces (a
    label must read the same in every format)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        c.add(path, "must be a list of strings")
        return
    if len(value) < 2:
        c.add(path, f"must name at least 2 labels, got {len(value)}")
    if len(value) > MAX_VOCABULARY:
        c.add(path, f"names {len(value)} labels, at most {MAX_VOCABULARY} are allowed")
    for i, v in enumerate(value[:MAX_VOCABULARY]):
        if not v:
            c.add(f"{path}[{i}]", "must not be empty")
        elif len(v) > MAX_LABEL_CHARS:
            c.add(f"{path}[{i}]", f"{len(v)} characters, at most {MAX_LABEL_CHARS}")
        elif v != v.strip() or any(unicodedata.category(ch) == "Cc" for ch in v):
            c.add(f"{path}[{i}]", f"{v!r}: no control characters, no leading or trailing space")
    twice = sorted({v for v in value if value.count(v) > 1})
    if twice:
        c.add(path, f"names {twice[:5]} more than once")


def num_outputs(data: Mapping[str, Any]) -> int:
    """The model's outputs under the validated ``data`` table: one per class, or one for a
    regression target."""
    labels = data["labels"]
    if "vocabulary" in labels:
        return len(labels["vocabulary"])
    if "num_classes" in labels:
        return int(labels["num_classes"])
    return 1


def gpu_allowed(policy: Policy) -> bool:
    """Whether training may put data on a GPU: only one every party's verification required
    to be attested (``attestation.gpu = "required"``: each GPU's evidence verified and bound
    to the CPU evidence), or any on a simulated-only policy (which protects nothing anyway).

    A GPU outside the TEE sees the rows and the gradients in clear. ``"optional"`` lets a
    party accept an enclave that shows no GPU evidence, so under it (as under ``"forbidden"``)
    ``training.device = "auto"`` means the CPU, and ``"cuda"`` is a policy error."""
    if list(policy.attestation.get("platforms", ())) == ["simulated"]:
        return True
    return bool(policy.attestation.get("gpu", "forbidden") == "required")


def _check_csv_columns(
    c: _Checker, csv: dict[str, Any], shape: Any, *, table: str = "data.csv"
) -> None:
    """``feature_columns``: the columns that are the features, in the schema's order
    (matched by name); ``ignore_extra_columns``: whether other columns are allowed. The same
    keys mean the same for CSV (``data.csv``) and Parquet (``data.parquet``)."""
    if "ignore_extra_columns" in csv:
        c.typed(csv["ignore_extra_columns"], f"{table}.ignore_extra_columns", bool, "true or false")
        if "feature_columns" not in csv:
            c.add(f"{table}.ignore_extra_columns", f"applies only with {table}.feature_columns")
    if "feature_columns" not in csv:
        return
    path, names = f"{table}.feature_columns", csv["feature_columns"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        c.add(path, f"must be a non-empty list of column names, got {names!r}")
        return
    if not all(names):
        c.add(path, "column names must not be empty")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        c.add(path, f"names {twice} more than once")
    label = csv.get("label_column")
    if label in names:
        c.add(path, f"includes the label column {label!r} ({table}.label_column)")
    if isinstance(shape, list) and len(shape) == 1 and isinstance(shape[0], int):
        if len(names) != shape[0]:
            c.add(path, f"names {len(names)} columns, data.features.shape wants {shape[0]}")


def _check_training(c: _Checker, doc: Any) -> dict[str, Any]:
    t = c.table(
        doc,
        "training",
        required=("model", "optimizer", "epochs", "batch_size"),
        optional=("task", "seed", "lr_schedule", "device", "loss", "metrics"),
    )
    t.setdefault("device", "cpu")
    c.choice(t["device"], "training.device", frozenset({"auto", "cpu", "cuda"}))
    t.setdefault("task", "classification")
    c.choice(t["task"], "training.task", frozenset(TASKS))
    t.setdefault("seed", 0)
    c.typed(t["seed"], "training.seed", int, "an integer")
    m = c.table(
        t.get("model", {}),
        "training.model",
        required=("name",),
        optional=(
            "params",
            "source_sha256",
            "entry",
            "package_sha256",
            "provider",
            "module",
            "max_bytes",
        ),
    )
    if "name" in m:
        c.choice(m["name"], "training.model.name", MODELS)
    m.setdefault("params", {})
    if not isinstance(m["params"], Mapping):
        c.add("training.model.params", "must be a table")
    package_keys = ("package_sha256", "provider", "module", "max_bytes")
    if m.get("name") == "package":
        sha = m.get("package_sha256")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            c.add(
                "training.model.package_sha256",
                "a model package needs the SHA-256 (64 lowercase hex) of its exact bytes "
                "(`cctrain model package DIR` prints it)",
            )
        if not isinstance(m.get("provider"), str):
            c.add("training.model.provider", "must name the model_provider party")
        m.setdefault("module", "plan")
        if not isinstance(m["module"], str) or not re.fullmatch(
            r"[A-Za-z_][A-Za-z0-9_]{0,63}", m["module"]
        ):
            c.add("training.model.module", f"must be a module name, got {m['module']!r}")
        m.setdefault("entry", "build_model")
        m.setdefault("max_bytes", DEFAULT_PACKAGE_MAX_BYTES)
        mb = m["max_bytes"]
        if c.typed(mb, "training.model.max_bytes", int, "an integer") and not (
            0 < mb <= MAX_PACKAGE_BYTES
        ):
            c.add("training.model.max_bytes", f"must be in [1, {MAX_PACKAGE_BYTES}], got {mb}")
    elif any(k in m for k in package_keys):
        c.add("training.model", f"{'/'.join(package_keys)} apply only to name = 'package'")
    if "entry" in m and not isinstance(m["entry"], str):
        c.add("training.model.entry", f"must be a function name, got {m['entry']!r}")
    if m.get("name") == "custom":
        sha = m.get("source_sha256")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            c.add(
                "training.model.source_sha256",
                "custom model needs the SHA-256 (64 lowercase hex) of its source",
            )
        m.setdefault("entry", "build_model")
    elif "source_sha256" in m or ("entry" in m and m.get("name") != "package"):
        c.add("training.model", "source_sha256/entry apply only to name = 'custom' or 'package'")
    o = c.table(
        t.get("optimizer", {}),
        "training.optimizer",
        required=("name", "lr"),
        optional=("momentum", "weight_decay", "betas", "eps", "nesterov", "params"),
    )
    if "name" in o:
        c.choice(o["name"], "training.optimizer.name", OPTIMIZERS)
        if o["name"] == "package" and m.get("name") != "package":
            c.add("training.optimizer.name", "'package' needs training.model.name = 'package'")
    if "params" in o and o.get("name") != "package":
        c.add("training.optimizer.params", "applies only to name = 'package'")
    _check_schedule(c, t, m)
    _check_package_objective(c, t, m)
    if "lr" in o:
        c.number(o["lr"], "training.optimizer.lr", lambda v: v > 0, "a positive number")
    for key in ("epochs", "batch_size"):
        if key in t:
            c.positive_int(t[key], f"training.{key}")
    t["model"], t["optimizer"] = m, o
    return t


def _check_package_objective(c: _Checker, t: dict[str, Any], model: Mapping[str, Any]) -> None:
    """``training.loss = "package"`` and ``training.metrics = { name = "max" | "min" }``: the
    package's per-sample loss and its own metrics (named here, so every party signs what can
    be released and which way early stopping reads them)."""
    t.setdefault("loss", "task")
    c.choice(t["loss"], "training.loss", LOSSES)
    if t["loss"] == "package" and model.get("name") != "package":
        c.add("training.loss", "'package' needs training.model.name = 'package'")
    metrics = t.setdefault("metrics", {})
    if not isinstance(metrics, Mapping):
        c.add("training.metrics", "must be a table of metric name = 'max' | 'min'")
        t["metrics"] = {}
        return
    if metrics and model.get("name") != "package":
        c.add("training.metrics", "a package's own metrics need training.model.name = 'package'")
    if len(metrics) > MAX_PACKAGE_METRICS:
        c.add("training.metrics", f"at most {MAX_PACKAGE_METRICS} metrics, got {len(metrics)}")
    for name, direction in metrics.items():
        path = f"training.metrics.{name}"
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
            c.add(path, "a metric name is lowercase letters, digits and _ (at most 32)")
        elif name in BUILTIN_METRIC_NAMES:
            c.add(path, f"{name!r} is a built-in metric: name the package's own another way")
        if direction not in ("max", "min"):
            c.add(path, f"got {direction!r}, want 'max' (larger is better) or 'min'")


def package_metrics(training: Mapping[str, Any]) -> dict[str, str]:
    """The package's own metrics the policy names, each with its direction ('max' | 'min')."""
    return {str(k): str(v) for k, v in (training.get("metrics") or {}).items()}


def metric_direction(training: Mapping[str, Any], metric: str) -> str:
    """'max' when a larger ``metric`` (``val_accuracy``, a package's ``val_f1``) is better."""
    if metric in EARLY_STOPPING_METRICS:
        return EARLY_STOPPING_METRICS[metric]
    return package_metrics(training)[metric.removeprefix("val_").removeprefix("train_")]


def _package_metric_outputs(training: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """(every releasable name of the package's metrics, those computed on validation rows)."""
    names = package_metrics(training)
    val = {f"val_{n}" for n in names}
    return {f"train_{n}" for n in names} | val, val


def _check_schedule(c: _Checker, t: dict[str, Any], model: Mapping[str, Any]) -> None:
    if "lr_schedule" not in t:
        return
    s = c.table(
        t["lr_schedule"],
        "training.lr_schedule",
        required=("name",),
        optional=("warmup_steps", "min_lr_ratio", "step_size", "gamma"),
    )
    name = s.get("name")
    c.choice(name, "training.lr_schedule.name", LR_SCHEDULES)
    if name == "package" and model.get("name") != "package":
        c.add("training.lr_schedule.name", "'package' needs training.model.name = 'package'")
    if name == "package" and set(s) - {"name"}:
        c.add("training.lr_schedule", "a package's schedule takes no other keys")
    if "warmup_steps" in s:
        if c.typed(s["warmup_steps"], "training.lr_schedule.warmup_steps", int, "an integer"):
            if s["warmup_steps"] < 0:
                c.add("training.lr_schedule.warmup_steps", "must be >= 0")
    if "min_lr_ratio" in s:
        if name not in ("cosine", "linear"):
            c.add("training.lr_schedule.min_lr_ratio", "applies to cosine and linear only")
        c.number(
            s["min_lr_ratio"],
            "training.lr_schedule.min_lr_ratio",
            lambda v: 0 <= v <= 1,
            "in [0, 1]",
        )
    if name == "step":
        if "step_size" not in s:
            c.add("training.lr_schedule.step_size", "missing: required for name = 'step'")
        else:
            c.positive_int(s["step_size"], "training.lr_schedule.step_size")
        if "gamma" in s:
            c.number(s["gamma"], "training.lr_schedule.gamma", lambda v: 0 < v <= 1, "in (0, 1]")
    else:
        for key in ("step_size", "gamma"):
            if key in s:
                c.add(f"training.lr_schedule.{key}", "applies to name = 'step' only")
    t["lr_schedule"] = s


def _check_model_owner(
    c: _Checker, training: Mapping[str, Any], parties: list[Party], *, simulated_only: bool
) -> None:
    """A package names its model_provider; that role exists only for a package; host-side
    custom model code only where nothing is protected anyway (the simulated platform)."""
    model = training.get("model")
    if not isinstance(model, Mapping):
        return
    owners = [p.id for p in parties if p.is_model_provider]
    name = model.get("name")
    if name == "package":
        provider = model.get("provider")
        by_id = {p.id: p for p in parties}
        if isinstance(provider, str):
            party = by_id.get(provider)
            if party is None:
                c.add("training.model.provider", f"{provider!r} is not a party of this policy")
            elif not party.is_model_provider:
                c.add(
                    "training.model.provider",
                    f"{provider!r} does not have the 'model_provider' role",
                )
        for pid in owners:
            if pid != provider:
                c.add(
                    "parties",
                    f"{pid!r} has the 'model_provider' role, but the package is "
                    f"training.model.provider = {provider!r}",
                )
    elif owners:
        c.add(
            "parties",
            f"{', '.join(repr(o) for o in owners)} has the 'model_provider' role, but "
            "training.model.name is not 'package'",
        )
    if name == "custom" and not simulated_only:
        c.add(
            "training.model.name",
            "'custom' model code is read from the host's disk in plain text (the operator "
            "reads it) and is allowed only on the simulated platform: use name = 'package' "
            "and a model_provider party, who uploads it to the attested enclave",
        )


def _check_privacy(c: _Checker, doc: Any, *, simulated_only: bool) -> dict[str, Any]:
    t = c.table(
        doc,
        "privacy",
        required=("enabled",),
        optional=(
            "target_epsilon",
            "delta",
            "max_grad_norm",
            "accountant",
            "noise_source",
            "grad_sample_mode",
        ),
    )
    enabled = t.get("enabled")
    c.typed(enabled, "privacy.enabled", bool, "true or false")
    if enabled is not True:
        return t
    for key in ("target_epsilon", "delta", "max_grad_norm"):
        if key not in t:
            c.add(f"privacy.{key}", "missing: required when privacy.enabled = true")
    if "target_epsilon" in t:
        c.number(
            t["target_epsilon"], "privacy.target_epsilon", lambda v: 0 < v <= 100, "in (0, 100]"
        )
    if "delta" in t:
        c.number(t["delta"], "privacy.delta", lambda v: 0 < v < 1, "in (0, 1)")
    if "max_grad_norm" in t:
        c.number(t["max_grad_norm"], "privacy.max_grad_norm", lambda v: v > 0, "a positive number")
    t.setdefault("accountant", "rdp")
    c.choice(t["accountant"], "privacy.accountant", ACCOUNTANTS)
    t.setdefault("noise_source", "csprng")
    c.choice(t["noise_source"], "privacy.noise_source", NOISE_SOURCES)
    t.setdefault("grad_sample_mode", "auto")
    c.choice(t["grad_sample_mode"], "privacy.grad_sample_mode", GRAD_SAMPLE_MODES)
    if t["noise_source"] == "insecure-fast" and not simulated_only:
        c.add(
            "privacy.noise_source",
            "'insecure-fast' noise is allowed only when attestation.platforms is ['simulated']",
        )
    return t


#: The most shards one run may accept, all providers together (each is listed in the start
#: entry and, with its receipt, in the manifest: both must fit a journal entry).
MAX_SHARDS = 2048
#: Defaults of the ``[limits]`` table: a provider's share of the enclave's disk and streams.
DEFAULT_SHARDS_PER_PROVIDER = 8
DEFAULT_CONCURRENT_UPLOADS_PER_PROVIDER = 2


def _check_limits(c: _Checker, doc: Any, data: Mapping[str, Any]) -> dict[str, Any]:
    """What one provider may put into the enclave. Every provider is a possible adversary of
    the others: without a bound, one fills the host's disk or holds every upload slot.

    * ``shards_per_provider``: accepted shards per provider (default 8);
    * ``bytes_per_provider``: plaintext bytes per provider, accepted plus in flight
      (default ``shards_per_provider`` × ``data.max_bytes``);
    * ``concurrent_uploads_per_provider``: upload streams open at once (default 2);
    * ``withdrawals_per_provider``: shards a provider may withdraw in one run (default
      ``shards_per_provider``): each withdrawal frees a slot for another upload, and each
      upload and withdrawal is a journal entry every party and restart replays, so without a
      bound one provider could grow the journal until nobody can read it;
    * ``allow_duplicate_shards``: accept a shard whose bytes (plaintext commitment) equal one
      the same provider already uploaded (default false: the same rows counted twice weigh
      double in training, and under DP a row in k shards needs k× the noise).
    """
    t = c.table(
        doc,
        "limits",
        optional=(
            "shards_per_provider",
            "bytes_per_provider",
            "concurrent_uploads_per_provider",
            "withdrawals_per_provider",
            "allow_duplicate_shards",
        ),
    )
    shards = t.setdefault("shards_per_provider", DEFAULT_SHARDS_PER_PROVIDER)
    c.positive_int(shards, "limits.shards_per_provider")
    max_bytes = data.get("max_bytes")
    if isinstance(shards, int) and isinstance(max_bytes, int):
        t.setdefault("bytes_per_provider", shards * max_bytes)
    if "bytes_per_provider" in t:
        c.positive_int(t["bytes_per_provider"], "limits.bytes_per_provider")
    c.positive_int(
        t.setdefault("concurrent_uploads_per_provider", DEFAULT_CONCURRENT_UPLOADS_PER_PROVIDER),
        "limits.concurrent_uploads_per_provider",
    )
    if isinstance(shards, int):
        c.positive_int(
            t.setdefault("withdrawals_per_provider", shards), "limits.withdrawals_per_provider"
        )
    c.typed(
        t.setdefault("allow_duplicate_shards", False),
        "limits.allow_duplicate_shards",
        bool,
        "true or false",
    )
    return t


def _check_start(c: _Checker, doc: Any, providers: list[str]) -> dict[str, Any]:
    t = c.table(doc, "start", optional=("require_uploads_from", "auto_start"))
    req = c.str_list(
        t.setdefault("require_uploads_from", list(providers)), "start.require_uploads_from"
    )
    for pid in req:
        if pid not in providers:
            c.add("start.require_uploads_from", f"{pid!r} is not a data_provider of this policy")
    if not req:
        c.add("start.require_uploads_from", "must name at least one data provider")
    c.typed(t.setdefault("auto_start", True), "start.auto_start", bool, "true or false")
    return t


def _check_release(
    c: _Checker, doc: Any, parties: list[Party], training: Mapping[str, Any]
) -> dict[str, Any]:
    t = c.table(
        doc,
        "release",
        required=("recipients",),
        optional=("metrics", "approvals_required_from", "non_private", "max_releases"),
    )
    by_id = {p.id: p for p in parties}
    recips = c.str_list(t.get("recipients", []), "release.recipients")
    if "recipients" in t and not recips:
        c.add("release.recipients", "must name at least one recipient")
    for pid in recips:
        p = by_id.get(pid)
        if p is None:
            c.add("release.recipients", f"{pid!r} is not a party of this policy")
        elif not p.is_recipient:
            c.add("release.recipients", f"{pid!r} does not have the 'recipient' role")
    own, _ = _package_metric_outputs(training)
    for m in c.str_list(t.setdefault("metrics", []), "release.metrics"):
        c.choice(m, "release.metrics", RELEASABLE_METRICS | own)
    for m in c.str_list(t.setdefault("non_private", []), "release.non_private"):
        c.choice(m, "release.non_private", NON_PRIVATE_OUTPUTS | own)
    for pid in c.str_list(
        t.setdefault("approvals_required_from", []), "release.approvals_required_from"
    ):
        p = by_id.get(pid)
        if p is None or not p.is_provider:
            c.add(
                "release.approvals_required_from", f"{pid!r} is not a data_provider of this policy"
            )
    mr = t.setdefault("max_releases", 1)
    if c.typed(mr, "release.max_releases", int, "an integer") and not 1 <= mr <= 1000:
        c.add("release.max_releases", f"must be between 1 and 1000, got {mr}")
    return t


#: SLIP-39 splits a secret into at most 16 groups: one share per party.
MAX_SHARE_HOLDERS = 16
STATE_KEY_MODES = frozenset({"platform", "consortium"})


def _check_state(c: _Checker, doc: Any, parties: list[Party]) -> dict[str, Any]:
    """``[state]``: who holds the key the enclave's state is sealed under.

    ``platform`` (default): derived from the TEE's sealing key. ``consortium``: made in the
    enclave at genesis, split ``threshold``-of-n among every party of the policy (each needs
    an ``hpke_key``); after a restart the enclave stays locked until ``threshold`` parties
    return their shares. Required on platforms without a sealing key (TDX).
    """
    t = c.table(doc, "state", optional=("key", "threshold"))
    mode = t.setdefault("key", "platform")
    c.choice(mode, "state.key", STATE_KEY_MODES)
    if mode != "consortium":
        if "threshold" in t:
            c.add("state.threshold", "only a consortium-held key has a threshold")
        return t
    n = len(parties)
    if n > MAX_SHARE_HOLDERS:
        c.add("state.key", f"a consortium key is shared among at most {MAX_SHARE_HOLDERS} parties")
    k = t.setdefault("threshold", n // 2 + 1)
    if c.typed(k, "state.threshold", int, "an integer") and not 1 <= k <= max(n, 1):
        c.add("state.threshold", f"must be between 1 and the {n} parties, got {k}")
    for p in parties:
        if p.hpke_key is None:
            c.add(
                "state.key",
                f"party {p.id!r} has no hpke_key: with a consortium key every party holds a "
                "share sealed to its HPKE key",
            )
    return t


EARLY_STOPPING_METRICS = {
    "val_loss": "min",
    "val_accuracy": "max",
    "val_mse": "min",
    "val_mae": "min",
}


def _check_task_metrics(
    c: _Checker, task: Any, release: Mapping[str, Any], validation: Mapping[str, Any]
) -> None:
    """Released metrics and the early-stopping metric must be ones the task computes."""
    if task not in TASK_METRICS:
        return
    foreign = set().union(*(m for t, m in TASK_METRICS.items() if t != task))
    for m in release.get("metrics") or ():
        if m in foreign:
            c.add("release.metrics", f"{m!r} is not a metric of training.task = {task!r}")
    es = validation.get("early_stopping")
    if isinstance(es, Mapping) and es.get("metric") in foreign:
        c.add(
            "validation.early_stopping.metric",
            f"{es['metric']!r} is not a metric of training.task = {task!r}",
        )


def _check_validation(
    c: _Checker,
    doc: Any,
    providers: list[str],
    release: Mapping[str, Any],
    privacy: Mapping[str, Any],
    training: Mapping[str, Any],
) -> dict[str, Any]:
    """``[validation]``: rows held out of training, scored at every epoch's end.

    ``fraction`` (of the pooled rows, chosen by the public ``training.seed``) or ``parties``
    (every shard of these data providers); ``early_stopping = { metric, patience,
    min_delta }`` stops after ``patience`` epochs without improvement. The validation metrics
    and, under DP, the stopping point are exact functions of private rows: under DP each must
    be opted in by ``release.non_private``.
    """
    t = c.table(doc, "validation", optional=("fraction", "parties", "early_stopping"))
    metrics = set(release.get("metrics") or ())
    _, own_val = _package_metric_outputs(training)
    if not t:
        for m in sorted(metrics & (VALIDATION_METRICS | own_val)):
            c.add("release.metrics", f"{m!r} needs a [validation] table (no rows are held out)")
        return t
    if ("fraction" in t) == ("parties" in t):
        c.add("validation", "give exactly one of fraction or parties")
    if "fraction" in t:
        c.number(t["fraction"], "validation.fraction", lambda v: 0 < v <= 0.5, "in (0, 0.5]")
    if "parties" in t:
        names = c.str_list(t["parties"], "validation.parties")
        for pid in names:
            if pid not in providers:
                c.add("validation.parties", f"{pid!r} is not a data_provider of this policy")
        if names and set(providers) <= set(names):
            c.add("validation.parties", "would hold out every provider: nothing left to train on")
        if not names:
            c.add("validation.parties", "must name at least one data provider")
    if "early_stopping" in t:
        es = c.table(
            t["early_stopping"],
            "validation.early_stopping",
            required=("metric",),
            optional=("patience", "min_delta"),
        )
        if "metric" in es:
            c.choice(
                es["metric"],
                "validation.early_stopping.metric",
                frozenset(EARLY_STOPPING_METRICS) | own_val,
            )
        c.positive_int(es.setdefault("patience", 3), "validation.early_stopping.patience")
        c.number(
            es.setdefault("min_delta", 0.0),
            "validation.early_stopping.min_delta",
            lambda v: v >= 0,
            "a number >= 0",
        )
        t["early_stopping"] = es
        if privacy.get("enabled") is True and "early_stopping" not in set(
            release.get("non_private") or ()
        ):
            c.add(
                "validation.early_stopping",
                "under DP, when training stops is an exact function of the validation rows: "
                "list 'early_stopping' in release.non_private to allow it",
            )
    return t


MAX_RANKS = 64


def _check_cluster(
    c: _Checker,
    doc: Any,
    att: Mapping[str, Any],
    training: Mapping[str, Any],
    privacy: Mapping[str, Any],
) -> dict[str, Any]:
    """``[cluster]``: ``ranks`` enclaves train data-parallel (rank 0 serves the parties and
    ingests; the others get their rows from it over attested, encrypted links);
    ``measurements``: the launch measurements accepted for ranks 1.. (default: rank 0's,
    ``attestation.reference``); ``timeout_s``: how long a rank waits for the others."""
    t = c.table(doc, "cluster", optional=("ranks", "measurements", "timeout_s"))
    ranks = t.setdefault("ranks", 1)
    if c.typed(ranks, "cluster.ranks", int, "an integer") and not 1 <= ranks <= MAX_RANKS:
        c.add("cluster.ranks", f"must be in [1, {MAX_RANKS}], got {ranks}")
    timeout = t.setdefault("timeout_s", 300)
    c.number(timeout, "cluster.timeout_s", lambda v: 1 <= v <= 86_400, "in [1, 86400] seconds")
    if "measurements" in t:
        ms = c.str_list(t["measurements"], "cluster.measurements")
        for m in ms:
            if not re.fullmatch(r"(?:[0-9a-f]{2})+", m):
                c.add("cluster.measurements", f"{m!r} is not lowercase hex")
        if not ms:
            c.add("cluster.measurements", "must name at least one measurement (or leave it out)")
    if isinstance(ranks, int) and ranks > 1:
        if training.get("device", "cpu") != "cpu":
            c.add("cluster.ranks", "more than one rank trains on the CPU only (training.device)")
        mode = privacy.get("grad_sample_mode", "auto")
        if privacy.get("enabled") is True and mode not in ("auto", "fast"):
            c.add(
                "cluster.ranks",
                f"more than one rank clips per-sample gradients with grad_sample_mode 'fast' "
                f"only, got {mode!r}",
            )
    return t


def split_rows(policy: Policy, party_rows: Sequence[tuple[str, int]]) -> tuple[int, int]:
    """(training rows, validation rows) of a run on shards with these (party, rows): what the
    trainer splits and every verifier recomputes (the DP certificate's sample rate rests on
    the training rows)."""
    total = sum(r for _, r in party_rows)
    v = policy.validation
    if "parties" in v:
        held = set(v["parties"])
        val = sum(r for p, r in party_rows if p in held)
        return total - val, val
    if "fraction" in v:
        val = min(max(1, math.floor(total * float(v["fraction"]))), max(total - 1, 0))
        return total - val, val
    return total, 0


def non_private_outputs(policy: Policy) -> list[str]:
    """What a run under ``policy`` releases outside a DP guarantee, as its manifest lists it.

    With DP: the opted-in metrics it releases, and ``progress_loss`` if opted in. Without DP
    nothing is private: the model and every released metric, and ``progress_loss`` when the
    loss streams (``train_loss`` released, or ``progress_loss`` named).
    """
    metrics = list(policy.release["metrics"])
    opted = set(policy.release.get("non_private", ()))
    if policy.privacy.get("enabled") is True:
        own, _ = _package_metric_outputs(policy.training)
        out = [m for m in metrics if m in NON_PRIVATE_OUTPUTS | own and m in opted]
        if "progress_loss" in opted:
            out.append("progress_loss")
        if "early_stopping" in policy.validation:
            out.append("early_stopping")
        return sorted(out)
    out = ["model", *metrics]
    if "train_loss" in metrics or "progress_loss" in opted:
        out.append("progress_loss")
    return sorted(set(out))


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A plain dict/list copy of a frozen policy section (for code that wants dicts)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def parse_policy(raw: bytes, fmt: str) -> Policy:
    """Parse and strictly validate policy bytes; raise PolicyError listing every problem."""
    if fmt not in PAYLOAD_TYPES:
        raise PolicyError(f"unknown policy format {fmt!r}")
    doc = _parse_bytes(raw, fmt)
    c = _Checker()
    top = c.table(
        doc,
        "",
        required=(
            "version",
            "name",
            "parties",
            "attestation",
            "data",
            "training",
            "privacy",
            "release",
        ),
        optional=(
            "expires",
            "start",
            "signature_threshold",
            "limits",
            "state",
            "validation",
            "cluster",
        ),
    )
    if top.get("version") != 1:
        c.add("version", f"must be 1, got {top.get('version')!r}")
    name = top.get("name")
    c.typed(name, "name", str, "a string")
    expires: _dt.datetime | None = None
    if "expires" in top:
        exp = top["expires"]
        if isinstance(exp, _dt.datetime):
            expires = exp
        elif isinstance(exp, str):
            try:
                expires = _dt.datetime.fromisoformat(exp.replace("Z", "+00:00"))
            except ValueError:
                c.add("expires", f"not an ISO-8601 time: {exp!r}")
        else:
            c.add("expires", f"must be an ISO-8601 time, got {exp!r}")
        if expires is not None and expires.tzinfo is None:
            c.add("expires", "must carry a time zone (e.g. ...Z)")
            expires = None
    parties = _check_parties(c, top.get("parties"))
    threshold = top.get("signature_threshold", len(parties))
    if c.typed(threshold, "signature_threshold", int, "an integer") and not (
        1 <= threshold <= max(len(parties), 1)
    ):
        c.add("signature_threshold", f"must be between 1 and {len(parties)}, got {threshold}")
    att = _check_attestation(c, top.get("attestation", {}))
    simulated_only = list(att.get("platforms", [])) == ["simulated"]
    data = _check_data(c, top.get("data", {}))
    training = _check_training(c, top.get("training", {}))
    _check_labels(c, data, training.get("task"))
    privacy = _check_privacy(c, top.get("privacy", {}), simulated_only=simulated_only)
    providers = [p.id for p in parties if p.is_provider]
    if parties and not providers:
        c.add("parties", "no party has the data_provider role")
    _check_model_owner(c, training, parties, simulated_only=simulated_only)
    if training.get("device") == "cuda" and not simulated_only and att.get("gpu") != "required":
        c.add(
            "training.device",
            f"got 'cuda' with attestation.gpu = {att.get('gpu', 'forbidden')!r}, want "
            "attestation.gpu = 'required': a GPU outside the TEE sees the data and the "
            "gradients in clear, so every GPU must be attested and bound to the CPU evidence",
        )
    start = _check_start(c, top.get("start", {}), providers)
    release = _check_release(c, top.get("release", {}), parties, training)
    limits = _check_limits(c, top.get("limits", {}), data)
    for key, what in (
        ("shards_per_provider", "the start entry and the manifest list every shard"),
        ("withdrawals_per_provider", "each one and its upload is a journal entry"),
    ):
        n = limits.get(key)
        if isinstance(n, int) and not isinstance(n, bool) and n * len(providers) > MAX_SHARDS:
            c.add(
                f"limits.{key}",
                f"{n} for each of {len(providers)} providers is more than {MAX_SHARDS} in all: "
                f"{what}, and the journal must stay small enough to replay at every start",
            )
    state = _check_state(c, top.get("state", {}), parties)
    validation = _check_validation(
        c, top.get("validation", {}), providers, release, privacy, training
    )
    _check_task_metrics(c, training.get("task"), release, validation)
    if privacy.get("enabled") is True:
        opted_in = set(release.get("non_private") or ())
        own, _ = _package_metric_outputs(training)
        for m in release.get("metrics") or ():
            if m in NON_PRIVATE_OUTPUTS | own and m not in opted_in:
                c.add(
                    "release.metrics",
                    f"{m!r} is computed exactly on the private data, outside the DP guarantee: "
                    f"list it in release.non_private to release it anyway, or remove it",
                )
    if (
        privacy.get("enabled") is True
        and isinstance(training.get("batch_size"), int)
        and isinstance(data.get("max_rows"), int)
        and isinstance(privacy.get("delta"), (int, float))
    ):
        total_rows = data["max_rows"] * max(len(providers), 1)
        if training["batch_size"] > total_rows:
            c.add("training.batch_size", f"{training['batch_size']} exceeds the most rows possible")
    cluster = _check_cluster(c, top.get("cluster", {}), att, training, privacy)
    if c.problems:
        raise PolicyError("invalid policy", c.problems)
    return Policy(
        raw=raw,
        format=fmt,
        name=str(name),
        expires=expires,
        parties=tuple(parties),
        signature_threshold=int(threshold),
        attestation=_freeze(att),
        data=_freeze(data),
        training=_freeze(training),
        privacy=_freeze(privacy),
        start=_freeze(start),
        release=_freeze(release),
        limits=_freeze(limits),
        state=_freeze(state),
        validation=_freeze(validation),
        cluster=_freeze(cluster),
    )


def load_policy_file(path: str | Path) -> Policy:
    """:func:`parse_policy` of a file: TOML when it ends in ``.toml``, else JSON."""
    path = Path(path)
    fmt = "toml" if path.suffix == ".toml" else "json"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return parse_policy(raw, fmt)
    except PolicyFileError as exc:
        raise PolicyFileError(f"{path}: {exc}") from None


# --------------------------------------------------------------------------- signatures


@dataclass(frozen=True)
class SignatureStatus:
    signed: tuple[str, ...]
    missing: tuple[str, ...]
    invalid: tuple[str, ...]  # keyids whose signature does not verify or who are not parties

    def complete(self, threshold: int) -> bool:
        return not self.invalid and len(self.signed) >= threshold


@dataclass(frozen=True)
class SignedPolicy:
    envelope: Envelope
    policy: Policy

    @property
    def digest(self) -> bytes:
        """The signed policy's digest (:attr:`Policy.digest`)."""
        return self.policy.digest

    @classmethod
    def new(cls, policy: Policy) -> SignedPolicy:
        """An envelope over ``policy`` with no signature yet."""
        return cls(Envelope(PAYLOAD_TYPES[policy.format], policy.raw), policy)

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> SignedPolicy:
        """Parse the policy inside ``envelope`` (signatures are checked by :meth:`require_complete`)."""
        fmt = next((f for f, t in PAYLOAD_TYPES.items() if t == envelope.payload_type), None)
        if fmt is None:
            raise PolicyFileError(
                f"envelope payloadType {envelope.payload_type!r} is not a cctrain policy"
            )
        return cls(envelope, parse_policy(envelope.payload, fmt))

    @classmethod
    def load(cls, path: str | Path) -> SignedPolicy:
        """The signed policy in ``path`` (the envelope ``cctrain policy sign`` writes)."""
        path = Path(path)
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise PolicyFileError(f"cannot read {path}: {exc.strerror}") from None
        try:
            return cls.from_envelope(Envelope.from_json(text))
        except PolicyFileError as exc:
            hint = " (sign it first: cctrain policy sign)" if path.suffix == ".toml" else ""
            raise PolicyFileError(f"{path} is not a signed policy{hint}: {exc}") from None

    def save(self, path: str | Path) -> Path:
        """Write the envelope (the JSON :meth:`load` reads) to ``path``; the path."""
        path = Path(path)
        path.write_text(self.envelope.to_json())
        return path

    def status(self) -> SignatureStatus:
        """Who signed, who has not, and whether the threshold is met."""
        signed, invalid = [], []
        for keyid in self.envelope.signatures:
            party = self.policy.party(keyid)
            if party is None or not self.envelope.verify_one(
                keyid, ed25519_public(party.signing_key)
            ):
                invalid.append(keyid)
            else:
                signed.append(keyid)
        missing = [p.id for p in self.policy.parties if p.id not in self.envelope.signatures]
        return SignatureStatus(tuple(signed), tuple(missing), tuple(invalid))

    def require_complete(
        self, *, now: _dt.datetime | None = None, check_expiry: bool = True
    ) -> None:
        """Refuse unless fully signed (and, unless ``check_expiry`` is off, unexpired)."""
        st = self.status()
        problems = [f"signature of {k!r} does not verify or is not a party" for k in st.invalid]
        if len(st.signed) < self.policy.signature_threshold:
            problems.append(
                f"{len(st.signed)} of {self.policy.signature_threshold} required signatures; "
                f"missing: {', '.join(st.missing) or '-'}"
            )
        if check_expiry and self.policy.expires is not None:
            t = now or _dt.datetime.now(_dt.timezone.utc)
            if t >= self.policy.expires:
                problems.append(f"policy expired at {self.policy.expires.isoformat()}")
        if problems:
            raise PolicyError("policy is not fully signed and valid", problems)
