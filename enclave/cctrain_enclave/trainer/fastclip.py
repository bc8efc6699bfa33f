"""Per-sample gradient clipping for models whose every trainable parameter is in ``nn.Linear``.

Opacus's hooks mode materialises a (batch × parameters) tensor of per-sample gradients; ghost
clipping avoids that but runs a second backward pass. For a Linear layer neither is needed:
with ``a_i`` the layer input and ``b_i`` the gradient of sample i's loss w.r.t. the layer
output (one ``autograd.grad`` call gives all ``b``), the per-sample gradient is ``b_i a_iᵀ``, so

* its squared norm is ``‖a_i‖²·‖b_i‖²`` (+ ``‖b_i‖²`` for the bias), a row reduction, and
* the clipped sum ``Σ_i c_i b_i a_iᵀ`` is one matmul ``(c ⊙ B)ᵀ A``,

which costs about what the ordinary backward does. For inputs with extra (sequence)
dimensions the norm uses the ghost-norm identity ``‖A_iᵀB_i‖² = ⟨A_iA_iᵀ, B_iB_iᵀ⟩``.
The clip factor is Opacus's, ``min(1, C / (‖g_i‖ + 1e-6))``, so the result equals Opacus's
clipped gradient sum (a test checks it against Opacus's hooks mode).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from cctrain.errors import CctrainError

from .objective import CROSS_ENTROPY, Objective

__all__ = [
    "FastClipUnsupported",
    "LinearClipper",
    "fast_clip_runtime_reasons",
    "fast_clip_unsupported_reasons",
]

#: Opacus adds this to the norm before dividing, so we do too (equality, not just closeness).
_NORM_EPS = 1e-6


class FastClipUnsupported(CctrainError):
    """The model does something the fast path cannot clip correctly; use ghost or hooks."""


def fast_clip_unsupported_reasons(model: nn.Module) -> list[str]:
    """Why the fast path cannot privatise ``model`` from its structure (empty when it can).

    Only layers of *exactly* ``nn.Linear`` qualify: a subclass may compute something else in
    ``forward`` (Opacus's ``RNNLinear`` in ``DPLSTM`` is one). A parameter shared by two layers
    (tied weights) has a per-sample gradient that is the sum of two outer products, whose
    norm the per-layer identity cannot give. A layer that runs twice in one pass has the same
    problem; that shows only when the model runs (:func:`fast_clip_runtime_reasons`).
    """
    reasons: list[str] = []
    owners: dict[int, list[str]] = {}
    linear_params: set[int] = set()
    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
            if type(m) is nn.Linear:
                linear_params.add(id(p))
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) not in linear_params:
            reasons.append(f"parameter {name!r} is not the weight or bias of an nn.Linear layer")
        elif len(owners[id(p)]) > 1:
            reasons.append(
                f"parameter {name!r} is shared by {', '.join(owners[id(p)])} (tied weights)"
            )
    return reasons


def fast_clip_runtime_reasons(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    objective: Objective = CROSS_ENTROPY,
) -> list[str]:
    """Why the fast path gets ``model``'s gradients wrong on the batch ``(x, y)`` under the
    objective's loss; empty when it gets them right.

    One forward pass; the fast path's unclipped per-sample sum must equal autograd's gradient
    of the summed loss for every parameter. It differs when a Linear layer runs twice, when its
    output is changed in place, or when a parameter is also used outside its layer's call
    (e.g. ``x @ layer.weight.T``), none of which the structure shows.
    """
    if fast_clip_unsupported_reasons(model):
        return []  # the structural reasons say it already
    clipper = LinearClipper(model)
    params = [p for p in model.parameters() if p.requires_grad]
    names = {id(p): n for n, p in model.named_parameters()}
    try:
        with clipper.capture():
            logits = model(x)
        loss = objective.loss(logits, y, "sum")
        true = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        fast = {id(p): g for p, g in clipper.clipped_gradient_sum(loss, max_grad_norm=math.inf)}
    except FastClipUnsupported as exc:
        return [str(exc)]
    finally:
        clipper._records = []
        clipper.close()
    reasons = []
    for p, t in zip(params, true, strict=True):
        f = fast.get(id(p))
        t = torch.zeros_like(p) if t is None else t
        f = torch.zeros_like(p) if f is None else f
        if float((t - f).norm()) > 1e-4 * float(t.norm()) + 1e-6:
            reasons.append(
                f"parameter {names[id(p)]!r}: the fast path's gradient differs from autograd's "
                "(the parameter is used outside its nn.Linear call)"
            )
    return reasons


class LinearClipper:
    """Captures Linear inputs/outputs during a forward pass and returns clipped gradient sums."""

    def __init__(self, model: nn.Module) -> None:
        reasons = fast_clip_unsupported_reasons(model)
        if reasons:
            raise FastClipUnsupported("fast clipping unsupported: " + "; ".join(reasons))
        self._layers = [
            m
            for m in model.modules()
            if type(m) is nn.Linear and any(p.requires_grad for p in m.parameters())
        ]
        self._records: list[tuple[nn.Linear, torch.Tensor, torch.Tensor, int]] = []
        self._armed = False
        self._handles = [m.register_forward_hook(self._capture) for m in self._layers]

    def _capture(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        if self._armed:
            assert isinstance(module, nn.Linear)
            self._records.append((module, inputs[0].detach(), output, output._version))

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Record the Linear layers of the forward pass run inside this block."""
        self._records.clear()
        self._armed = True
        try:
            yield
        finally:
            self._armed = False

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    def clipped_gradient_sum(
        self, loss_sum: torch.Tensor, *, max_grad_norm: float
    ) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """``Σ_i clip(∇ loss_i)`` per parameter, ``loss_sum = Σ_i loss_i`` of the captured pass."""
        records, self._records = self._records, []
        self._check(records)
        outputs = [out for _, _, out, _ in records]
        backprops = torch.autograd.grad(loss_sum, outputs)
        squared = torch.zeros(records[0][1].shape[0], dtype=loss_sum.dtype, device=loss_sum.device)
        flat: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        for (layer, a, _, _), b in zip(records, backprops, strict=True):
            if a.dim() == 2:
                b_sq = b.square().sum(1)
                if layer.weight.requires_grad:
                    squared.addcmul_(a.square().sum(1), b_sq)
                if layer.bias is not None and layer.bias.requires_grad:
                    squared += b_sq
            else:
                a = a.reshape(a.shape[0], -1, a.shape[-1])
                b = b.reshape(b.shape[0], -1, b.shape[-1])
                if layer.weight.requires_grad:
                    squared += (
                        torch.bmm(a, a.transpose(1, 2)) * torch.bmm(b, b.transpose(1, 2))
                    ).sum((1, 2))
                if layer.bias is not None and layer.bias.requires_grad:
                    squared += b.sum(1).square().sum(1)
            flat.append((layer, a, b))
        clip = (max_grad_norm / (squared.sqrt() + _NORM_EPS)).clamp(max=1.0)
        grads: list[tuple[nn.Parameter, torch.Tensor]] = []
        for layer, a, b in flat:
            scaled = b * clip.view(-1, *([1] * (b.dim() - 1)))
            if layer.weight.requires_grad:
                if a.dim() == 2:
                    grads.append((layer.weight, scaled.t() @ a))
                else:
                    grads.append((layer.weight, torch.einsum("bto,bti->oi", scaled, a)))
            if layer.bias is not None and layer.bias.requires_grad:
                grads.append((layer.bias, scaled.reshape(-1, scaled.shape[-1]).sum(0)))
        return grads

    @staticmethod
    def _check(records: list[tuple[nn.Linear, torch.Tensor, torch.Tensor, int]]) -> None:
        if not records:
            raise FastClipUnsupported("no Linear layer ran in the captured forward pass")
        seen: set[int] = set()
        for layer, _, out, version in records:
            if id(layer) in seen:
                # A layer used twice has per-sample gradients that are sums of two outer
                # products; the norm identity above would miss the cross term.
                raise FastClipUnsupported("a Linear layer ran twice in one forward pass")
            seen.add(id(layer))
            if out._version != version:
                raise FastClipUnsupported(
                    "a Linear layer's output was modified in place (e.g. ReLU(inplace=True))"
                )
