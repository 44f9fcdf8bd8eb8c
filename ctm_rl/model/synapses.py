"""Synapse models: the cross-neuron map from (features, last post-activations) to new pre-activations."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _glu_block(in_features: int, width: int) -> list[nn.Module]:
    return [nn.Linear(in_features, 2 * width), nn.GLU(dim=-1), nn.LayerNorm(width)]


class UNetBody(nn.Module):
    """The U-Net after its input layer: widths shrink linearly from ``d_model`` to ``min_width`` and grow
    back, with layer-normed skip connections at each level.

    :param d_model: width of the input layer's output and of the result, the number of neurons.
    :param depth: number of widths on the way down; ``depth - 1`` down and up blocks.
    :param min_width: width at the bottleneck.
    """

    def __init__(self, d_model: int, depth: int, min_width: int = 16) -> None:
        super().__init__()
        widths = [int(w) for w in np.linspace(d_model, min_width, depth)]
        self.first = nn.Sequential(nn.LayerNorm(widths[0]), nn.SiLU())
        self.down = nn.ModuleList(
            nn.Sequential(nn.Linear(wide, narrow), nn.LayerNorm(narrow), nn.SiLU())
            for wide, narrow in zip(widths[:-1], widths[1:])
        )
        self.up = nn.ModuleList(
            nn.Sequential(nn.Linear(narrow, wide), nn.LayerNorm(wide), nn.SiLU())
            for wide, narrow in zip(widths[:-1], widths[1:])
        )
        self.skip_norms = nn.ModuleList(nn.LayerNorm(w) for w in widths[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = [self.first(x)]
        for block in self.down:
            levels.append(block(levels[-1]))
        out = levels[-1]
        # Climb back up from the bottleneck, adding the matching level on the way down.
        for level in reversed(range(len(self.up))):
            out = self.skip_norms[level](self.up[level](out) + levels[level])
        return out


class Synapses(nn.Module):
    """The cross-neuron map ``(features, last post-activations) -> new pre-activations``.

    Depth 1 is two ``Linear -> GLU -> LayerNorm`` blocks; depth > 1 is a U-Net-shaped MLP. Both start with
    one linear layer over the concatenated input. The features do not change between ticks and are known
    for a whole sequence in advance, so their share of that layer (:meth:`project_features`) is computed
    once, as one matrix product, and each tick adds only the post-activations' share (:meth:`forward`).
    The layer's weight is kept as those two blocks, ``feature_weight`` and ``recurrent_weight``: slicing one
    weight would make every backward pass zero-fill and copy a gradient the size of the whole weight.

    :param d_features: width of the features.
    :param d_model: number of neurons.
    :param depth: synapse depth.
    """

    def __init__(self, d_features: int, d_model: int, depth: int) -> None:
        super().__init__()
        self.d_features = d_features
        width = 2 * d_model if depth == 1 else d_model
        # Initialised as one nn.Linear(d_features + d_model, width) would be.
        bound = 1.0 / math.sqrt(d_features + d_model)
        self.feature_weight = nn.Parameter(torch.empty(width, d_features).uniform_(-bound, bound))
        self.recurrent_weight = nn.Parameter(torch.empty(width, d_model).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(width).uniform_(-bound, bound))
        if depth == 1:
            self.body: nn.Module = nn.Sequential(nn.GLU(dim=-1), nn.LayerNorm(d_model), *_glu_block(d_model, d_model))
        else:
            self.body = UNetBody(d_model, depth)

    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """The features' share of the input layer, bias included: ``(..., d_features) -> (..., width)``."""
        return F.linear(features, self.feature_weight, self.bias)

    def forward(self, projected_features: torch.Tensor, post_activation: torch.Tensor) -> torch.Tensor:
        """:param projected_features: :meth:`project_features` of this step's features, ``(B, width)``.
        :param post_activation: the latest post-activations, ``(B, d_model)``.
        :return: new pre-activations ``(B, d_model)``."""
        return self.body(torch.addmm(projected_features, post_activation, self.recurrent_weight.t()))
