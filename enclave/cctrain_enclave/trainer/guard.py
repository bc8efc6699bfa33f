"""What a DP release may contain: parameters trained by the DP step, and nothing else that
depends on the data.

The DP guarantee covers the parameters the noisy optimiser step writes. Everything else in a
model's ``state_dict`` (buffers such as BatchNorm's running statistics, parameters with
``requires_grad = False``) is written, if at all, by the model's own code, outside the
mechanism: a pinned model that copies rows into a buffer in ``forward`` would ship them in a
release certified as private. And a ``forward`` that writes into a trainable parameter puts
data there that the noise added afterwards does not hide.

:class:`StateGuard` enforces the rule by comparison, not by trusting the model's code:

* every tensor that is not a trainable parameter must be bit-for-bit its value right after
  the model was built (from the policy's seed: public, data-independent), checked at release
  and, for custom code, at every step;
* for custom code, the trainable parameters must be unchanged between the start of a step and
  the optimiser's update (checked in a step pre-hook on the wrapped torch optimiser, which
  Opacus and the fast path both call), and unchanged by the final evaluation pass.

A violation raises :class:`DpStateViolation` naming the tensor, and nothing is released.
"""

from __future__ import annotations

import torch
from torch import nn

from cctrain.errors import CctrainError

__all__ = ["DpStateViolation", "StateGuard"]


class DpStateViolation(CctrainError):
    """Model state outside the DP step changed; releasing it would break the guarantee."""


def _snapshot(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tensors.items()}


def _changed(before: dict[str, torch.Tensor], now: dict[str, torch.Tensor]) -> list[str]:
    names = sorted(set(before) | set(now))
    return [
        n
        for n in names
        if n not in before
        or n not in now
        or before[n].shape != now[n].shape
        or before[n].dtype != now[n].dtype
        or not torch.equal(before[n], now[n].detach())
    ]


class StateGuard:
    """Checks that only the DP step changes what a DP release contains."""

    def __init__(self, model: nn.Module, *, every_step: bool) -> None:
        self.model = model
        self.every_step = every_step
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        state = model.state_dict(keep_vars=True)
        #: state_dict names of the parameters the DP step trains (the certificate covers these).
        self.trainable = sorted(k for k, v in state.items() if id(v) in trainable)
        self._initial_frozen = _snapshot(self._frozen())
        self._params_at_step: dict[str, torch.Tensor] | None = None
        self._params_after_update: dict[str, torch.Tensor] | None = None
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    @property
    def frozen(self) -> list[str]:
        """Names of the released tensors that must stay at their initial value."""
        return sorted(self._initial_frozen)

    def _state(self) -> dict[str, torch.Tensor]:
        return dict(self.model.state_dict(keep_vars=True))

    def _frozen(self) -> dict[str, torch.Tensor]:
        trainable = set(self.trainable)
        return {k: v for k, v in self._state().items() if k not in trainable}

    def _trained(self) -> dict[str, torch.Tensor]:
        state = self._state()
        return {k: state[k] for k in self.trainable if k in state}

    def check_frozen(self, when: str) -> None:
        changed = _changed(self._initial_frozen, self._frozen())
        if changed:
            raise DpStateViolation(
                f"DP release refused: {', '.join(repr(n) for n in changed)} changed {when}; "
                "under DP only parameters trained by the DP step may change (a buffer or "
                "frozen parameter written by the model's code is outside the guarantee)"
            )

    # -- per step (custom code)
    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Verify, just before every optimiser update, that the step's forward/backward
        changed no model state (the update itself is the only writer)."""
        self._optimizer = optimizer
        if self.every_step:
            self._hook = optimizer.register_step_pre_hook(lambda *_: self.before_update())

    def _check_no_foreign_hooks(self) -> None:
        """Optimiser hooks registered by model code run around the update, where no snapshot
        can see them (a post-hook writing a row into a weight, a pre-hook replacing a
        gradient): under DP the only hook allowed is the guard's own."""
        from torch.optim import optimizer as torch_optimizer

        opt = self._optimizer
        foreign = bool(
            torch_optimizer._global_optimizer_pre_hooks  # noqa: SLF001
            or torch_optimizer._global_optimizer_post_hooks  # noqa: SLF001
        )
        if opt is not None:
            own = {self._hook.id} if self._hook is not None else set()
            foreign = foreign or bool(
                set(opt._optimizer_step_pre_hooks) - own  # noqa: SLF001
                or opt._optimizer_step_post_hooks  # noqa: SLF001
            )
        if foreign:
            raise DpStateViolation(
                "an optimiser step hook was registered by code other than the trainer's: it "
                "could write data into the weights around the DP update; DP training refused"
            )

    def begin_step(self) -> None:
        if self.every_step:
            self._check_no_foreign_hooks()
            # Anything written between the last update and now (not by the update) shows here.
            if self._params_after_update is not None:
                self._params_at_step = self._params_after_update
                self._refuse_changed_params(
                    "changed after the DP update of the previous step: DP training refused"
                )
            self._params_at_step = _snapshot(self._trained())

    def _refuse_changed_params(self, message: str) -> None:
        if self._params_at_step is not None:
            changed = _changed(self._params_at_step, self._trained())
            if changed:
                raise DpStateViolation(f"{', '.join(repr(n) for n in changed)} {message}")
            self._params_at_step = None

    def before_update(self) -> None:
        self._check_no_foreign_hooks()
        self._refuse_changed_params(
            "changed during the model's forward or backward pass, outside the DP update: "
            "DP training refused"
        )
        self.check_frozen("during a training step")

    def end_step(self) -> None:
        """The pre-update check must have run in this step (else nothing was checked)."""
        if self.every_step:
            if self._params_at_step is not None:
                raise DpStateViolation("the optimiser's update ran without the DP state check")
            self._check_no_foreign_hooks()
            self._params_after_update = _snapshot(self._trained())

    def detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # -- release
    def begin_release(self) -> None:
        if self._params_after_update is not None:
            self._params_at_step = self._params_after_update
            self._refuse_changed_params("changed after the last DP update: DP release refused")
        self._params_at_step = _snapshot(self._trained())

    def check_release(self) -> None:
        """After the last step and the evaluation pass: trained parameters as the last DP
        update left them, everything else as built."""
        self._refuse_changed_params(
            "changed after the last DP step (during evaluation): DP release refused"
        )
        self.check_frozen("during training")
