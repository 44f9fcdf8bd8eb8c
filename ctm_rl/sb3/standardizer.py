"""Standardising a recurrent policy's output by running statistics over its rollouts.

The CTM's synchronisation starts about a thousand times smaller than an LSTM's hidden state, and its variation
from one observation to the next is smaller still; heads that read it barely depend on the observation until it
grows (docs/learning.md). :class:`RunningStandardizer` gives the heads each synchronisation pair centred and
scaled to unit spread over the steps the agent visits, as SB3's ``VecNormalize`` does for observations.
"""

from __future__ import annotations

import torch
from torch import nn


class RunningStandardizer(nn.Module):
    """Standardises each feature by running estimates of its mean and standard deviation over rollout steps.

    Statistics gathered with :meth:`observe` while a rollout is collected take effect only at :meth:`commit`,
    which the algorithm calls after the update that learns from that rollout: a rollout and its update see one
    fixed affine map, so PPO's probability ratios start at 1 and gradients pass through the map as through a
    fixed layer. Each commit moves the estimates a fraction ``momentum`` of the way to the last rollout's (the
    first commit takes them whole), so the map follows an output whose scale changes by orders of magnitude
    over training. Before the first commit the map is the identity. The estimates are buffers, saved and loaded
    with the policy.

    :param width: features per row.
    :param momentum: weight of the newest rollout's statistics at each commit after the first, in [0, 1]; 0 keeps
        the first rollout's statistics.
    :param eps: added to the variance before its square root.
    :param clip: standardised values are clipped to ``[-clip, clip]``, as ``VecNormalize`` clips observations.
    :param scale: divide by the standard deviation; ``False`` only centres each feature (subtracts its running
        mean), leaving its spread and the clip alone: the heads then read only what varies from state to state,
        at the scale it has.
    """

    def __init__(self, width: int, momentum: float = 0.1, eps: float = 1e-8, clip: float = 10.0,
                 scale: bool = True) -> None:
        super().__init__()
        self.momentum, self.eps, self.clip, self.scale = momentum, eps, clip, scale
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("var", torch.ones(width))
        self.register_buffer("commits", torch.zeros((), dtype=torch.long))
        self._reset_pending()

    def _reset_pending(self) -> None:
        self._sum: torch.Tensor | float = 0.0
        self._square_sum: torch.Tensor | float = 0.0
        self._count = 0

    @torch.no_grad()
    def observe(self, rows: torch.Tensor) -> None:
        """Add rollout rows to the pending statistics (no effect on the map until :meth:`commit`).

        :param rows: ``(N, width)``.
        """
        rows = rows.detach().double()
        self._sum = self._sum + rows.sum(dim=0)
        self._square_sum = self._square_sum + rows.square().sum(dim=0)
        self._count += rows.shape[0]

    @torch.no_grad()
    def commit(self) -> None:
        """Move the estimates towards the statistics observed since the last commit, and clear those."""
        if self._count:
            mean = self._sum / self._count
            var = (self._square_sum / self._count - mean.square()).clamp_min(0.0)
            weight = 1.0 if int(self.commits) == 0 else self.momentum
            self.mean.lerp_(mean.to(self.mean.dtype), weight)
            self.var.lerp_(var.to(self.var.dtype), weight)
            self.commits += 1
        self._reset_pending()

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """:param rows: ``(N, width)``. :return: ``(N, width)``, standardised and clipped (with ``scale``), or
        centred."""
        if not self.scale:
            return rows - self.mean
        return ((rows - self.mean) * torch.rsqrt(self.var + self.eps)).clamp(-self.clip, self.clip)
