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

from ctm_rl.errors import ConfigError
from ctm_rl.nlm import NeuronLevelModels
from ctm_rl.synapses import Synapses
from ctm_rl.synchronisation import MAX_DECAY, NEURON_SELECTIONS, SlidingWeights, Synchronisation
from ctm_rl.tape import PreActivationTape, PreActivationWindow, pre_activation_history

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


def check_ctm_config(
    d_model: int, ticks: int, memory_length: int, nlm_hidden: int, synapse_depth: int, n_synch_out: int, neuron_select: str,
    initial_decay: float = 0.0,
) -> None:
    """Raise :class:`ConfigError` naming the first inconsistent CTM hyperparameter."""
    positive = {"d_model": d_model, "ticks": ticks, "memory_length": memory_length, "synapse_depth": synapse_depth,
                "n_synch_out": n_synch_out}
    for name, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}. Fix: pass {name}=1 or more.")
    if not isinstance(nlm_hidden, int) or nlm_hidden < 0:
        raise ConfigError(f"nlm_hidden must be an integer >= 0 (0 = shallow NLMs), got {nlm_hidden!r}.")
    if n_synch_out > d_model:
        raise ConfigError(
            f"n_synch_out ({n_synch_out}) cannot exceed d_model ({d_model}): the synchronised neurons are drawn "
            f"from the model's neurons. Fix: lower n_synch_out to at most {d_model} or raise d_model."
        )
    if neuron_select not in NEURON_SELECTIONS:
        raise ConfigError(f"neuron_select must be one of {', '.join(NEURON_SELECTIONS)}, got {neuron_select!r}.")
    if not 0.0 <= initial_decay <= MAX_DECAY:
        raise ConfigError(f"initial_decay must lie in the decay clamp range [0, {MAX_DECAY:g}], got {initial_decay!r}.")


def _is_batch_major(sequence: torch.Tensor) -> bool:
    """Whether an ``(L, B, ...)`` tensor is a transposed view of a contiguous ``(B, L, ...)`` one, as the
    policy's sequence-major replay batches are."""
    return not sequence.is_contiguous() and sequence.transpose(0, 1).is_contiguous()


class ContinuousThoughtMachine(nn.Module):
    """A CTM whose traces carry across calls.

    :param d_input: width of the features fed to the synapses each tick.
    :param d_model: number of neurons ``D``.
    :param ticks: internal ticks per environment step ``T``.
    :param memory_length: length ``M`` of the pre- and post-activation traces.
    :param nlm_hidden: hidden width of deep neuron-level models; 0 for shallow ones.
    :param synapse_depth: 1 for two GLU blocks, more for a U-Net.
    :param n_synch_out: neurons on each side of the output synchronisation pairs.
    :param neuron_select: ``first-last``, ``random`` or ``random-pairing``.
    :param initial_decay: starting value of every output pair's learned decay rate, in ``[0, 4]``. The
        reference starts at 0, a plain average over the window; a rate of 3 starts the output on the newest
        steps, which learns CartPole-NoVel several times faster (see the README).
    """

    def __init__(
        self,
        d_input: int,
        d_model: int = 128,
        ticks: int = 1,
        memory_length: int = 10,
        nlm_hidden: int = 4,
        synapse_depth: int = 1,
        n_synch_out: int = 16,
        neuron_select: str = "first-last",
        initial_decay: float = 3.0,
    ) -> None:
        super().__init__()
        check_ctm_config(d_model, ticks, memory_length, nlm_hidden, synapse_depth, n_synch_out, neuron_select,
                         initial_decay)
        self.d_model = d_model
        self.ticks = ticks
        self.memory_length = memory_length
        self.synapses = Synapses(d_input, d_model, synapse_depth)
        self.nlms = NeuronLevelModels(d_model, memory_length, nlm_hidden)
        self.synchronisation = Synchronisation(d_model, n_synch_out, neuron_select, memory_length,
                                               initial_decay=initial_decay)
        bound = math.sqrt(1.0 / (d_model + memory_length))
        self.start_pre_trace = nn.Parameter(torch.empty(d_model, memory_length).uniform_(-bound, bound))
        self.start_post_trace = nn.Parameter(torch.empty(d_model, memory_length).uniform_(-bound, bound))

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
            # --- Neuron-level models: each neuron reads its own pre-activation history, the newest M ---
            post_activation = self.nlms.advance(pre, pre_activation)  # (D, B)
            # --- Synchronisation follows the post-activation window as it moves on by one column ---
            newest = self.synchronisation.pair_products(post_activation)  # (P, B)
            synchronisation = self.synchronisation.slide(synchronisation, _running(products[0], batch), newest,
                                                         sliding)
            columns, products = (*columns[1:], post_activation), (*products[1:], newest)
        return LoopState(pre, columns, products, synchronisation)

    def forward(
        self, features: torch.Tensor, traces: Traces, episode_starts: torch.Tensor, features_projected: bool = False,
    ) -> tuple[torch.Tensor, Traces]:
        """Process a time-major batch of equally long sequences of environment steps.

        :param features: ``(L, B, d_input)``, features of ``L`` consecutive steps of ``B`` sequences.
        :param traces: traces before the first step, each ``(D, M, B)``.
        :param episode_starts: ``(L, B)``, 1 where a step starts a new episode.
        :param features_projected: ``features`` are already their :meth:`Synapses.project_features`, ``(L, B, W)``
            (an encoder can compute that product more cheaply than the features themselves).
        :return: synchronisation ``(L, B, output_size)`` and the traces after the last step.
        """
        length, batch = episode_starts.shape
        # --- Features' share of the synapses' input layer, for every step in one product ---
        if features_projected:
            projected = features
        elif _is_batch_major(features):  # project in memory order: no copy of the (possibly wide) features
            projected = self.synapses.project_features(features.transpose(0, 1)).transpose(0, 1)  # (L, B, W)
        else:
            projected = self.synapses.project_features(features)  # (L, B, W)
        # unbind: indexing one step at a time would make backward zero-fill a full-sequence gradient per step.
        outputs, (final,) = self._forward_steps(projected.unbind(0), traces, episode_starts.unbind(0),
                                                episode_starts.any(dim=1).tolist(), [batch] * length)
        return torch.stack(outputs), final

    def forward_packed(
        self, features: torch.Tensor, traces: Traces, episode_starts: torch.Tensor, lengths: torch.Tensor,
        features_projected: bool = False,
    ) -> tuple[torch.Tensor, Traces]:
        """Process sequences of different lengths, stored one after the other (as a recurrent replay minibatch
        holds them before padding), computing real steps only.

        Sequences are sorted longest first, so the ones still running at each step are a leading block of the
        batch that shrinks as they end.

        :param features: ``(N, d_input)``, the steps of sequence 0, then those of sequence 1, and so on;
            ``N = lengths.sum()``.
        :param traces: traces before each sequence's first step, each ``(D, M, B)``.
        :param episode_starts: ``(N,)``, 1 where a step starts a new episode.
        :param lengths: ``(B,)``, steps of each sequence, at least 1.
        :param features_projected: as in :meth:`forward`, ``(N, W)``.
        :return: synchronisation ``(N, output_size)``, in the order of ``features``, and the traces after each
            sequence's last step.
        """
        order = torch.argsort(lengths, descending=True, stable=True)
        first_row = torch.cumsum(lengths, 0) - lengths  # (B,) where each sequence starts in the rows
        real = torch.arange(int(lengths.max()), device=lengths.device).unsqueeze(1) < lengths[order]  # (L, B)
        active = real.sum(dim=1).tolist()
        step, position = real.nonzero(as_tuple=True)  # time-major, longest sequences first at each step
        rows = first_row[order[position]] + step  # (N,) the row of each step in that order
        # --- Features' share of the synapses' input layer, for every step in one product ---
        time_major = features.index_select(0, rows)
        projected = time_major if features_projected else self.synapses.project_features(time_major)  # (N, W)
        starts = episode_starts.index_select(0, rows)
        any_start = (starts.new_zeros(len(active), dtype=torch.float).index_add_(0, step, starts.float()) > 0).tolist()
        outputs, finished = self._forward_steps(projected.split(active), tuple(trace[..., order] for trace in traces),
                                                starts.split(active), any_start, active)
        # --- Back to the callers' order: rows as in features, final traces as in lengths ---
        synchronisation = torch.cat(outputs)  # (N, P)
        synchronisation = synchronisation.new_empty(synchronisation.shape).index_copy(0, rows, synchronisation)
        unsort = torch.argsort(order)
        final = tuple(torch.cat(pieces[::-1], dim=-1)[..., unsort] for pieces in zip(*finished))
        return synchronisation, final

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

    def step(
        self, features: torch.Tensor, traces: Traces, episode_starts: torch.Tensor, features_projected: bool = False,
    ) -> tuple[torch.Tensor, Traces]:
        """One environment step of every sequence: :meth:`forward` with ``L = 1``, without control flow that
        depends on the data, so that ``torch.compile`` captures it as one graph (and, on CUDA, one CUDA graph).

        The traces are reset wherever an episode starts, also when none does (a no-op then), and the
        pre-activation history is always the plain window, which autograd follows without a tape.

        :param features: ``(B, d_input)``, or their :meth:`Synapses.project_features` ``(B, W)`` if
            ``features_projected``.
        :param traces: traces before the step, each ``(D, M, B)``.
        :param episode_starts: ``(B,)``, 1 where the step starts a new episode.
        :return: synchronisation ``(B, output_size)`` and the traces after the step.
        """
        projected = features if features_projected else self.synapses.project_features(features)  # (B, W)
        # --- Reset to the learned start traces where an episode starts ---
        pre, post = self.reset_traces(traces, episode_starts)
        # --- Synchronisation of the whole window, then the internal ticks ---
        weights = self.synchronisation.weights()  # (P, M)
        state = self._start_loop(PreActivationWindow(pre), post, weights)
        state = self.think(projected, state, self.synchronisation.sliding_weights(weights))
        return state.synchronisation.t(), self._traces(state)

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
