"""The CTM written as the paper states it: one neuron, one pair and one tick at a time, no fast paths.

:class:`~ctm_rl.model.ctm.ContinuousThoughtMachine` computes the same thing with batched products, a tape for
the pre-activation history and a sliding synchronisation; the equivalence tests check it against
:func:`reference_forward` (values, final traces and gradients), which reads the optimised module's
parameters. Traces here are batch-major, ``(B, D, M)``: each neuron's history is a row, as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctm_rl.model.ctm import ContinuousThoughtMachine
from ctm_rl.model.nlm import Temperature


def reference_synapses(ctm: ContinuousThoughtMachine, features: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """``a_t = f_syn(concat(features, z_{t-1}))``: ``(B, F)`` features and ``(B, D)`` post-activations ->
    ``(B, D)`` pre-activations, with the input layer as one linear map over the concatenation."""
    synapses = ctm.synapses
    weight = torch.cat((synapses.feature_weight, synapses.recurrent_weight), dim=1)
    return synapses.body(F.linear(torch.cat((features, post), dim=-1), weight, synapses.bias))


def reference_nlms(ctm: ContinuousThoughtMachine, pre_trace: torch.Tensor) -> torch.Tensor:
    """``z_t[d] = g_d(A_t[d])``: each neuron's private MLP over its own pre-activation history (the newest
    ``nlm_inputs`` of it), one neuron at a time. ``(B, D, M)`` -> ``(B, D)``."""
    outputs = []
    for neuron in range(ctm.d_model):
        x = pre_trace[:, neuron, ctm.memory_length - ctm.config.nlm_inputs:]  # (B, K)
        for layer in ctm.nlms.layers:
            if isinstance(layer, nn.GLU):
                x = F.glu(x, dim=-1)
            elif isinstance(layer, Temperature):
                x = x / layer.temperature
            else:
                x = x @ layer.weight[neuron] + layer.bias[neuron]
        outputs.append(x.squeeze(-1))
    return torch.stack(outputs, dim=1)


def reference_synchronisation(ctm: ContinuousThoughtMachine, post_trace: torch.Tensor) -> torch.Tensor:
    """``S_ij = sum_t w_ij(t) z_i(t) z_j(t) / sqrt(sum_t w_ij(t))`` with ``w_ij(t) = exp(-r_ij * age(t))`` over the
    post-activation window, ``r_ij`` clamped to ``[0, max_decay]``. ``(B, D, M)`` -> ``(B, P)``."""
    sync = ctm.synchronisation
    rate = sync.decay.clamp(0.0, sync.max_decay)  # (P,)
    age = torch.arange(ctm.memory_length - 1, -1, -1, dtype=post_trace.dtype, device=post_trace.device)  # newest: 0
    weights = torch.exp(-rate[:, None] * age[None, :])  # (P, M)
    products = post_trace[:, sync.left] * post_trace[:, sync.right]  # (B, P, M)
    return (products * weights).sum(-1) / weights.sum(-1).sqrt()


def reference_forward(
    ctm: ContinuousThoughtMachine, features: torch.Tensor, traces: tuple[torch.Tensor, torch.Tensor],
    episode_starts: torch.Tensor,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Equally long, time-major sequences of environment steps.

    :param ctm: the module whose parameters are used.
    :param features: ``(L, B, F)``.
    :param traces: pre- and post-activation traces before the first step, batch-major ``(B, D, M)`` each.
    :param episode_starts: ``(L, B)``, 1 where a step starts a new episode.
    :return: synchronisation ``(L, B, P)`` and the traces after the last step, ``(B, D, M)`` each.
    """
    pre, post = traces
    outputs = []
    for step in range(features.shape[0]):
        # --- Episode start: back to the learned start traces ---
        start = episode_starts[step].bool().view(-1, 1, 1)
        pre = torch.where(start, ctm.start_pre_trace, pre)
        post = torch.where(start, ctm.start_post_trace, post)
        for _ in range(ctm.ticks):
            # --- Synapses: new pre-activations from the features and the latest post-activations ---
            pre_activation = reference_synapses(ctm, features[step], post[:, :, -1])  # (B, D)
            # --- Pre-activation history: drop the oldest column, append the new one ---
            pre = torch.cat((pre[:, :, 1:], pre_activation.unsqueeze(-1)), dim=-1)  # (B, D, M)
            # --- Neuron-level models, then the post-activation history ---
            post = torch.cat((post[:, :, 1:], reference_nlms(ctm, pre).unsqueeze(-1)), dim=-1)  # (B, D, M)
        # --- Output: the synchronisation of the post-activation window after the step's last tick ---
        outputs.append(reference_synchronisation(ctm, post))  # (B, P)
    return torch.stack(outputs), (pre, post)
