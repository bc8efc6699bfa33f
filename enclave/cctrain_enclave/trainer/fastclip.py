"""Per-sample gradient clipping without per-sample backward passes, layer by layer from a table.

Opacus's hooks mode materialises a (batch × parameters) tensor of per-sample gradients; ghost
clipping avoids that but runs a second backward pass. For the layers in :data:`LAYER_RULES`
neither is needed: with ``a_i`` the layer input of sample i and ``b_i`` the gradient of sample
i's loss w.r.t. the layer output (one ``autograd.grad`` call gives all ``b``), each rule gives

* the per-sample squared gradient norm of the layer's parameters, and
* the clipped sum ``Σ_i c_i ∇_θ loss_i`` for per-sample factors ``c``,

at about the cost of the ordinary backward:

* ``nn.Linear``: the per-sample gradient is ``b_i a_iᵀ``; its squared norm ``‖a_i‖²·‖b_i‖²``
  (a row reduction), the clipped sum one matmul ``(c ⊙ B)ᵀ A``. With extra (sequence)
  dimensions the norm uses the ghost-norm identity ``‖B_iᵀA_i‖² = ⟨A_iA_iᵀ, B_iB_iᵀ⟩`` or,
  when the sequence is longer than the weight is big, the per-sample gradient itself.
* ``nn.Conv1d`` / ``nn.Conv2d``: a convolution is a Linear layer applied to the unfolded
  (im2col) input, one per group; padding (any ``padding_mode``, ``"same"``), stride and
  dilation go into the unfold, so the Linear identity applies with the output positions as
  the sequence.
* ``nn.Embedding``: sample i's gradient puts ``Σ_t b_it`` on row ``idx_it``; its squared norm is
  ``Σ_{t,t'} [idx_it = idx_it'] ⟨b_it, b_it'⟩``; positions holding ``padding_idx`` contribute
  nothing (that row gets no gradient, as in torch).
* ``nn.LayerNorm`` / ``nn.RMSNorm`` / ``nn.GroupNorm``: the per-sample gradients are small
  (``Σ_t b_it ⊙ x̂_it`` for the weight, ``Σ_t b_it`` for the bias, ``x̂`` recomputed from the
  captured input), so they are formed and reduced directly.

The clip factor is Opacus's, ``min(1, C / (‖g_i‖ + 1e-6))``, so the result equals Opacus's
clipped gradient sum (tests/enclave/test_fastclip_layers.py checks each layer type against
Opacus's hooks mode, or against the per-sample definition where Opacus is wrong).

Only layers of *exactly* a type in the table qualify: a subclass may compute something else
in ``forward`` (Opacus's ``RNNLinear`` in ``DPLSTM`` is one). Layers without parameters
(activations, pooling, dropout, reshapes, functional attention) need no rule.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cctrain.errors import CctrainError

from .objective import CROSS_ENTROPY, Objective

__all__ = [
    "LAYER_RULES",
    "FastClipUnsupported",
    "FastClipper",
    "LayerRule",
    "LinearClipper",
    "fast_clip_runtime_reasons",
    "fast_clip_unsupported_reasons",
]

#: Opacus adds this to the norm before dividing, so we do too (equality, not just closeness).
_NORM_EPS = 1e-6

#: ``(squared norms (B,), clipped_sums(c) -> [(parameter, Σ_i c_i g_i)])`` of one layer call.
Prepared = tuple[torch.Tensor, Callable[[torch.Tensor], list[tuple[nn.Parameter, torch.Tensor]]]]


class FastClipUnsupported(CctrainError):
    """The model does something the fast path cannot clip correctly; use ghost or hooks."""


@dataclass(frozen=True)
class LayerRule:
    """How the fast path clips one layer type.

    ``prepare(layer, input, grad_output)`` returns the per-sample squared norms of the
    layer's trainable parameters and a function of the clip factors giving their clipped sums;
    ``refuse(layer)`` says why a configuration of the layer is not supported (``None``: it is).
    """

    prepare: Callable[[nn.Module, torch.Tensor, torch.Tensor], Prepared]
    refuse: Callable[[nn.Module], str | None] = lambda _m: None


def _trainable(p: nn.Parameter | None) -> bool:
    return p is not None and p.requires_grad


def _per_sample(
    pairs: list[tuple[nn.Parameter | None, torch.Tensor]], batch: int, like: torch.Tensor
) -> Prepared:
    """Rules whose per-sample gradients ``(B, *param.shape)`` are small: form and reduce them."""
    kept = [(p, g.reshape(batch, -1)) for p, g in pairs if p is not None and _trainable(p)]
    squared = torch.zeros(batch, dtype=like.dtype, device=like.device)
    for _, g in kept:
        squared += g.square().sum(1)

    def sums(clip: torch.Tensor) -> list[tuple[nn.Parameter, torch.Tensor]]:
        return [(p, (clip.to(g.dtype) @ g).view(p.shape)) for p, g in kept]

    return squared, sums


def _outer(
    a: torch.Tensor, b: torch.Tensor, batch: int, groups: int
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Per-sample ``G_n = B_n A_nᵀ`` for ``a`` (B·g, I, L), ``b`` (B·g, O, L): the squared norm
    per sample (summed over groups) and ``c -> Σ_i c_i G_i`` shaped (g, O, I).

    The ghost identity costs B·g·L² memory, the per-sample gradients B·g·O·I; the smaller wins.
    """
    n, i_dim, length = a.shape
    o_dim = b.shape[1]
    if length * length <= o_dim * i_dim:
        squared = (torch.bmm(a.transpose(1, 2), a) * torch.bmm(b.transpose(1, 2), b)).sum((1, 2))
        b4 = b.view(batch, groups, o_dim, length)
        a4 = a.view(batch, groups, i_dim, length)

        def ghost_sum(clip: torch.Tensor) -> torch.Tensor:
            scaled = b4 * clip.view(-1, 1, 1, 1)
            if groups == 1:
                # (O, B·L) @ (B·L, I): one matmul.
                return (
                    scaled[:, 0].transpose(0, 1).reshape(o_dim, -1)
                    @ a4[:, 0].transpose(0, 1).reshape(i_dim, -1).t()
                ).unsqueeze(0)
            return torch.einsum("bgol,bgil->goi", scaled, a4)

        return squared.view(batch, groups).sum(1), ghost_sum
    # (B·g, O, I); einsum picks a faster contraction than bmm with a transposed operand here.
    grads = torch.einsum("nol,nil->noi", b, a)
    squared = grads.square().sum((1, 2)).view(batch, groups).sum(1)
    flat = grads.view(batch, -1)

    def direct_sum(clip: torch.Tensor) -> torch.Tensor:
        return (clip @ flat).view(groups, o_dim, i_dim)

    return squared, direct_sum


def _linear(m: nn.Module, a: torch.Tensor, b: torch.Tensor) -> Prepared:
    assert isinstance(m, nn.Linear)
    batch = a.shape[0]
    w, bias = m.weight, m.bias
    grads_b: list[tuple[nn.Parameter, Callable[[torch.Tensor], torch.Tensor]]] = []
    if a.dim() == 2:
        b_sq = b.square().sum(1)
        squared = torch.zeros_like(b_sq)
        if _trainable(w):
            squared.addcmul_(a.square().sum(1), b_sq)
            grads_b.append((w, lambda c: (b * c.view(-1, 1)).t() @ a))
        if _trainable(bias):
            assert bias is not None
            squared += b_sq
            grads_b.append((bias, lambda c: c @ b))
    else:
        a3 = a.reshape(batch, -1, a.shape[-1]).transpose(1, 2)  # (B, I, T)
        b3 = b.reshape(batch, -1, b.shape[-1]).transpose(1, 2)  # (B, O, T)
        squared = torch.zeros(batch, dtype=b.dtype, device=b.device)
        if _trainable(w):
            w_sq, w_sum = _outer(a3, b3, batch, 1)
            squared += w_sq
            grads_b.append((w, lambda c: w_sum(c)[0]))
        if _trainable(bias):
            assert bias is not None
            per = b3.sum(2)  # (B, O)
            squared += per.square().sum(1)
            grads_b.append((bias, lambda c: c @ per))
    return squared, lambda c: [(p, fn(c)) for p, fn in grads_b]


def _im2col(
    x: torch.Tensor,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    out: torch.Size,
) -> torch.Tensor:
    """The unfolded (padded) input (B, C·∏k, L), in ``F.unfold``'s order (channel, then kernel
    offsets), built from one strided slice per kernel offset: 3-6× faster than ``F.unfold``
    on the CPU for the small images of the registry CNN (measured)."""
    views = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        index = tuple(
            slice(o * d, o * d + s * (n - 1) + 1, s)
            for o, d, s, n in zip(offset, dilation, stride, out, strict=True)
        )
        views.append(x[(slice(None), slice(None), *index)])
    return torch.stack(views, 2).reshape(x.shape[0], -1, math.prod(out))


def _conv(m: nn.Module, a: torch.Tensor, b: torch.Tensor) -> Prepared:
    assert isinstance(m, nn.Conv1d | nn.Conv2d)
    nd = 1 if isinstance(m, nn.Conv1d) else 2
    if a.dim() != nd + 2:
        raise FastClipUnsupported(f"an nn.Conv{nd}d layer ran on an unbatched input")
    batch, groups = a.shape[0], m.groups
    pad = list(m._reversed_padding_repeated_twice)
    mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
    x = F.pad(a, pad, mode=mode) if any(pad) else a
    cols = _im2col(x, tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation), b.shape[2:])
    length = cols.shape[-1]
    out = b.reshape(batch * groups, m.out_channels // groups, length)
    squared = torch.zeros(batch, dtype=b.dtype, device=b.device)
    grads_b: list[tuple[nn.Parameter, Callable[[torch.Tensor], torch.Tensor]]] = []
    if _trainable(m.weight):
        w_sq, w_sum = _outer(cols.view(batch * groups, -1, length), out, batch, groups)
        squared += w_sq
        grads_b.append((m.weight, lambda c: w_sum(c).reshape(m.weight.shape)))
    if _trainable(m.bias):
        assert m.bias is not None
        per = b.reshape(batch, m.out_channels, -1).sum(2)  # (B, C_out)
        squared += per.square().sum(1)
        grads_b.append((m.bias, lambda c: c @ per))
    return squared, lambda c: [(p, fn(c)) for p, fn in grads_b]


def _embedding(m: nn.Module, a: torch.Tensor, b: torch.Tensor) -> Prepared:
    assert isinstance(m, nn.Embedding)
    batch = a.shape[0]
    idx = a.reshape(batch, -1)
    rows = b.reshape(batch, idx.shape[1], -1)
    if m.padding_idx is not None:
        # torch gives the padding row no gradient: those positions contribute nothing.
        rows = rows * (idx != m.padding_idx).unsqueeze(-1).to(rows.dtype)
    if idx.shape[1] == 1:
        squared = rows.square().sum((1, 2))
    else:
        same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(rows.dtype)
        squared = (torch.bmm(rows, rows.transpose(1, 2)) * same).sum((1, 2))
    weight = m.weight

    def sums(clip: torch.Tensor) -> list[tuple[nn.Parameter, torch.Tensor]]:
        scaled = (rows * clip.view(-1, 1, 1)).reshape(-1, rows.shape[-1])
        grad = torch.zeros_like(weight).index_add_(0, idx.reshape(-1), scaled)
        return [(weight, grad)]

    return squared, sums


def _refuse_embedding(m: nn.Module) -> str | None:
    assert isinstance(m, nn.Embedding)
    if m.scale_grad_by_freq:
        return "scale_grad_by_freq scales by token counts over the whole batch (it mixes samples)"
    if m.sparse:
        return "sparse=True gradients are not supported by the fast path"
    if m.max_norm is not None:
        return "max_norm renormalises the weight in place during the forward pass"
    return None


def _normalisation(
    m: nn.Module, b: torch.Tensor, xhat: torch.Tensor, reduce: tuple[int, ...]
) -> Prepared:
    weight = getattr(m, "weight", None)
    bias = getattr(m, "bias", None)
    pairs: list[tuple[nn.Parameter | None, torch.Tensor]] = []
    if _trainable(weight):
        g = b * xhat
        pairs.append((weight, g.sum(reduce) if reduce else g))
    if _trainable(bias):
        pairs.append((bias, b.sum(reduce) if reduce else b))
    return _per_sample(pairs, b.shape[0], b)


def _layer_norm(m: nn.Module, a: torch.Tensor, b: torch.Tensor) -> Prepared:
    assert isinstance(m, nn.LayerNorm)
    shape = tuple(m.normalized_shape)
    xhat = F.layer_norm(a, shape, None, None, m.eps)
    return _normalisation(m, b, xhat, tuple(range(1, a.dim() - len(shape))))


def _rms_norm(m: nn.Module, a: torch.Tensor, b: torch.Tensor) -> Prepared:
    assert isinstance(m, nn.RMSNorm)
    shape = tuple(m.normalized_shape)
    xhat = F.rms_norm(a, shape, None, m.eps)
    return _normalisation(m, b, xhat, tuple(range(1, a.dim() - len(shape))))


def _group_norm(m: nn.Module, a: torch.Tensor, b: torch.Tensor) -> Prepared:
    assert isinstance(m, nn.GroupNorm)
    if a.dim() < 2:
        raise FastClipUnsupported("an nn.GroupNorm layer ran on an unbatched input")
    xhat = F.group_norm(a, m.num_groups, None, None, m.eps)
    # weight/bias are (C,): reduce the spatial dimensions, keep (B, C).
    return _normalisation(m, b, xhat, tuple(range(2, a.dim())))


#: The layer types the fast path clips (exact types: a subclass may compute something else).
LAYER_RULES: dict[type[nn.Module], LayerRule] = {
    nn.Linear: LayerRule(_linear),
    nn.Conv1d: LayerRule(_conv),
    nn.Conv2d: LayerRule(_conv),
    nn.Embedding: LayerRule(_embedding, _refuse_embedding),
    nn.LayerNorm: LayerRule(_layer_norm),
    nn.RMSNorm: LayerRule(_rms_norm),
    nn.GroupNorm: LayerRule(_group_norm),
}


def _rule_names() -> str:
    return ", ".join(f"nn.{t.__name__}" for t in LAYER_RULES)


def fast_clip_unsupported_reasons(model: nn.Module) -> list[str]:
    """Why the fast path cannot privatise ``model`` from its structure (empty when it can).

    Every trainable parameter must belong to a layer whose exact type has a rule in
    :data:`LAYER_RULES` (and whose configuration the rule accepts). A parameter shared by two
    layers (tied weights) has a per-sample gradient that is the sum of two layers' terms,
    whose norm the per-layer identities cannot give. A layer that runs twice in one pass has
    the same problem; that shows only when the model runs (:func:`fast_clip_runtime_reasons`).
    """
    reasons: list[str] = []
    owners: dict[int, list[str]] = {}
    ruled: dict[int, nn.Module] = {}
    kind: dict[int, str] = {}
    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
            kind[id(p)] = type(m).__name__  # the innermost owner
            if type(m) in LAYER_RULES:
                ruled[id(p)] = m
    refused: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = ruled.get(id(p))
        if layer is None:
            reasons.append(
                f"parameter {name!r} is in a {kind[id(p)]} layer, which has no fast-clipping "
                f"rule (the fast path clips only {_rule_names()}, exact types)"
            )
        elif len(owners[id(p)]) > 1:
            reasons.append(
                f"parameter {name!r} is shared by {', '.join(owners[id(p)])} (tied weights)"
            )
        elif id(layer) not in refused:
            why = LAYER_RULES[type(layer)].refuse(layer)
            if why is not None:
                refused.add(id(layer))
                reasons.append(f"parameter {name!r}: nn.{type(layer).__name__} with {why}")
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
    of the summed loss for every parameter. It differs when a layer runs twice, when its
    output is changed in place, or when a parameter is also used outside its layer's call
    (e.g. ``x @ layer.weight.T``), none of which the structure shows.
    """
    if fast_clip_unsupported_reasons(model):
        return []  # the structural reasons say it already
    clipper = FastClipper(model)
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
                "(the parameter is used outside its layer's call)"
            )
    return reasons


class FastClipper:
    """Captures the inputs/outputs of the ruled layers during a forward pass and returns
    clipped gradient sums."""

    def __init__(self, model: nn.Module) -> None:
        reasons = fast_clip_unsupported_reasons(model)
        if reasons:
            raise FastClipUnsupported("fast clipping unsupported: " + "; ".join(reasons))
        self._layers = [
            m
            for m in model.modules()
            if type(m) in LAYER_RULES and any(p.requires_grad for p in m.parameters())
        ]
        self._records: list[tuple[nn.Module, torch.Tensor, torch.Tensor, int]] = []
        self._armed = False
        self._handles = [m.register_forward_hook(self._capture) for m in self._layers]

    def _capture(
        self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        if self._armed:
            self._records.append((module, inputs[0].detach(), output, output._version))

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Record the ruled layers of the forward pass run inside this block."""
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
        squared, prepared = self._prepare(loss_sum)
        clip = (max_grad_norm / (squared.sqrt() + _NORM_EPS)).clamp(max=1.0)
        return [pair for sums in prepared for pair in sums(clip)]

    def per_sample_norms(self, loss_sum: torch.Tensor) -> torch.Tensor:
        """The per-sample gradient norms ``‖∇ loss_i‖`` over all trainable parameters (B,)."""
        return self._prepare(loss_sum)[0].sqrt()

    def _prepare(
        self, loss_sum: torch.Tensor
    ) -> tuple[
        torch.Tensor, list[Callable[[torch.Tensor], list[tuple[nn.Parameter, torch.Tensor]]]]
    ]:
        records, self._records = self._records, []
        batch = self._check(records)
        outputs = [out for _, _, out, _ in records]
        backprops = torch.autograd.grad(loss_sum, outputs, allow_unused=True)
        squared = torch.zeros(batch, dtype=loss_sum.dtype, device=loss_sum.device)
        prepared = []
        for (layer, a, out, _), b in zip(records, backprops, strict=True):
            if b is None:  # the output does not reach the loss: zero gradients
                b = torch.zeros_like(out)
            sq, sums = LAYER_RULES[type(layer)].prepare(layer, a, b.detach())
            squared += sq
            prepared.append(sums)
        return squared, prepared

    @staticmethod
    def _check(records: list[tuple[nn.Module, torch.Tensor, torch.Tensor, int]]) -> int:
        if not records:
            raise FastClipUnsupported("no layer with a fast-clipping rule ran in the forward pass")
        batch = records[0][1].shape[0] if records[0][1].dim() else 0
        seen: set[int] = set()
        for layer, a, out, version in records:
            name = f"nn.{type(layer).__name__}"
            if id(layer) in seen:
                # A layer used twice has per-sample gradients that are sums of two terms;
                # the per-layer norm identities would miss the cross term.
                raise FastClipUnsupported(f"a layer ({name}) ran twice in one forward pass")
            seen.add(id(layer))
            if out._version != version:
                raise FastClipUnsupported(
                    f"a layer's ({name}) output was modified in place (e.g. ReLU(inplace=True))"
                )
            if a.dim() == 0 or out.dim() == 0 or a.shape[0] != batch or out.shape[0] != batch:
                raise FastClipUnsupported(
                    f"a layer ({name}) ran on a tensor whose first dimension is not the batch"
                )
        return batch


#: The name of the Linear-only clipper this generalises (kept for callers and tests).
LinearClipper = FastClipper
