"""FedAvg with Flower on the three-hospital demo's data; run by ``bench_flower.py`` in its own venv.

Runs inside ``benchmarks/.venv-flower`` (flwr, torch 2.13.0 CPU, numpy, scikit-learn, opacus),
never in the project's venv. Prints one JSON document on stdout.

How the federation runs: Flower's own server loop (``flwr.server.Server.fit``: its
``ThreadPoolExecutor`` fan-out, ``FedAvg.configure_fit`` / ``aggregate_fit`` weighted by
``num_examples``, centralised ``evaluate_fn``) drives the three hospitals' ``NumPyClient``s
through an in-process ``ClientProxy``. Only the transport is replaced: ``flwr.simulation``
needs Ray (not installed), and a real deployment would add a gRPC round trip per client and
round on top of the numbers here. Each client holds one of the demo's shards
(``examples/three_hospitals/data.py``: non-IID), trains the same MLP (64→128→64→10) with the
same optimiser as cctrain's policy, and the final global model is scored on the demo's held-out
test set.

DP (``--dp``): sample-level DP-SGD at each client with Opacus (Poisson sampling, per-sample
clipping, Gaussian noise, RDP accountant kept across rounds), the variant of Flower's
documentation for record-level privacy. Every record lives at exactly one client, so the
federation's record-level ε is the largest client ε (parallel composition; every round's
update is a DP-SGD iterate the accountant already covers). Each client's batch is chosen so
its sample rate and steps per epoch equal the pooled run's (q = 1/ceil(N/B)); the noise
multiplier is calibrated for all its steps over all rounds to the target ε.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def build_mlp(torch: Any, features: int, classes: int, hidden: list[int]) -> Any:
    """The layers of cctrain's ``mlp`` builder: Flatten, (Linear, ReLU)*, Linear."""
    nn = torch.nn
    layers: list[Any] = [nn.Flatten()]
    width = features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--local-epochs", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True, help="pooled batch size")
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--hidden", default="128,64")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--max-workers", type=int, default=None, help="Server's ThreadPoolExecutor (None: Flower's)"
    )
    ap.add_argument("--dp", action="store_true")
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    args = ap.parse_args()

    warnings.filterwarnings("ignore")
    import flwr
    import torch
    import torch.nn.functional as F
    from flwr.client import NumPyClient
    from flwr.common import (
        Code,
        DisconnectRes,
        GetPropertiesRes,
        Status,
        ndarrays_to_parameters,
        parameters_to_ndarrays,
    )
    from flwr.server import Server
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy import FedAvg

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(args.repo / "examples" / "three_hospitals"))
    from data import FEATURES, NUM_CLASSES, load_demo_data

    data = load_demo_data()
    x_test, y_test = (torch.from_numpy(a) for a in data.test)
    hidden = [int(h) for h in args.hidden.split(",")]
    pooled_rows = sum(len(y) for _, y in data.shards.values())
    pooled_steps_per_epoch = math.ceil(pooled_rows / args.batch_size)

    def new_model() -> Any:
        return build_mlp(torch, FEATURES, NUM_CLASSES, hidden)

    def get_weights(model: Any) -> list[np.ndarray]:
        return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]

    def set_weights(model: Any, weights: list[np.ndarray]) -> None:
        keys = list(model.state_dict().keys())
        model.load_state_dict(
            {k: torch.from_numpy(np.asarray(w)) for k, w in zip(keys, weights, strict=True)}
        )

    class Hospital(NumPyClient):  # type: ignore[misc]
        def __init__(self, cid: int, x: np.ndarray, y: np.ndarray) -> None:
            self.cid = cid
            self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
            self.gen = torch.Generator().manual_seed(args.seed * 1000 + cid)
            self.round = 0
            if args.dp:
                from opacus import PrivacyEngine
                from opacus.accountants.utils import get_noise_multiplier

                # Same sample rate and steps per epoch as the pooled run.
                self.batch = math.ceil(len(self.y) / pooled_steps_per_epoch)
                steps_per_epoch = math.ceil(len(self.y) / self.batch)
                self.sample_rate = 1.0 / steps_per_epoch
                self.steps_planned = steps_per_epoch * args.local_epochs * args.rounds
                self.sigma = get_noise_multiplier(
                    target_epsilon=args.epsilon,
                    target_delta=args.delta,
                    sample_rate=self.sample_rate,
                    steps=self.steps_planned,
                    accountant="rdp",
                )
                self.engine = PrivacyEngine(accountant="rdp")
            else:
                self.batch = args.batch_size

        def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
            return get_weights(new_model())

        def fit(
            self, parameters: list[np.ndarray], config: dict[str, Any]
        ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            self.round += 1
            model = new_model()
            set_weights(model, parameters)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
            if args.dp:
                from torch.utils.data import DataLoader, TensorDataset

                loader = DataLoader(
                    TensorDataset(self.x, self.y), batch_size=self.batch, generator=self.gen
                )
                model, opt, loader = self.engine.make_private(
                    module=model,
                    optimizer=opt,
                    data_loader=loader,
                    noise_multiplier=self.sigma,
                    max_grad_norm=args.max_grad_norm,
                    poisson_sampling=True,
                )
                for _ in range(args.local_epochs):
                    for xb, yb in loader:
                        opt.zero_grad(set_to_none=True)
                        if len(yb):
                            F.cross_entropy(model(xb), yb).backward()
                        opt.step()
                weights = get_weights(model._module)
                return weights, len(self.y), {"epsilon": self.engine.get_epsilon(args.delta)}
            for _ in range(args.local_epochs):
                for idx in torch.randperm(len(self.y), generator=self.gen).split(self.batch):
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(model(self.x[idx]), self.y[idx]).backward()
                    opt.step()
            return get_weights(model), len(self.y), {}

    class InProcessProxy(ClientProxy):  # type: ignore[misc]
        """Calls the client directly: Flower's server loop without a transport."""

        def __init__(self, cid: str, client: Any) -> None:
            super().__init__(cid)
            self.client = client

        def get_properties(self, ins: Any, timeout: Any, group_id: Any) -> Any:
            return GetPropertiesRes(status=Status(code=Code.OK, message=""), properties={})

        def get_parameters(self, ins: Any, timeout: Any, group_id: Any) -> Any:
            return self.client.get_parameters(ins)

        def fit(self, ins: Any, timeout: Any, group_id: Any) -> Any:
            return self.client.fit(ins)

        def evaluate(self, ins: Any, timeout: Any, group_id: Any) -> Any:
            return self.client.evaluate(ins)

        def reconnect(self, ins: Any, timeout: Any, group_id: Any) -> Any:
            return DisconnectRes(reason="")

    def test_accuracy(weights: list[np.ndarray]) -> float:
        model = new_model()
        set_weights(model, weights)
        model.eval()
        with torch.no_grad():
            return float((model(x_test).argmax(1) == y_test).float().mean())

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    clients = [
        Hospital(i, x, y) for i, (x, y) in enumerate(data.shards.values())
    ]  # DP: noise calibration happens here, inside the timed region (as in cctrain's train)
    manager = SimpleClientManager()
    for i, c in enumerate(clients):
        manager.register(InProcessProxy(str(i), c.to_client()))
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=len(clients),
        min_evaluate_clients=0,
        min_available_clients=len(clients),
        initial_parameters=ndarrays_to_parameters(get_weights(new_model())),
    )
    server = Server(client_manager=manager, strategy=strategy)
    server.set_max_workers(args.max_workers)
    server.fit(num_rounds=args.rounds, timeout=None)
    final = parameters_to_ndarrays(server.parameters)
    accuracy = test_accuracy(final)
    wall = time.perf_counter() - start

    epsilons = [c.engine.get_epsilon(args.delta) for c in clients] if args.dp else []
    print(
        json.dumps(
            {
                "flwr": flwr.__version__ if hasattr(flwr, "__version__") else None,
                "torch": torch.__version__,
                "accuracy": accuracy,
                "wall_s": wall,
                "rounds": args.rounds,
                "local_epochs": args.local_epochs,
                "max_workers": args.max_workers,
                "clients": [
                    {
                        "rows": int(len(c.y)),
                        "batch_size": int(c.batch),
                        **(
                            {
                                "noise_multiplier": float(c.sigma),
                                "sample_rate": float(c.sample_rate),
                                "steps": int(c.steps_planned),
                                "epsilon": float(e),
                            }
                            if args.dp
                            else {}
                        ),
                    }
                    for c, e in zip(clients, epsilons or [None] * len(clients), strict=True)
                ],
                "epsilon": max(epsilons) if epsilons else None,
                "delta": args.delta if args.dp else None,
            }
        )
    )


if __name__ == "__main__":
    main()
