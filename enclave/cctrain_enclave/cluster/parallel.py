"""Data-parallel steps across the ranks of a cluster, exact to single-process DP-SGD.

Rank 0 is the coordinator: it ingested every shard, holds the journal, the sampler, the noise,
the accountant, the optimizer and the checkpoints, exactly as a one-rank enclave does. The
other ranks are stateless workers: at start rank 0 sends each one its contiguous slice of the
training rows, the training plan (and the model package) over the sealed link; then at every
step

1. rank 0 draws the step's batch from the **global** sampler (Poisson at q = 1/⌈N/B⌉ of the
   global row count under DP, one secret draw, as one rank would), and sends each worker the
   rows of the batch it holds and the current parameters;
2. each rank computes the sum of its rows' clipped per-sample gradients (under DP) or of its
   rows' loss gradients (without DP), and the workers send theirs back;
3. rank 0 adds them up, adds the noise **once** (N(0, σ²C²) for the global step), divides by
   the global expected batch size, steps the optimizer, and the accountant steps once.

So the mechanism is the single-process one: the same batch law, the same sensitivity C, the
same noise, the same steps (the only difference is the order of a float sum). The parameters
rank 0 sends at the start of each step are what every worker computes on, so no rank's state
can drift, and a restarted cluster resumes from rank 0's checkpoint alone.

What crosses the links is sealed (:mod:`.links`): rows, parameters, the workers' un-noised
gradient sums. A rank that fails, goes away or sends anything that does not authenticate
stops the run (:class:`.links.LinkError`); it resumes from the last checkpoint on restart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from cctrain.errors import CctrainError
from cctrain.policy import Policy, thaw

from .handshake import ClusterSession
from .links import LinkError

__all__ = ["Coordinator", "follow", "partition"]

log = logging.getLogger("cctrain.enclave.cluster")

#: Rows travel to a worker in messages of at most this many bytes.
ROWS_CHUNK_BYTES = 32 << 20


def partition(num_rows: int, world: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal row ranges ``[lo, hi)``, one per rank."""
    bounds = [num_rows * r // world for r in range(world + 1)]
    return [(bounds[r], bounds[r + 1]) for r in range(world)]


def _flat(tensors: list[torch.Tensor | None], like: list[nn.Parameter]) -> np.ndarray:
    parts = [
        (torch.zeros_like(p) if t is None else t).detach().reshape(-1).to(torch.float32)
        for t, p in zip(tensors, like, strict=True)
    ]
    return torch.cat(parts).cpu().numpy() if parts else np.zeros(0, np.float32)


def _unflat(flat: np.ndarray, like: list[nn.Parameter]) -> list[torch.Tensor]:
    sizes = [p.numel() for p in like]
    if flat.dtype != np.float32 or flat.ndim != 1 or flat.size != sum(sizes):
        raise LinkError(f"a gradient of {flat.size} values, the model has {sum(sizes)}")
    t = torch.from_numpy(flat)
    return [c.view_as(p).to(p.dtype) for c, p in zip(t.split(sizes), like, strict=True)]


class Coordinator:
    """Rank 0's side: sends work, gathers the workers' sums."""

    def __init__(self, session: ClusterSession) -> None:
        if session.rank != 0:
            raise ValueError("the coordinator is rank 0")
        self.session = session
        self.links = session.links
        self.workers = list(range(1, session.world_size))
        self.ranges: list[tuple[int, int]] = []
        self._params: list[nn.Parameter] = []
        self._sent = False
        #: Workers rank 0 still owes a read (their "ready" or this step's sums), or whose
        #: link failed: they are not waiting for a message, so :meth:`finish` skips them
        #: (gloo's send would block until the timeout); they end when the group closes.
        self._owing: set[int] = set(self.workers)
        #: Under DP, C (privacy.max_grad_norm): a worker's clipped sum over n rows has norm at
        #: most n*C, checked on every reply, so even a faulty rank cannot exceed the
        #: sensitivity the noise is calibrated to.
        self._clip: float | None = None
        self._rows_in_step: dict[int, int] = {}

    # ---- setup
    def start(
        self,
        *,
        features: np.ndarray,
        labels: np.ndarray,
        model: nn.Module,
        plan: Mapping[str, Any],
        model_package: bytes | None,
        custom_model_source: bytes | None,
    ) -> tuple[int, int]:
        """Send every worker its rows and the plan; returns rank 0's own row range. On any
        failure the workers that are ready are told the run stopped."""
        try:
            self.ranges = partition(len(labels), self.session.world_size)
            privacy = plan.get("privacy") or {}
            self._clip = float(privacy["max_grad_norm"]) if privacy.get("enabled") else None
            self._params = [p for p in model.parameters() if p.requires_grad]
            blobs = [
                np.frombuffer(model_package or b"", np.uint8),
                np.frombuffer(custom_model_source or b"", np.uint8),
            ]
            row_bytes = max(int(np.prod(features.shape[1:])) * features.itemsize, 1)
            per_chunk = max(ROWS_CHUNK_BYTES // row_bytes, 1)
            for r in self.workers:
                lo, hi = self.ranges[r]
                self.links.send_msg(
                    r,
                    "setup",
                    dict(plan) | {"rows": hi - lo, "feature_shape": list(features.shape[1:])},
                    blobs,
                )
                for start in range(lo, hi, per_chunk):
                    end = min(start + per_chunk, hi)
                    self.links.send_msg(r, "rows", {}, [features[start:end], labels[start:end]])
            for r in self.workers:
                meta, _ = self.links.recv_msg(r, "ready")
                if meta.get("error"):
                    raise CctrainError(f"rank {r} cannot train this plan: {meta['error']}")
                self._owing.discard(r)
            log.info("cluster: %d workers hold their rows", len(self.workers))
            return self.ranges[0]
        except BaseException:
            self.finish("stopped")
            raise

    # ---- steps
    def dispatch(self, step: int, idx: torch.Tensor) -> torch.Tensor:
        """Send each worker its rows of this step's batch ``idx`` (global row numbers) and
        the current parameters; returns rank 0's own rows of the batch."""
        params = _flat([p.data for p in self._params], self._params)
        for r in self.workers:
            lo, hi = self.ranges[r]
            local = idx[(idx >= lo) & (idx < hi)] - lo
            self.links.send_msg(
                r,
                "step",
                {"op": "step", "step": step, "batch": len(idx)},
                [local.numpy().astype(np.int64), params],
            )
            self._owing.add(r)
            self._rows_in_step[r] = len(local)
        lo, hi = self.ranges[0]
        mine = idx[(idx >= lo) & (idx < hi)]
        self._sent = True
        return mine

    def collect(
        self, sums: list[torch.Tensor | None], loss_sum: torch.Tensor
    ) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        """Rank 0's own sums plus every worker's (the noise is added after, once)."""
        if not self._sent:
            raise CctrainError("cluster: collect without a dispatched step")
        self._sent = False
        total = [None if s is None else s.clone() for s in sums]
        loss = loss_sum.detach().clone().to(torch.float64)
        for r in self.workers:
            meta, arrays = self.links.recv_msg(r, "sums")
            if meta.get("error"):
                raise CctrainError(f"rank {r} failed its step: {meta['error']}")
            if len(arrays) != 1:
                raise LinkError(f"rank {r} sent {len(arrays)} arrays for its sums")
            their_loss = meta.get("loss")
            if isinstance(their_loss, bool) or not isinstance(their_loss, int | float):
                raise LinkError(f"rank {r} sent no loss with its sums")
            if not meta.get("empty"):
                flat = arrays[0]
                if not np.isfinite(flat).all():
                    raise CctrainError(f"rank {r} sent non-finite gradient sums")
                if self._clip is not None:
                    bound = self._clip * self._rows_in_step.get(r, 0)
                    norm = float(np.linalg.norm(flat.astype(np.float64)))
                    if norm > bound * (1 + 1e-4) + 1e-6:
                        raise CctrainError(
                            f"rank {r}'s clipped sum has norm {norm:.6g} over "
                            f"{self._rows_in_step.get(r, 0)} rows, more than the bound "
                            f"{bound:.6g} the DP noise is calibrated to"
                        )
                for i, theirs in enumerate(_unflat(flat, self._params)):
                    own = total[i]
                    total[i] = theirs if own is None else own.add_(theirs.to(own.device))
            loss += float(their_loss)
            self._owing.discard(r)
        return total, loss

    def finish(self, reason: str = "done") -> None:
        """Tell every worker that waits for a message that the run ended (best effort: a
        worker that went away is gone; one rank 0 owes a read, or whose link failed, learns
        it when the process group closes)."""
        for r in self.workers:
            if r in self._owing:
                continue
            try:
                self.links.send_msg(r, "step", {"op": reason})
            except LinkError:
                pass


# --------------------------------------------------------------------------- workers


def follow(session: ClusterSession, policy: Policy) -> str:
    """A worker's whole run: receive its rows (and the model package) from rank 0, compute
    its part of every step until rank 0 says it ended. Returns how it ended ("done" or
    "stopped"). The plan is the worker's own signed ``policy``'s, not what rank 0 says (the
    package is checked against the policy's pin before any of its code runs)."""
    from cctrain_enclave.trainer.objective import objective_for
    from cctrain_enclave.trainer.plan import apply_augment, load_plan_hooks, plan_objective
    from cctrain_enclave.trainer.train import _model_spec, build_model_from_spec

    links = session.links
    meta, blobs = links.recv_msg(0, "setup")
    training, privacy = thaw(policy.training), thaw(policy.privacy)
    if meta.get("training") != training or meta.get("privacy") != privacy:
        links.send_msg(0, "ready", {"error": "rank 0's plan is not this rank's signed policy"})
        raise LinkError("rank 0 sent a training plan other than the signed policy's")
    package = blobs[0].tobytes() or None
    custom = blobs[1].tobytes() or None
    rows = int(meta["rows"])
    shape = tuple(int(d) for d in meta["feature_shape"])
    xs, ys = [], []
    have = 0
    while have < rows:
        _, (x, y) = links.recv_msg(0, "rows")
        xs.append(x)
        ys.append(y)
        have += len(y)
    features = torch.from_numpy(np.concatenate(xs) if xs else np.zeros((0, *shape), np.float32))
    labels = torch.from_numpy(np.concatenate(ys) if ys else np.zeros(0, np.int64))
    dp = bool(privacy.get("enabled"))
    try:
        spec = _model_spec(training)
        objective = objective_for(policy.task, num_outputs=policy.num_outputs)
        torch.manual_seed(int(training.get("seed", 0)))
        model = build_model_from_spec(
            spec,
            shape,
            objective.num_outputs,
            custom_model_source=custom,
            model_package=package,
        )
        hooks = load_plan_hooks(package, spec, training)
        objective = plan_objective(objective, hooks, training, per_row=dp)
        params = [p for p in model.parameters() if p.requires_grad]
        clipper = None
        if dp:
            from cctrain_enclave.trainer.fastclip import FastClipper

            clipper = FastClipper(model)
    except Exception as exc:  # noqa: BLE001 - reported to rank 0, which fails the run
        links.send_msg(0, "ready", {"error": f"{type(exc).__name__}: {exc}"})
        raise
    links.send_msg(0, "ready", {})
    model.train()
    max_norm = float(privacy.get("max_grad_norm", 1.0))
    seed = int(training.get("seed", 0))
    steps = 0
    while True:
        msg, arrays = links.recv_msg(0, "step")
        op = msg.get("op")
        if op != "step":
            log.info("cluster worker %d: run %s after %d steps", session.rank, op, steps)
            return str(op)
        idx = torch.from_numpy(arrays[0])
        with torch.no_grad():
            for p, v in zip(params, _unflat(arrays[1], params), strict=True):
                p.copy_(v)
        if len(idx) == 0:
            links.send_msg(0, "sums", {"loss": 0.0, "empty": True}, [np.zeros(0, np.float32)])
            steps += 1
            continue
        try:
            xb, yb = apply_augment(
                hooks, features[idx], labels[idx], seed=seed, step=int(msg["step"]), per_row=dp
            )
            if clipper is not None:
                with clipper.capture():
                    out = model(xb)
                loss = objective.loss(out, yb, "sum")
                got = dict(
                    (id(p), g)
                    for p, g in clipper.clipped_gradient_sum(loss, max_grad_norm=max_norm)
                )
                sums = [got.get(id(p)) for p in params]
            else:
                model.zero_grad(set_to_none=True)
                loss = objective.loss(model(xb), yb, "sum") / float(msg["batch"])
                loss.backward()
                sums = [p.grad for p in params]
                loss = loss * float(msg["batch"])
        except Exception as exc:  # noqa: BLE001 - reported; the run fails on rank 0
            links.send_msg(0, "sums", {"error": type(exc).__name__}, [np.zeros(0, np.float32)])
            raise
        links.send_msg(0, "sums", {"loss": float(loss.detach())}, [_flat(sums, params)])
        steps += 1
