"""The policy's JSON Schema (draft 2020-12), built from the checker's own tables.

The allowed values (roles, models, optimisers, accountants, metrics, platforms...) are the
sets :mod:`cctrain.policy` checks against; tests/authoring/test_schema.py records the tables
the checker walks over a corpus of policies and proves this schema allows exactly the same
keys, and that it accepts the valid policies and refuses each broken one. The schema covers
structure (keys, types, enums, simple bounds); the checker stays the authority for the rules
between fields (a recipient needs an HPKE key, DP needs ε, ...).

``python -m cctrain.schema`` writes ``policy.schema.json`` (shipped beside this module);
``--markdown`` writes the reference page, docs/policy-reference.md.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from cctrain import policy as P
from cctrain.ids import PARTY_ID

SCHEMA_ID = "https://cctrain.dev/schema/policy.schema.json"

Json = dict[str, Any]


def _obj(
    doc: str, properties: dict[str, Json], required: tuple[str, ...] = (), *, closed: bool = True
) -> Json:
    out: Json = {"type": "object", "description": doc, "properties": properties}
    if required:
        out["required"] = list(required)
    if closed:
        out["additionalProperties"] = False
    return out


def _s(doc: str, **kw: Any) -> Json:
    return {"type": "string", "description": doc, **kw}


def _enum(doc: str, values: Any) -> Json:
    return {"type": "string", "description": doc, "enum": sorted(values)}


def _int(doc: str, **kw: Any) -> Json:
    return {"type": "integer", "description": doc, **kw}


def _num(doc: str, **kw: Any) -> Json:
    return {"type": "number", "description": doc, **kw}


def _bool(doc: str) -> Json:
    return {"type": "boolean", "description": doc}


def _list(doc: str, items: Json, **kw: Any) -> Json:
    return {"type": "array", "description": doc, "items": items, **kw}


def _strings(doc: str, **kw: Any) -> Json:
    return _list(doc, {"type": "string"}, **kw)


HEX_PATTERN = "^([0-9a-fA-F]{2})*$"


def _reference() -> Json:
    from cctrain.attestation.base import get_platform, registered_platforms

    props: Json = {}
    for plat in registered_platforms():
        keys = sorted(P.COMMON_REFERENCE_KEYS | get_platform(plat).reference_keys)
        inner: Json = {k: {"description": f"reference value {k!r} of {plat}"} for k in keys}
        inner["measurements"] = _list(
            "accepted launch measurements (hex)", {"type": "string", "pattern": HEX_PATTERN}
        )
        props[plat] = _obj(f"reference values for {plat}", inner)
    return _obj("reference values per platform", props)


def policy_schema() -> Json:
    """The schema, as a JSON-ready dict."""
    from cctrain.attestation.base import registered_platforms

    party = _obj(
        "a party of the consortium",
        {
            "id": _s("party id", pattern=PARTY_ID.pattern),
            "roles": _list(
                "what the party does", _enum("a role", P.ROLES), minItems=1, uniqueItems=True
            ),
            "signing_key": _s("Ed25519 identity key, 'ed25519:<base64>'", pattern="^ed25519:"),
            "hpke_key": _s("X25519 HPKE key (recipients), 'x25519:<base64>'", pattern="^x25519:"),
            "name": _s("display name"),
        },
        ("id", "roles", "signing_key"),
    )
    attestation = _obj(
        "which TEEs may run the training",
        {
            "platforms": _list(
                "accepted platforms",
                _enum("a platform", registered_platforms()),
                minItems=1,
            ),
            "allow_simulated": _bool("accept the simulated TEE (proves nothing)"),
            "allow_debug": _bool("accept a debuggable enclave"),
            "gpu": _enum("attested GPUs: forbidden, optional or required", P.GPU_MODES),
            "reference": _reference(),
        },
        ("platforms",),
    )
    columns = {
        "label_column": _s("the label's column"),
        "feature_columns": _strings("the features' columns, in order"),
        "ignore_extra_columns": _bool("accept columns the policy does not name"),
    }
    data = _obj(
        "what every shard must look like",
        {
            "formats": _list("accepted shard formats", _enum("a format", P.SHARD_FORMATS)),
            "features": _obj(
                "one row's features",
                {
                    "shape": _list("the shape", _int("a dimension", minimum=1), minItems=1),
                    "dtype": _enum("the dtype", P.FEATURE_DTYPES),
                },
                ("shape", "dtype"),
            ),
            "labels": _obj(
                "the labels",
                {
                    "num_classes": _int("class indices 0..n-1", minimum=2),
                    "vocabulary": _strings("label values", maxItems=P.MAX_VOCABULARY),
                    "dtype": _s("label dtype (regression)"),
                },
            ),
            "min_rows": _int("fewest rows of a shard", minimum=1),
            "max_rows": _int("most rows of a shard", minimum=1),
            "max_bytes": _int("most bytes of a shard", minimum=1),
            "csv": _obj("CSV shards", {"header": _bool("first line names columns"), **columns}),
            "parquet": _obj(
                "Parquet shards",
                {
                    **columns,
                    "max_row_group_bytes": _int(
                        "most bytes of one row group", minimum=1, maximum=P.MAX_ROW_GROUP_BYTES
                    ),
                },
            ),
        },
        ("features", "labels", "max_rows", "max_bytes"),
    )
    training = _obj(
        "the model and how it trains",
        {
            "task": _enum("what the labels are", P.TASKS),
            "model": _obj(
                "the model",
                {
                    "name": _enum("a built-in architecture, custom source or a package", P.MODELS),
                    "params": {"type": "object", "description": "the architecture's parameters"},
                    "source_sha256": _s("custom model source SHA-256", pattern="^[0-9a-f]{64}$"),
                    "package_sha256": _s("model package SHA-256", pattern="^[0-9a-f]{64}$"),
                    "provider": _s("the model_provider party", pattern=PARTY_ID.pattern),
                    "module": _s("the package's module"),
                    "entry": _s("the package's entry point"),
                    "max_bytes": _int("most bytes of the package", minimum=1),
                },
                ("name",),
            ),
            "optimizer": _obj(
                "the optimiser",
                {
                    "name": _enum("the optimiser", P.OPTIMIZERS),
                    "lr": _num("learning rate", exclusiveMinimum=0),
                    "momentum": _num("SGD momentum", minimum=0),
                    "weight_decay": _num("weight decay", minimum=0),
                    "betas": _list("Adam betas", {"type": "number"}, minItems=2, maxItems=2),
                    "eps": _num("Adam epsilon", exclusiveMinimum=0),
                    "nesterov": _bool("Nesterov momentum"),
                    "params": {"type": "object", "description": "a package optimiser's"},
                },
                ("name", "lr"),
            ),
            "epochs": _int("passes over the data", minimum=1),
            "batch_size": _int("rows per step (expected, under DP)", minimum=1),
            "seed": _int("public: seeds initialisation only"),
            "lr_schedule": {
                "type": "object",
                "description": "learning-rate schedule",
                "properties": {"name": _enum("the schedule", P.LR_SCHEDULES)},
                "required": ["name"],
            },
            "device": _s("cpu or cuda"),
            "loss": _enum("the task's loss or the package's", P.LOSSES),
            "metrics": {
                "type": "object",
                "description": "a package's own metrics: name -> 'min' or 'max'",
                "maxProperties": P.MAX_PACKAGE_METRICS,
            },
        },
        ("model", "optimizer", "epochs", "batch_size"),
    )
    privacy = _obj(
        "differential privacy (DP-SGD)",
        {
            "enabled": _bool("train with DP"),
            "target_epsilon": _num("the budget", exclusiveMinimum=0, maximum=100),
            "delta": _num("delta", exclusiveMinimum=0, exclusiveMaximum=1),
            "max_grad_norm": _num("per-sample clipping norm", exclusiveMinimum=0),
            "accountant": _enum("the privacy accountant", P.ACCOUNTANTS),
            "noise_source": _enum("where the noise comes from", P.NOISE_SOURCES),
            "grad_sample_mode": _enum("per-sample gradient mode", P.GRAD_SAMPLE_MODES),
        },
        ("enabled",),
    )
    party_ids = _strings("party ids")
    props: Json = {
        "version": {"const": 1, "description": "the policy format"},
        "name": _s("the policy's name"),
        "expires": _s("ISO-8601 instant with a time zone"),
        "signature_threshold": _int("signatures needed (default: all)", minimum=1),
        "parties": _list("the parties", party, minItems=1),
        "attestation": attestation,
        "data": data,
        "training": training,
        "privacy": privacy,
        "start": _obj(
            "when training starts",
            {
                "require_uploads_from": party_ids,
                "auto_start": _bool("start once the rule holds"),
            },
        ),
        "release": _obj(
            "what leaves and to whom",
            {
                "recipients": _strings("recipient party ids", minItems=1),
                "metrics": _strings("metrics that may leave"),
                "approvals_required_from": party_ids,
                "non_private": _strings("outputs released outside the DP guarantee"),
                "max_releases": _int("releases allowed", minimum=1, maximum=1000),
            },
            ("recipients",),
        ),
        "limits": _obj(
            "what one provider may put into the enclave",
            {
                "shards_per_provider": _int("accepted shards", minimum=1),
                "bytes_per_provider": _int("plaintext bytes", minimum=1),
                "concurrent_uploads_per_provider": _int("open upload streams", minimum=1),
                "withdrawals_per_provider": _int("withdrawals in one run", minimum=1),
                "allow_duplicate_shards": _bool("accept the same bytes twice"),
            },
        ),
        "state": _obj(
            "who holds the state key",
            {
                "key": _enum("platform or consortium", ("platform", "consortium")),
                "threshold": _int("k of the k-of-n shares", minimum=1),
            },
        ),
        "validation": _obj(
            "held-out rows",
            {
                "fraction": _num("share of pooled rows", exclusiveMinimum=0, exclusiveMaximum=1),
                "parties": _strings("providers held out"),
                "early_stopping": _obj(
                    "stop when a validation metric stops improving",
                    {
                        "metric": _s("the metric"),
                        "patience": _int("epochs without improvement", minimum=1),
                        "min_delta": _num("smallest improvement", minimum=0),
                    },
                    ("metric",),
                ),
            },
        ),
        "cluster": _obj(
            "enclave ranks",
            {
                "ranks": _int("ranks", minimum=1, maximum=P.MAX_RANKS),
                "measurements": _strings("accepted measurements of ranks 1.. (hex)"),
                "timeout_s": _num("seconds a rank waits", minimum=1, maximum=86_400),
            },
        ),
    }
    required = ("version", "name", "parties", "attestation", "data", "training", "privacy")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "cctrain consortium policy",
        **_obj("one TOML or JSON document every party signs", props, (*required, "release")),
    }


def schema_json() -> str:
    return json.dumps(policy_schema(), indent=2, sort_keys=False) + "\n"


def shipped_schema() -> Json:
    """The schema file shipped in the package."""
    text = resources.files("cctrain.schema").joinpath("policy.schema.json").read_text()
    doc: Json = json.loads(text)
    return doc


def _walk(node: Json, path: str, out: list[str]) -> None:
    props = node.get("properties")
    if not isinstance(props, dict):
        return
    required = set(node.get("required", ()))
    for key, sub in props.items():
        where = f"{path}.{key}" if path else key
        kind = sub.get("type", "any")
        details = []
        if "enum" in sub:
            details.append("one of " + ", ".join(f"`{v}`" for v in sub["enum"]))
        for bound in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
            if bound in sub:
                details.append(f"{bound} {sub[bound]}")
        if "const" in sub:
            details.append(f"always `{sub['const']}`")
        if kind == "array" and isinstance(sub.get("items"), dict) and "enum" in sub["items"]:
            details.append("each one of " + ", ".join(f"`{v}`" for v in sub["items"]["enum"]))
        req = "yes" if key in required else ""
        desc = str(sub.get("description", "")).replace("|", "\\|")
        extra = ("; ".join(details)).replace("|", "\\|")
        out.append(f"| `{where}` | {kind} | {req} | {desc}{' (' + extra + ')' if extra else ''} |")
        if kind == "object":
            _walk(sub, where, out)
        if kind == "array" and isinstance(sub.get("items"), dict):
            _walk(sub["items"], f"{where}[]", out)


def markdown() -> str:
    """docs/policy-reference.md: every key of the schema, one table row each."""
    lines = [
        "# Policy reference",
        "",
        "<!-- generated by `python -m cctrain.schema --markdown`; do not edit by hand -->",
        "",
        "Every key a policy may hold, from the JSON Schema shipped as "
        "`cctrain/schema/policy.schema.json` (draft 2020-12). `cctrain policy check` is the "
        "authority: it also checks the rules between fields (a recipient needs an HPKE key, "
        "DP needs ε and δ, ...) and names a close key for a misspelt one. "
        "`cctrain policy init` writes a commented template.",
        "",
        "| key | type | required | meaning |",
        "|---|---|---|---|",
    ]
    _walk(policy_schema(), "", lines)
    return "\n".join(lines) + "\n"
