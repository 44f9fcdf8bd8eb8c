"""The Continuous Thought Machine as a recurrent core for reinforcement learning.

Each environment step runs ``ticks`` internal ticks on that step's features. The pre- and post-activation
histories (the *traces*) persist across environment steps and are reset to learned start traces at episode
starts. The only output is the synchronisation of neuron pairs over the post-activation window.

Traces are ``(d_model, memory_length, batch)``: neuron-major, so every neuron-level model is one batched product
over its own block, and batch-minor, so a column of the trace (one step of every neuron) is one contiguous
``(d_model, batch)`` slab and element-wise work runs along the batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import nn

from ctm_rl.model.config import CtmConfig
from ctm_rl.model.nlm import NeuronLevelModels
from ctm_rl.model.synapses import Synapses
from ctm_rl.model.synchronisation import SlidingWeights, Synchronisation
from ctm_rl.model.tape import PreActivationTape, PreActivationWindow, pre_activation_history

Traces = tuple[torch.Tensor, torch.Tensor]
"""(pre-activation trace, post-activation trace), each ``(d_model, memory_length, batch)``."""


class LoopState(NamedTuple):
    """What the step loop carries: the pre-activation history, the post-activations and their pair products
    as columns (every tick drops the oldest and appends one, and nothing reads the whole window), and the
    window's synchronisation.

    The batch is the first ``B`` entries of each, where ``B`` is the synchronisation's width: when sequences end,
    the columns keep their width and are cut down where they are read, so that autograd does not slice every
    column at every step at which some sequence ends.
    """

    pre: PreActivationTape | PreActivationWindow
    """The pre-activation history since the last reset."""
    post_columns: tuple[torch.Tensor, ...]
    """``M`` post-activation columns, ``(D, >= B)`` each, oldest first."""
    products: tuple[torch.Tensor, ...]
    """The columns' :meth:`Synchronisation.pair_products`, ``(P, >= B)`` each."""
    synchronisation: torch.Tensor
    """``(P, B)`` synchronisation of the post-activation window."""


def _running(column: torch.Tensor, batch: int) -> torch.Tensor:
    """The first ``batch`` entries of a column (itself where that is all of it: a full slice still costs a
    gradient copy)."""
    return column if column.shape[-1] == batch else column[:, :batch]


class ContinuousThoughtMachine(nn.Module):
    """A CTM whose traces carry across calls.

    Two entry points run it: :meth:`step`, one environment step of every sequence (the rollout), and
    :meth:`replay`, whole sequences of possibly different lengths (the PPO update). Both take the features'
    share of the synapses' input layer, :meth:`project`, rather than the features themselves: a caller can
    compute that product more cheaply than the features (MiniGrid grids do), and a sequence's projections
    are one matrix product. :meth:`forward` is the plain module call over equally long, time-major sequences
    of features. :mod:`ctm_rl.model.reference` is the same computation written plainly, one neuron and one
    tick at a time.

    :param d_input: width of the features fed to the synapses each tick.
    :param config: the hyperparameters; the defaults of :class:`CtmConfig` if ``None``.
    """

    def __init__(self, d_input: int, config: CtmConfig | None = None) -> None:
        super().__init__()
        config = CtmConfig() if config is None else config
        self.config = config
        self.d_model = config.d_model
        self.ticks = config.ticks
        self.memory_length = config.memory_length
        self.synapses = Synapses(d_input, config.d_model, config.synapse_depth)
        self.nlms = NeuronLevelModels(config.d_model, config.nlm_inputs, config.nlm_hidden,
                                      config.nlm_temperature)
        self.synchronisation = Synchronisation(config.d_model, config.n_synch_out, config.neuron_select,
                                               config.memory_length, initial_decay=config.initial_decay)
        bound = math.sqrt(1.0 / (config.d_model + config.memory_length))
        # A uniform draw within ±b has an RMS of b / sqrt(3).
        pre_bound = bound if config.start_pre_rms is None else config.start_pre_rms * math.sqrt(3.0)
        self.start_pre_trace = nn.Parameter(
            torch.empty(config.d_model, config.memory_length).uniform_(-pre_bound, pre_bound))
        self.start_post_trace = nn.Parameter(torch.empty(config.d_model, config.memory_length).uniform_(-bound, bound))

    @property
    def trace_size(self) -> int:
        """Number of values in one flattened trace (``d_model * memory_length``)."""
        return self.d_model * self.memory_length

    @property
    def output_size(self) -> int:
        """Width of the synchronisation output."""
        return self.synchronisation.size

    def start_traces(self, batch_size: int) -> Traces:
        """The learned start traces, expanded to a batch: each ``(D, M, B)``."""
        shape = (self.d_model, self.memory_length, batch_size)
        return self.start_pre_trace.unsqueeze(-1).expand(shape), self.start_post_trace.unsqueeze(-1).expand(shape)

    def reset_traces(self, traces: Traces, episode_starts: torch.Tensor) -> Traces:
        """Replace the traces of the batch entries whose episode starts by the learned start traces.

        This is the only place where traces are reset, in the rollout and in the sequence replay alike.

        :param traces: current traces, each ``(D, M, B)``.
        :param episode_starts: ``(B,)``, 1 where a new episode starts.
        """
        starts = episode_starts.to(torch.bool).view(1, 1, -1)
        pre, post = traces
        return (torch.where(starts, self.start_pre_trace.unsqueeze(-1), pre),
                torch.where(starts, self.start_post_trace.unsqueeze(-1), post))

    def think(self, projected_features: torch.Tensor, state: LoopState, sliding: SlidingWeights) -> LoopState:
        """Run the internal ticks of one environment step.

        :param projected_features: ``(B, W)``, this step's :meth:`Synapses.project_features`.
        :param state: the loop state before the step.
        :param sliding: the synchronisation's :meth:`Synchronisation.sliding_weights`.
        :return: the loop state after the step.
        """
        pre, columns, products, synchronisation = state
        batch = synchronisation.shape[-1]
        for _ in range(self.ticks):
            # --- Synapses: new pre-activations from the features and the latest post-activations ---
            pre_activation = self.synapses(projected_features, _running(columns[-1], batch).t())  # (B, D)
            # --- Neuron-level models: each neuron reads its own pre-activation history, the newest nlm_inputs ---
            post_activation = self.nlms.advance(pre, pre_activation)  # (D, B)
            # --- Synchronisation follows the post-activation window as it moves on by one column ---
            newest = self.synchronisation.pair_products(post_activation)  # (P, B)
            synchronisation = self.synchronisation.slide(synchronisation, _running(products[0], batch), newest,
                                                         sliding)
            columns, products = (*columns[1:], post_activation), (*products[1:], newest)
        return LoopState(pre, columns, products, synchronisation)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The features' share of the synapses' input layer, bias included: ``(..., d_input) -> (..., W)``.

        :meth:`step` and :meth:`replay` read these projections; the features do not change between ticks, so
        their share of the input layer is computed once per step, for a whole sequence in one product.
        """
        return self.synapses.project_features(features)

    def step(self, projected: torch.Tensor, traces: Traces, episode_starts: torch.Tensor) -> tuple[torch.Tensor, Traces]:
        """One environment step of every sequence: the rollout's entry point.

        It has no control flow that depends on the data, so that ``torch.compile`` captures it as one graph
        (and, on CUDA, one CUDA graph): the traces are reset wherever an episode starts, also when none does
        (a no-op then), and the pre-activation history is always the plain window.

        :param projected: ``(B, W)``, this step's :meth:`project`.
        :param traces: traces before the step, each ``(D, M, B)``.
        :param episode_starts: ``(B,)``, 1 where the step starts a new episode.
        :return: synchronisation ``(B, output_size)`` and the traces after the step.
        """
        # --- Reset to the learned start traces where an episode starts ---
        pre, post = self.reset_traces(traces, episode_starts)
        # --- Synchronisation of the whole window, then the internal ticks ---
        weights = self.synchronisation.weights()  # (P, M)
        state = self._start_loop(PreActivationWindow(pre), post, weights)
        state = self.think(projected, state, self.synchronisation.sliding_weights(weights))
        return state.synchronisation.t(), self._traces(state)

    def replay(
        self, projected: torch.Tensor, traces: Traces, episode_starts: torch.Tensor,
        lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Traces]:
        """Sequences of environment steps, stored one after the other as a recurrent replay minibatch holds them
        before padding: the update's entry point. Only real steps are computed.

        Sequences are sorted longest first, so the ones still running at each step are a leading block of the
        batch that shrinks as they end.

        :param projected: ``(N, W)``, the :meth:`project` of sequence 0's steps, then sequence 1's, and so on.
        :param traces: traces before each sequence's first step, each ``(D, M, B)``.
        :param episode_starts: ``(N,)``, 1 where a step starts a new episode.
        :param lengths: ``(B,)``, steps of each sequence (at least 1, summing to ``N``); ``None`` when every
            sequence has ``N / B`` steps.
        :return: synchronisation ``(N, output_size)``, in the order of ``projected``, and the traces after each
            sequence's last step.
        """
        batch = traces[0].shape[-1]
        if lengths is None:
            lengths = torch.full((batch,), len(projected) // batch, device=projected.device)
        order = torch.argsort(lengths, descending=True, stable=True)
        first_row = torch.cumsum(lengths, 0) - lengths  # (B,) where each sequence starts in the rows
        real = torch.arange(int(lengths.max()), device=lengths.device).unsqueeze(1) < lengths[order]  # (L, B)
        active = real.sum(dim=1).tolist()
        step, position = real.nonzero(as_tuple=True)  # time-major, longest sequences first at each step
        rows = first_row[order[position]] + step  # (N,) the row of each step in that order
        time_major = projected.index_select(0, rows)  # (N, W)
        starts = episode_starts.index_select(0, rows)
        any_start = (starts.new_zeros(len(active), dtype=torch.float).index_add_(0, step, starts.float()) > 0).tolist()
        outputs, finished = self._forward_steps(time_major.split(active), tuple(trace[..., order] for trace in traces),
                                                starts.split(active), any_start, active)
        # --- Back to the callers' order: rows as in projected, final traces as in lengths ---
        synchronisation = torch.cat(outputs)  # (N, P)
        synchronisation = synchronisation.new_empty(synchronisation.shape).index_copy(0, rows, synchronisation)
        unsort = torch.argsort(order)
        final = tuple(torch.cat(pieces[::-1], dim=-1)[..., unsort] for pieces in zip(*finished))
        return synchronisation, final

    def forward(self, features: torch.Tensor, traces: Traces, episode_starts: torch.Tensor) -> tuple[torch.Tensor, Traces]:
        """Equally long, time-major sequences of features: :meth:`replay` of their projections.

        :param features: ``(L, B, d_input)``, features of ``L`` consecutive steps of ``B`` sequences.
        :param traces: traces before the first step, each ``(D, M, B)``.
        :param episode_starts: ``(L, B)``, 1 where a step starts a new episode.
        :return: synchronisation ``(L, B, output_size)`` and the traces after the last step.
        """
        length, batch = episode_starts.shape
        projected = self.project(features.transpose(0, 1)).reshape(length * batch, -1)  # (B * L, W), sequence-major
        synchronisation, final = self.replay(projected, traces, episode_starts.t().reshape(-1))
        return synchronisation.view(batch, length, -1).transpose(0, 1), final

    def _forward_steps(
        self, projected: Sequence[torch.Tensor], traces: Traces, episode_starts: Sequence[torch.Tensor],
        any_start: list[bool], active: list[int],
    ) -> tuple[list[torch.Tensor], list[Traces]]:
        """The step loop shared by full and packed sequences.

        :param projected: per step, the features' synapse projection of its ``active[step]`` sequences.
        :param traces: traces of all sequences before the first step, each ``(D, M, B)``; sequences are ordered
            so that the active ones are always a leading block.
        :param episode_starts: per step, ``(active[step],)``.
        :param any_start: per step, whether any sequence starts an episode. Replays start episodes mostly at
            their first step; skipping resets that change nothing leaves the result unchanged.
        :param active: sequences still running at each step, non-increasing.
        :return: per step, the synchronisation ``(active[step], P)``; the final traces of the sequences in
            blocks, one block per step at which some ended and one for those still running at the end.
        """
        weights = self.synchronisation.weights()  # (P, M), shared by every step
        sliding = self.synchronisation.sliding_weights(weights)
        state = None  # built at the first step, once its resets are known
        outputs, finished = [], []
        for step, (step_projected, step_starts, running) in enumerate(zip(projected, episode_starts, active)):
            if state is not None and running < state.synchronisation.shape[-1]:  # ended sequences leave the batch
                finished.append(self._traces(state, running))
                state = state._replace(synchronisation=state.synchronisation[:, :running])
            if state is None or any_start[step]:
                traces = traces if state is None else self._traces(state)
                # --- Reset to the learned start traces where an episode starts ---
                if any_start[step]:
                    traces = self.reset_traces(traces, step_starts)
                # --- Synchronisation of the whole window, then followed column by column ---
                history = pre_activation_history(traces[0], capacity=self.ticks * (len(active) - step))
                state = self._start_loop(history, traces[1], weights)
            # --- Internal ticks ---
            state = self.think(step_projected, state, sliding)
            outputs.append(state.synchronisation.t())  # (active, P)
        return outputs, finished + [self._traces(state)]

    def _start_loop(self, history: PreActivationTape | PreActivationWindow, post_trace: torch.Tensor,
                    weights: torch.Tensor) -> LoopState:
        """The loop state of a post-activation trace ``(D, M, B)``: its columns, their pair products, and the
        synchronisation of the whole window, which the ticks then follow column by column."""
        products = self.synchronisation.pair_products(post_trace)  # (P, M, B)
        return LoopState(history, post_trace.unbind(1), products.unbind(1),
                         self.synchronisation.window(products, weights))

    @staticmethod
    def _traces(state: LoopState, first: int = 0) -> Traces:
        """The traces of a loop state's batch entries from ``first`` on."""
        batch = slice(first, state.synchronisation.shape[-1])
        columns = state.post_columns
        return state.pre.read(batch, after=columns[-1]), torch.stack([column[:, batch] for column in columns], dim=1)
