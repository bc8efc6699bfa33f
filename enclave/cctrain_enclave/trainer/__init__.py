"""The trainer that runs inside the enclave: models, DP-SGD, checkpoints.

Public entry points are re-exported here; the submodules are small and separately testable.
"""

from __future__ import annotations

from .checkpoint import BlobCheckpoints, Checkpointer, CheckpointError, CheckpointStore
from .dp import PrivacyLedger, plan_privacy, validate_dp_config
from .fastclip import FastClipUnsupported
from .models import (
    MODEL_BUILDERS,
    CustomModelHashMismatch,
    build_builtin_model,
    load_custom_model,
    register_model,
)
from .noise import AesCtrGaussian
from .objective import Objective, classification, objective_for, regression
from .train import (
    ProgressEvent,
    TrainingRandomness,
    TrainingResult,
    TrainingStopped,
    build_model_from_spec,
    train,
)

__all__ = [
    "MODEL_BUILDERS",
    "AesCtrGaussian",
    "BlobCheckpoints",
    "CheckpointError",
    "CheckpointStore",
    "Checkpointer",
    "CustomModelHashMismatch",
    "FastClipUnsupported",
    "Objective",
    "PrivacyLedger",
    "ProgressEvent",
    "TrainingRandomness",
    "TrainingResult",
    "TrainingStopped",
    "build_builtin_model",
    "build_model_from_spec",
    "classification",
    "load_custom_model",
    "objective_for",
    "plan_privacy",
    "register_model",
    "regression",
    "train",
    "validate_dp_config",
]
