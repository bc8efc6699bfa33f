"""The model owner's training plan (its intellectual property: the host never sees it).

A small gated network: the inputs are normalised by constants the model owner measured on its
own data (buffers, shipped in the initial weights and never trained), then two gated hidden
layers. The initial weights are the model owner's pretraining on its own rows; the consortium
fine-tunes them on the hospitals' data inside the enclave.
"""

from __future__ import annotations

from torch import nn

from . import layers


def build_model(feature_shape: tuple[int, ...], num_outputs: int, *, hidden: int = 32) -> nn.Module:
    return layers.GatedNet(feature_shape[0], hidden, num_outputs)
