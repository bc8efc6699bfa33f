"""Model architectures the policy can name, and pinned custom model code.

Built-in builders live in a registry (``MODEL_BUILDERS``) keyed by the policy's
``training.model.name``; each takes ``(feature_shape, num_classes, **params)`` and rejects
unknown or ill-typed params with a :class:`~cctrain.errors.PolicyError` listing them all.
Only DP-compatible layers are used (GroupNorm, never BatchNorm), so every built-in model can be
privatised by Opacus; logreg and mlp consist of Linear layers only, which the fast DP path needs.

Custom model code is trusted only through its hash: :func:`load_custom_model` compares the
SHA-256 of the exact source bytes with the policy's pin *before* compiling or executing it.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import math
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from cctrain.errors import CctrainError, PolicyError

__all__ = [
    "ACTIVATIONS",
    "MODEL_BUILDERS",
    "CustomModelHashMismatch",
    "build_builtin_model",
    "load_custom_model",
    "register_model",
]

ModelBuilder = Callable[..., nn.Module]

MODEL_BUILDERS: dict[str, ModelBuilder] = {}

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "sigmoid": nn.Sigmoid,
}


class CustomModelHashMismatch(CctrainError):
    """The custom model source is not the code the policy pinned; it was not executed."""


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register ``builder(feature_shape, num_classes, **params) -> nn.Module`` under ``name``."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in MODEL_BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        MODEL_BUILDERS[name] = builder
        return builder

    return decorator


def _check_params(name: str, builder: ModelBuilder, params: Mapping[str, Any]) -> None:
    """Refuse params the builder does not declare, naming every one and what is allowed."""
    signature = inspect.signature(builder)
    allowed = [
        p.name
        for p in list(signature.parameters.values())[2:]
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise PolicyError(
            f"model {name!r} got unknown params",
            problems=[
                f"unknown param {k!r} (allowed: {', '.join(allowed) or 'none'})" for k in unknown
            ],
        )


def build_builtin_model(
    name: str, feature_shape: Sequence[int], num_classes: int, params: Mapping[str, Any]
) -> nn.Module:
    """Build a registered architecture, refusing unknown names and params."""
    builder = MODEL_BUILDERS.get(name)
    if builder is None:
        raise PolicyError(
            "unknown model",
            problems=[
                f"model {name!r} is not built in (known: {', '.join(sorted(MODEL_BUILDERS))})"
            ],
        )
    _check_params(name, builder, params)
    return builder(tuple(feature_shape), num_classes, **params)


def _positive_ints(name: str, value: Any, problems: list[str]) -> list[int]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        problems.append(f"{name} must be a list of positive integers, got {value!r}")
        return []
    return list(value)


def _activation(value: Any, problems: list[str]) -> Callable[[], nn.Module]:
    if value not in ACTIVATIONS:
        problems.append(f"activation {value!r} is not one of {', '.join(sorted(ACTIVATIONS))}")
        return nn.ReLU
    return ACTIVATIONS[value]


def _dropout(value: Any, problems: list[str]) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        problems.append(f"dropout must be a number in [0, 1), got {value!r}")
        return 0.0
    return float(value)


def _raise_if(problems: list[str], model: str) -> None:
    if problems:
        raise PolicyError(f"invalid params for model {model!r}", problems=problems)


@register_model("logreg")
def build_logreg(
    feature_shape: tuple[int, ...], num_classes: int, *, bias: bool = True
) -> nn.Module:
    """Multinomial logistic regression: one Linear layer on the flattened features."""
    _raise_if([] if isinstance(bias, bool) else [f"bias must be a boolean, got {bias!r}"], "logreg")
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(feature_shape), num_classes, bias=bias))


@register_model("mlp")
def build_mlp(
    feature_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: Sequence[int] = (64, 32),
    activation: str = "relu",
    dropout: float = 0.0,
) -> nn.Module:
    """A fully connected network: ``hidden`` sizes, one activation, optional dropout."""
    problems: list[str] = []
    sizes = _positive_ints("hidden", hidden, problems)
    act = _activation(activation, problems)
    p = _dropout(dropout, problems)
    _raise_if(problems, "mlp")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(feature_shape)
    for size in sizes:
        layers += [nn.Linear(width, size), act()]
        if p > 0:
            layers.append(nn.Dropout(p))
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@register_model("cnn")
def build_cnn(
    feature_shape: tuple[int, ...],
    num_classes: int,
    *,
    channels: Sequence[int] = (16, 32),
    kernel_size: int = 3,
    groups: int = 4,
    hidden: int = 64,
    activation: str = "relu",
) -> nn.Module:
    """A small CNN for (C, H, W) features: conv → GroupNorm → act → 2×2 max-pool per block.

    GroupNorm instead of BatchNorm: BatchNorm mixes samples of a batch, which per-sample
    clipping (and so DP) cannot account for.
    """
    problems: list[str] = []
    if len(feature_shape) != 3:
        problems.append(f"cnn needs features shaped (channels, height, width), got {feature_shape}")
    chans = _positive_ints("channels", channels, problems)
    for name, value in (("kernel_size", kernel_size), ("groups", groups), ("hidden", hidden)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            problems.append(f"{name} must be a positive integer, got {value!r}")
    if isinstance(kernel_size, int) and kernel_size % 2 == 0:
        problems.append(f"kernel_size must be odd (same padding), got {kernel_size}")
    act = _activation(activation, problems)
    _raise_if(problems, "cnn")
    in_ch, height, width = feature_shape
    layers: list[nn.Module] = []
    for ch in chans:
        # The largest group count <= groups that divides ch keeps GroupNorm well defined.
        g = max(d for d in range(1, min(groups, ch) + 1) if ch % d == 0)
        layers += [nn.Conv2d(in_ch, ch, kernel_size, padding=kernel_size // 2), nn.GroupNorm(g, ch)]
        layers.append(act())
        if height >= 2 and width >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        in_ch = ch
    layers += [nn.Flatten(), nn.Linear(in_ch * height * width, hidden), act()]
    layers.append(nn.Linear(hidden, num_classes))
    return nn.Sequential(*layers)


def source_sha256(source: bytes) -> str:
    """Hex SHA-256 of the exact source bytes (no normalisation: the bytes are what runs)."""
    return hashlib.sha256(source).hexdigest()


def load_custom_model(
    source: bytes,
    *,
    expected_sha256: str,
    entry: str,
    feature_shape: Sequence[int],
    num_classes: int,
    params: Mapping[str, Any],
) -> nn.Module:
    """Run pinned model code as a fresh module; return ``entry(shape, num_classes, **params)``.

    The hash is checked first, so code the parties did not sign never runs.
    """
    actual = source_sha256(source)
    if not hmac.compare_digest(actual, expected_sha256.lower()):
        raise CustomModelHashMismatch(
            f"custom model source has SHA-256 {actual}, but the policy pins {expected_sha256}; "
            "refusing to execute it"
        )
    module = types.ModuleType(f"cctrain_custom_model_{actual[:16]}")
    module.__file__ = f"<custom model sha256:{actual}>"
    code = compile(source, module.__file__, "exec")
    exec(code, module.__dict__)  # noqa: S102 - pinned by the signed policy's hash, checked above
    builder = module.__dict__.get(entry)
    if not callable(builder):
        raise PolicyError(
            "custom model entry point missing",
            problems=[f"custom model source defines no callable {entry!r}"],
        )
    model = builder(tuple(feature_shape), num_classes, **params)
    if not isinstance(model, nn.Module):
        raise PolicyError(
            "custom model entry point returned no model",
            problems=[f"{entry}(...) returned {type(model).__name__}, not torch.nn.Module"],
        )
    return model
