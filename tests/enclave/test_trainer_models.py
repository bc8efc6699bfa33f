"""Model registry, custom model pinning, and a little training of each architecture."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from cctrain.errors import PolicyError
from cctrain_enclave.trainer import (
    MODEL_BUILDERS,
    CustomModelHashMismatch,
    build_builtin_model,
    build_model_from_spec,
    load_custom_model,
    train,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(shape: tuple[int, ...], rows: int = 256, classes: int = 3):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(rows, *shape)).astype(np.float32)
    proj = rng.normal(size=(int(np.prod(shape)), classes))
    y = (x.reshape(rows, -1) @ proj).argmax(1).astype(np.int64)
    return x, y


def _training(model: dict, epochs: int = 3) -> dict:
    return {
        "task": "classification",
        "model": model,
        "optimizer": {"name": "adam", "lr": 0.01},
        "epochs": epochs,
        "batch_size": 32,
        "seed": 0,
    }


@pytest.mark.parametrize(
    ("name", "params", "shape"),
    [
        ("logreg", {}, (10,)),
        ("mlp", {"hidden": [16, 8], "activation": "tanh"}, (10,)),
        ("cnn", {"channels": [4, 8], "hidden": 16}, (1, 8, 8)),
    ],
)
def test_each_builtin_model_trains_and_rebuilds(name, params, shape):
    x, y = _data(shape)
    model = {"name": name, "params": params}
    before = train(
        x,
        y,
        num_classes=3,
        training=_training(model, epochs=1) | {"optimizer": {"name": "sgd", "lr": 1e-9}},
        privacy={"enabled": False},
        simulated_platform=False,
        checkpoint=None,
        progress=None,
    )
    result = train(
        x,
        y,
        num_classes=3,
        training=_training(model),
        privacy={"enabled": False},
        simulated_platform=False,
        checkpoint=None,
        progress=None,
    )
    assert result.metrics["steps"] == 3 * 8
    assert result.metrics["samples"] == 3 * 256
    assert result.metrics["train_loss"] < before.metrics["train_loss"]
    assert not any(k.startswith("_module") for k in result.state_dict)
    rebuilt = build_model_from_spec(result.model_spec, shape, 3)
    rebuilt.load_state_dict(result.state_dict)  # strict: same architecture, plain keys
    with torch.no_grad():
        acc = (rebuilt.eval()(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert acc == pytest.approx(result.metrics["train_accuracy"])


def test_registry_has_the_documented_models():
    assert {"logreg", "mlp", "cnn"} <= set(MODEL_BUILDERS)


def test_unknown_params_are_refused_by_name():
    with pytest.raises(PolicyError) as err:
        build_builtin_model("mlp", (4,), 2, {"hidden": [4], "widht": 3, "depth": 2})
    assert any("'widht'" in p for p in err.value.problems)
    assert any("'depth'" in p for p in err.value.problems)


def test_bad_param_values_are_all_listed():
    with pytest.raises(PolicyError) as err:
        build_builtin_model(
            "mlp", (4,), 2, {"hidden": [4, -1], "activation": "swish", "dropout": 2}
        )
    assert len(err.value.problems) == 3


def test_cnn_needs_image_shaped_features():
    with pytest.raises(PolicyError, match="channels, height, width"):
        build_builtin_model("cnn", (64,), 2, {})


def test_unknown_model_is_refused():
    with pytest.raises(PolicyError, match="not built in"):
        build_builtin_model("resnet", (4,), 2, {})


CUSTOM_SOURCE = b"""
from torch import nn

def build_model(feature_shape, num_classes, *, width=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(feature_shape[0], width), nn.ReLU(),
                         nn.Linear(width, num_classes))
"""


def test_custom_model_hash_mismatch_is_refused_before_execution(tmp_path: Path):
    marker = tmp_path / "executed"
    evil = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n".encode()
    evil += CUSTOM_SOURCE
    pinned = hashlib.sha256(CUSTOM_SOURCE).hexdigest()
    with pytest.raises(CustomModelHashMismatch) as err:
        load_custom_model(
            evil,
            expected_sha256=pinned,
            entry="build_model",
            feature_shape=(4,),
            num_classes=2,
            params={},
        )
    assert pinned in str(err.value)
    assert hashlib.sha256(evil).hexdigest() in str(err.value)
    assert not marker.exists()
    # The same bytes, pinned correctly, do run: the marker proves the check above is what
    # stopped execution.
    load_custom_model(
        evil,
        expected_sha256=hashlib.sha256(evil).hexdigest(),
        entry="build_model",
        feature_shape=(4,),
        num_classes=2,
        params={},
    )
    assert marker.read_text() == "ran"


def test_custom_model_trains_through_train():
    x, y = _data((6,))
    model = {
        "name": "custom",
        "source_sha256": hashlib.sha256(CUSTOM_SOURCE).hexdigest(),
        "entry": "build_model",
        "params": {"width": 5},
    }
    result = train(
        x,
        y,
        num_classes=3,
        training=_training(model, epochs=1),
        privacy={"enabled": False},
        simulated_platform=False,
        checkpoint=None,
        progress=None,
        custom_model_source=CUSTOM_SOURCE,
    )
    assert result.state_dict["1.weight"].shape == (5, 6)
    assert result.model_spec["source_sha256"] == model["source_sha256"]
    rebuilt = build_model_from_spec(result.model_spec, (6,), 3, custom_model_source=CUSTOM_SOURCE)
    rebuilt.load_state_dict(result.state_dict)


def test_custom_model_missing_entry_point():
    with pytest.raises(PolicyError, match="no callable 'make'"):
        load_custom_model(
            CUSTOM_SOURCE,
            expected_sha256=hashlib.sha256(CUSTOM_SOURCE).hexdigest(),
            entry="make",
            feature_shape=(4,),
            num_classes=2,
            params={},
        )


def test_training_config_problems_are_all_listed():
    x, y = _data((4,))
    bad = {
        "task": "ranking",
        "model": {"name": "mlp", "params": {}},
        "optimizer": {"name": "sgd", "lr": -1, "nesterof": True},
        "epochs": 0,
        "batch_size": 32,
        "seed": 0,
    }
    with pytest.raises(PolicyError) as err:
        train(
            x,
            y,
            num_classes=3,
            training=bad,
            privacy={"enabled": False},
            simulated_platform=False,
            checkpoint=None,
            progress=None,
        )
    assert len(err.value.problems) == 4
