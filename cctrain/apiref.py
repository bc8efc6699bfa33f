"""The Python API reference, generated from the SDK's own signatures and docstrings
(``docs/python-api.md``).

    python -m cctrain.apiref > docs/python-api.md

``tests/test_cli_reference.py`` fails when the committed file is stale.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any

__all__ = ["MODULES", "render"]

#: The public modules and, for each, the names documented (their ``__all__`` when they have one).
MODULES: dict[str, tuple[str, ...] | None] = {
    "cctrain.operator": None,
    "cctrain.client": None,
    "cctrain.package": None,
    "cctrain.policy": ("parse_policy", "load_policy_file", "Policy", "SignedPolicy"),
    "cctrain.release": ("verify_manifest", "verify_release_cluster", "verify_release_gpus"),
    "cctrain.local": ("LocalEnclave", "LocalWorker"),
}


def _doc(obj: Any) -> str:
    return inspect.cleandoc(obj.__doc__) if obj.__doc__ else "(no docstring)"


def _summary(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring, on one line."""
    return " ".join(_doc(obj).split("\n\n")[0].split())


def _signature(name: str, obj: Any) -> str:
    try:
        return f"{name}{inspect.signature(obj)}"
    except (TypeError, ValueError):
        return name


def _public_methods(cls: type) -> list[tuple[str, Any]]:
    """The class's own public methods and properties, then those it inherits from a private
    base (one the reference does not list on its own, such as ``cctrain.local``'s)."""
    out: list[tuple[str, Any]] = []
    own = [cls, *(b for b in cls.__mro__[1:] if b.__name__.startswith("_") and b is not object)]
    members = [(n, m) for c in own for n, m in vars(c).items()]
    for name, member in members:
        if name.startswith("_") or any(name == seen for seen, _ in out):
            continue
        if isinstance(member, staticmethod | classmethod):
            member = member.__func__
        if inspect.isfunction(member) or isinstance(member, property):
            out.append((name, member))
    return out


def render() -> str:
    out = [
        "# Python API reference",
        "",
        "Generated from the signatures and docstrings by `python -m cctrain.apiref`; do not edit "
        "by hand. None of these modules needs torch (`FetchedModel.to_torch` imports it when "
        "called).",
        "",
    ]
    for modname, names in MODULES.items():
        mod = importlib.import_module(modname)
        chosen = names or tuple(getattr(mod, "__all__", ()))
        out += [f"## `{modname}`", "", _summary(mod), ""]
        for name in chosen:
            obj = getattr(mod, name)
            kind = "class" if inspect.isclass(obj) else "function"
            if not (inspect.isclass(obj) or callable(obj)):
                continue
            out += [f"### {kind} `{name}`", "", "```python", _signature(name, obj), "```", ""]
            out += [_doc(obj), ""]
            if inspect.isclass(obj):
                for mname, member in _public_methods(obj):
                    if isinstance(member, property):
                        out += [f"* `{mname}` (property): {_summary(member)}"]
                    else:
                        out += [f"* `{_signature(mname, member)}`: {_summary(member)}"]
                out.append("")
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
