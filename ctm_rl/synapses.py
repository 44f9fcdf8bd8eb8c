"""Synapse models: the cross-neuron map from (features, last post-activations) to new pre-activations."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _glu_block(in_features: int, width: int) -> list[nn.Module]:
    return [nn.Linear(in_features, 2 * width), nn.GLU(dim=-1), nn.LayerNorm(width)]


class SynapseUNet(nn.Module):
    """U-Net shaped MLP: widths shrink linearly from ``d_model`` to ``min_width`` and grow back, with
    layer-normed skip connections at each level.

    :param in_features: input width (features + ``d_model``).
    :param d_model: output width, the number of neurons.
    :param depth: number of widths on the way down; ``depth - 1`` down and up blocks.
    :param min_width: width at the bottleneck.
    """

    def __init__(self, in_features: int, d_model: int, depth: int, min_width: int = 16) -> None:
        super().__init__()
        widths = [int(w) for w in np.linspace(d_model, min_width, depth)]
        self.first = nn.Sequential(nn.Linear(in_features, widths[0]), nn.LayerNorm(widths[0]), nn.SiLU())
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


def build_synapses(in_features: int, d_model: int, depth: int) -> nn.Module:
    """Depth 1: two ``Linear -> GLU -> LayerNorm`` blocks. Depth > 1: :class:`SynapseUNet`.

    :param in_features: input width (features + ``d_model``).
    :param d_model: number of neurons.
    :param depth: synapse depth.
    """
    if depth == 1:
        return nn.Sequential(*_glu_block(in_features, d_model), *_glu_block(d_model, d_model))
    return SynapseUNet(in_features, d_model, depth)
