"""Output synchronisation: decay-weighted products of neuron pairs over the post-activation window."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
from torch import nn

from ctm_rl.model.config import MAX_DECAY, decay_range


class SlidingWeights(NamedTuple):
    """What :meth:`Synchronisation.slide` needs, computed once per sequence."""

    decay: torch.Tensor
    """``(P, 1)`` ``exp(-r_p)``: how much every weight shrinks when the window moves on by one column."""
    oldest_weight: torch.Tensor
    """``(P, 1)`` ``exp(-r_p * M)``: the weight of the column leaving the window after the move, relative to
    the newest column's."""
    newest_weight: torch.Tensor
    """``(P, 1)`` ``1 / sqrt(sum_t w_p(t))``, the normalised weight of the newest column."""


def select_pairs(d_model: int, n_synch: int, neuron_select: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Left and right neuron index of every synchronised pair.

    - ``first-last``: all pairs ``i <= j`` among the last ``n_synch`` neurons;
    - ``random``: all pairs ``a <= b`` between ``n_synch`` random left and ``n_synch`` random right neurons;
    - ``random-pairing``: ``n_synch`` pairs, random left neuron ``k`` with random right neuron ``k``.

    Random neurons are drawn with replacement, as the reference draws them, so a neuron can appear in several
    pairs and ``n_synch`` may exceed ``d_model``. The draws use torch's global generator; the indices are
    buffers, so checkpoints restore them.
    """
    if neuron_select == "first-last":
        left = right = torch.arange(d_model - n_synch, d_model)
    else:
        left = torch.randint(d_model, (n_synch,))
        right = torch.randint(d_model, (n_synch,))
    if neuron_select == "random-pairing":
        return left, right
    rows, cols = torch.triu_indices(n_synch, n_synch)
    return left[rows], right[cols]


class Synchronisation(nn.Module):
    """``S_p = sum_t w_p(t) z_l(t) z_r(t) / sqrt(sum_t w_p(t))`` with ``w_p(t) = exp(-r_p * age(t))``.

    ``r_p`` is a learned decay rate per pair, clamped to ``[0, max_decay]``.

    :param d_model: number of neurons.
    :param n_synch: neurons on each side of the pairs.
    :param neuron_select: pair selection, one of :data:`NEURON_SELECTIONS`.
    :param memory_length: length of the post-activation window.
    :param initial_decay: decay rate every pair starts from, or ``(low, high)``: rates spread evenly over the
        pairs from ``low`` to ``high``.
    :param max_decay: upper clamp of the decay rate.
    """

    def __init__(
        self, d_model: int, n_synch: int, neuron_select: str, memory_length: int, initial_decay: float | Sequence[float],
        max_decay: float = MAX_DECAY,
    ) -> None:
        super().__init__()
        left, right = select_pairs(d_model, n_synch, neuron_select)
        neurons, positions = torch.unique(torch.cat((left, right)), sorted=True, return_inverse=True)
        # The synchronised neurons, and each pair's left and right neuron as positions among them.
        self.register_buffer("neurons", neurons)
        self.register_buffer("left_position", positions[: len(left)])
        self.register_buffer("right_position", positions[len(left):])
        # First-last pairs read the last neurons, a slice that needs no copy; random ones are gathered.
        self.first_neuron = d_model - n_synch if neuron_select == "first-last" else None
        # The newest column of the window has age 0.
        self.register_buffer("age", torch.arange(memory_length - 1, -1, -1, dtype=torch.float32))
        low, high = decay_range(initial_decay)
        self.decay = nn.Parameter(torch.linspace(low, high, len(left)))
        self.max_decay = max_decay

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Random selections are drawn anew at construction, so a saved draw may synchronise another number of
        # distinct neurons than the fresh one: take the saved draw's size before its values are copied in.
        saved = state_dict.get(prefix + "neurons")
        if saved is not None and saved.shape != self.neurons.shape:
            self.neurons = torch.empty_like(saved, device=self.neurons.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def size(self) -> int:
        return len(self.decay)

    @property
    def left(self) -> torch.Tensor:
        """Left neuron index of every pair."""
        return self.neurons[self.left_position]

    @property
    def right(self) -> torch.Tensor:
        """Right neuron index of every pair."""
        return self.neurons[self.right_position]

    def rates(self) -> torch.Tensor:
        """The decay rates ``r_p`` in use: the learned ones clamped to ``[0, max_decay]``, ``(P,)``."""
        return self.decay.clamp(0.0, self.max_decay)

    def weights(self) -> torch.Tensor:
        """Normalised decay weights ``w_p(t) / sqrt(sum_t w_p(t))``, ``(P, M)``; the same for every step, so
        callers that process a sequence compute them once."""
        rate = self.rates()
        weights = torch.exp(-rate[:, None] * self.age[None, :])
        return weights / weights.sum(-1, keepdim=True).sqrt()

    def sliding_weights(self, weights: torch.Tensor) -> SlidingWeights:
        """:param weights: :meth:`weights`. :return: the factors :meth:`slide` uses."""
        rate = self.rates().unsqueeze(1)  # (P, 1)
        return SlidingWeights(torch.exp(-rate), torch.exp(-rate * len(self.age)), weights[:, -1:])

    def pair_products(self, post: torch.Tensor) -> torch.Tensor:
        """``z_l * z_r`` for every pair: ``(D, ..., B)`` post-activations -> ``(P, ..., B)``."""
        # Gather the few synchronised neurons first, then their pairs from that small block.
        if self.first_neuron is not None:
            selected = post[self.first_neuron :]  # (S, ..., B)
        else:
            selected = post.index_select(0, self.neurons)  # (S, ..., B)
        return selected.index_select(0, self.left_position) * selected.index_select(0, self.right_position)

    def window(self, products: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The synchronisation of a window from its :meth:`pair_products`: ``(P, M, B)`` -> ``(P, B)``.

        :param weights: :meth:`weights`.
        """
        return (products * weights.unsqueeze(-1)).sum(1)

    def slide(self, synchronisation: torch.Tensor, oldest: torch.Tensor, newest: torch.Tensor,
              sliding: SlidingWeights) -> torch.Tensor:
        """The synchronisation after the window drops its oldest column and appends a new one.

        Every column ages by one step, so every weighted product shrinks by ``exp(-r_p)``; the oldest
        column's product leaves the sum and the new column's enters with the newest weight. This touches two
        columns instead of the whole window, ``M`` times less memory traffic per tick than :meth:`forward`.

        :param synchronisation: ``(P, B)``, of the window before the move (pair-major, the transpose of
            :meth:`forward`'s output).
        :param oldest: ``(P, B)``, the :meth:`pair_products` of the column leaving the window.
        :param newest: ``(P, B)``, those of the new column.
        :param sliding: :meth:`sliding_weights`.
        :return: ``(P, B)``.
        """
        return torch.addcmul(sliding.decay * synchronisation, sliding.newest_weight,
                             newest - sliding.oldest_weight * oldest)

    def forward(self, post_trace: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """:param post_trace: ``(D, M, B)``. :param weights: :meth:`weights`, if already computed.
        :return: synchronisation ``(B, P)``."""
        weights = self.weights() if weights is None else weights
        return self.window(self.pair_products(post_trace), weights).t()
