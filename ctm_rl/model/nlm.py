"""Neuron-level models: one private MLP per neuron over its own pre-activation history."""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn


def private_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Every neuron's own linear map: ``(D, in, B)`` inputs, ``(D, in, out)`` weights, ``(D, out)`` biases
    -> ``(D, out, B)``."""
    return torch.baddbmm(bias.unsqueeze(-1), weight.transpose(1, 2), x)


def newest_columns(trace: torch.Tensor, count: int) -> torch.Tensor:
    """The newest ``count`` columns of a neuron-major trace: ``(D, M, B)`` -> ``(D, count, B)``, a view."""
    return trace[:, trace.shape[1] - count:]


class PrivateLinear(nn.Module):
    """``n_neurons`` independent linear maps, one per neuron, applied in a single batched matrix product.

    Inputs are neuron-major and batch-minor, ``(D, in, B)``: each neuron's product is ``weight.T @ x``, and the
    outputs' rows (``(D, out, B)``) are contiguous along the batch, which keeps the GLUs that split them fast.

    :param n_neurons: number of neurons, each with its own weights.
    :param in_features: input width per neuron.
    :param out_features: output width per neuron.
    """

    def __init__(self, n_neurons: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features + out_features)
        self.weight = nn.Parameter(torch.empty(n_neurons, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(n_neurons, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return private_linear(x, self.weight, self.bias)


class Temperature(nn.Module):
    """Divides its input by one learned scalar, the reference's ``T`` after each neuron-level layer.

    :param initial: the temperature's starting value (the reference's is 1: the layer's output unchanged).
    """

    def __init__(self, initial: float) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.tensor([float(initial)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.temperature


class PreActivationHistory(Protocol):
    """A neuron's pre-activation history as the neuron-level models read it (see :mod:`ctm_rl.model.tape`)."""

    def append_and_project(self, pre_activation: torch.Tensor, layer: PrivateLinear) -> torch.Tensor:
        """Append one tick's pre-activations ``(b, D)`` and apply ``layer`` to every neuron's newest window:
        ``(D, out, b)``."""


class NeuronLevelModels(nn.Module):
    """Maps each neuron's pre-activation history to its next post-activation.

    Deep NLMs (``hidden > 0``) are ``M -> 2H -GLU-> H -> 2 -GLU-> 1``; shallow ones are ``M -> 2 -GLU-> 1``.
    Every neuron has its own weights. With a ``temperature``, each linear layer's output is divided by a learned
    scalar shared by all neurons, as in the reference.

    :param n_neurons: number of neurons (``d_model``).
    :param memory_length: length of the pre-activation history each neuron reads (the newest columns of a
        longer trace).
    :param hidden: hidden width of deep NLMs; 0 for shallow NLMs.
    :param temperature: starting value of every linear layer's learned output temperature; ``None`` for none.
    """

    def __init__(self, n_neurons: int, memory_length: int, hidden: int, temperature: float | None = None) -> None:
        super().__init__()
        widths = [(memory_length, 2 * hidden), (hidden, 2)] if hidden > 0 else [(memory_length, 2)]
        layers: list[nn.Module] = []
        for in_features, out_features in widths:
            layers.append(PrivateLinear(n_neurons, in_features, out_features))
            if temperature is not None:
                layers.append(Temperature(temperature))
            layers.append(nn.GLU(dim=1))
        self.layers = nn.Sequential(*layers)

    def temperatures(self) -> list[float]:
        """The learned temperatures' current values, first layer first; empty without them."""
        return [float(layer.temperature.detach()) for layer in self.layers if isinstance(layer, Temperature)]

    @property
    def history(self) -> int:
        """Pre-activations each neuron reads: the newest ``history`` columns of a trace."""
        return self.layers[0].weight.shape[1]

    def forward(self, pre_trace: torch.Tensor) -> torch.Tensor:
        # pre_trace: (D, M, B), of which the newest `history` columns are read -> post-activation (D, B)
        return self.layers(newest_columns(pre_trace, self.history)).squeeze(1)

    def advance(self, history: PreActivationHistory, pre_activation: torch.Tensor
                ) -> torch.Tensor:
        """Append one tick's pre-activations to ``history`` and map every neuron's new window to its
        post-activation: ``self(window)`` (a tape does it without building the window).

        :param history: the pre-activation history so far.
        :param pre_activation: ``(b, D)``, for the history's first ``b`` batch entries.
        :return: post-activations ``(D, b)``.
        """
        hidden = history.append_and_project(pre_activation, self.layers[0])  # (D, out, b)
        return self.layers[1:](hidden).squeeze(1)
