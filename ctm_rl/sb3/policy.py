"""``CtmPolicy``: the CTM as a recurrent policy for sb3-contrib's unmodified ``RecurrentPPO``.

``RecurrentPPO`` keeps recurrent state as ``RNNStates(pi=(h, c), vf=(h, c))``, each ``(1, n_envs, hidden)``.
The CTM's two traces travel in those slots, flattened: ``h`` holds the pre-activation trace and ``c`` the
post-activation trace, ``hidden = d_model * memory_length``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from ctm_rl.errors import ConfigError
from ctm_rl.model.compiled import CompiledStep, CompileOption, check_compile_option
from ctm_rl.model.config import CtmConfig
from ctm_rl.model.ctm import ContinuousThoughtMachine, Traces
from ctm_rl.sb3.diagnostics import OutputScale
from ctm_rl.sb3.encoders import ObservationEncoder
from ctm_rl.sb3.heads import SB3_ACTION_GAIN, SB3_HIDDEN_GAIN, apply_head_gains, check_head_gains
from ctm_rl.sb3.parts import check_lr_scales, rebuild_optimizer
from ctm_rl.sb3.standardizer import RunningStandardizer

_CTM_DEFAULTS = CtmConfig()
_HAS_FUSED_ADAM = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 4)

PADDING = -1.0
"""``episode_starts`` value of a padded replay step (``ctm_rl.sb3.buffers`` marks them); such steps are skipped."""

FlatTraces = tuple[torch.Tensor, torch.Tensor]
"""Traces as ``RecurrentPPO`` stores them: (pre, post), each ``(1, n_seq, d_model * memory_length)``."""


class RecurrentStateLayout(NamedTuple):
    """What ``RecurrentPPO`` reads from ``policy.lstm_actor`` to size its state tensors and rollout buffer."""

    num_layers: int
    hidden_size: int


def ctm_traces(flat: FlatTraces, ctm: ContinuousThoughtMachine) -> Traces:
    """RecurrentPPO's flat traces, each ``(1, n_seq, D * M)``, in the CTM's layout, each ``(D, M, n_seq)`` (views)."""
    shape = (flat[0].shape[1], ctm.d_model, ctm.memory_length)
    return tuple(trace.reshape(shape).permute(1, 2, 0) for trace in flat)


def flat_traces(traces: Traces) -> FlatTraces:
    """The CTM's traces, each ``(D, M, n_seq)``, as RecurrentPPO keeps them, each ``(1, n_seq, D * M)``. Views, not
    copies: the next rollout step reads them back in the CTM's layout without a copy."""
    return tuple(trace.permute(2, 0, 1).reshape(1, trace.shape[-1], -1) for trace in traces)


def _unpack(values: torch.Tensor, rows: torch.Tensor, size: int) -> torch.Tensor:
    """``values`` of the real steps ``rows`` spread over a padded batch of ``size`` steps (zero elsewhere)."""
    return values.new_zeros(size, *values.shape[1:]).index_copy(0, rows, values)


class CtmPolicy(RecurrentActorCriticPolicy):
    """Actor-critic policy whose recurrent core is a Continuous Thought Machine.

    The actor and critic heads read the CTM's output synchronisation. Traces carry across environment steps
    and are reset to the CTM's learned start traces at episode starts.

    :param observation_space: observation space.
    :param action_space: action space (Discrete, MultiDiscrete, MultiBinary or Box).
    :param lr_schedule: learning-rate schedule.
    :param d_model: the CTM's hyperparameters (with ``ticks``, ``memory_length``, ``nlm_history``, ``nlm_hidden``,
        ``nlm_temperature``, ``synapse_depth``, ``n_synch_out``, ``neuron_select``, ``initial_decay`` and
        ``start_pre_rms``), documented and validated by :class:`~ctm_rl.model.config.CtmConfig`, whose defaults
        they take.
    :param d_input: width of the default encoder's features (per cell for MiniGrid grids).
    :param carry_traces: carry the traces from one environment step to the next (the CTM for RL). ``False``
        resets them to the learned start traces before every step, an ablation that leaves the CTM only the
        memory of its own ticks within one step.
    :param share_ctm: one CTM for actor and critic (True) or a separate CTM for the critic (False).
    :param project_cells: with the default encoder on MiniGrid grids, compute the synapses' projection of the
        features from the grid's distinct cells, without building the wide features (the same numbers, much
        cheaper); ``False`` builds the features and multiplies them by the synapses' weight.
    :param compile_rollout: run the CTM's rollout step (``forward``, one step of every env, no gradient)
        through ``torch.compile``: ``True`` for the defaults of :class:`ctm_rl.model.compiled.CompiledStep` (one graph,
        and a CUDA graph on GPU), or a mapping of ``torch.compile`` arguments. The first rollout compiles
        (minutes on a small CPU); the results equal the eager step's up to float rounding.
    :param normalize_output: normalise each step's synchronisation before the actor and critic heads, so that
        the heads read unit-scale inputs whatever the traces' scale: ``True`` or ``"layer"`` for a LayerNorm
        (centred, with learned gain and bias), ``"rms"`` for an RMSNorm (scaled to unit root mean square, not
        centred, with a learned gain), ``False`` for neither. Per-step normalisation gives every state's logits
        the same scale; without it the logits of a ReLU head grow with the synchronisation's size at that step.
    :param standardize_output: standardise each synchronisation pair by running estimates of its mean and
        standard deviation over the rollout steps (:class:`~ctm_rl.sb3.standardizer.RunningStandardizer`, which
        ``CtmPPO`` updates after each PPO update; under a plain ``RecurrentPPO`` it stays the identity) before the
        heads (and before ``normalize_output``'s normalisation), so that the heads read the synchronisation's
        variation across the visited steps at unit scale, whatever its size; ``"center"`` only subtracts each
        pair's running mean, so that the heads read what varies from state to state at the scale it has.
    :param standardize_momentum: with ``standardize_output``, the share of the estimates each update's rollout
        replaces (the first rollout's replace them whole); 0 keeps the first rollout's map for the whole run, a
        data-dependent initialisation of the heads' input scale rather than a running normalisation.
    :param detach_critic: with a shared CTM, the critic head reads its synchronisation without passing gradient
        back, so that only the actor's loss trains the CTM and the encoder (what sb3-contrib's shared LSTM does).
    :param hidden_gain: gain of the orthogonal initialisation of the heads' hidden layers (with ``ortho_init``;
        SB3's is ``sqrt(2)``, the reference's 1; :mod:`ctm_rl.sb3.heads`).
    :param action_gain: the same for the action head's output layer (SB3's is 0.01, the reference's 1); with a
        shared CTM it also sets the actor's share of the CTM's gradient.
    :param lr_scales: learning-rate multiples per part (:mod:`ctm_rl.sb3.parts`), for example ``{"synapses":
        0.1}``; parts not named take 1. ``CtmPPO`` applies them at every update (a plain ``RecurrentPPO`` sets
        every group to the schedule's rate).
    :param features_extractor_class: encoder class; ``None`` picks one from the observation space.
    :param features_extractor_kwargs: keyword arguments of the encoder (``d_input`` is added for the default).
    :param optimizer_kwargs: optimizer arguments. For Adam the default is SB3's (``eps=1e-5``) plus
        ``fused=True`` where torch has a fused Adam (2.4 and later): the same update, computed without the
        per-parameter temporaries that dominate optimizer time for the synapses' wide input layer.
    The remaining parameters are those of SB3's ``ActorCriticPolicy``.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        d_model: int = _CTM_DEFAULTS.d_model,
        d_input: int = 64,
        ticks: int = _CTM_DEFAULTS.ticks,
        memory_length: int = _CTM_DEFAULTS.memory_length,
        nlm_history: int | None = _CTM_DEFAULTS.nlm_history,
        nlm_hidden: int = _CTM_DEFAULTS.nlm_hidden,
        nlm_temperature: float | None = _CTM_DEFAULTS.nlm_temperature,
        synapse_depth: int = _CTM_DEFAULTS.synapse_depth,
        n_synch_out: int = _CTM_DEFAULTS.n_synch_out,
        neuron_select: str = _CTM_DEFAULTS.neuron_select,
        initial_decay: float | list[float] = _CTM_DEFAULTS.initial_decay,
        start_pre_rms: float | None = _CTM_DEFAULTS.start_pre_rms,
        carry_traces: bool = True,
        share_ctm: bool = True,
        project_cells: bool = True,
        compile_rollout: CompileOption = False,
        normalize_output: bool | str = False,
        standardize_output: bool | str = False,
        standardize_momentum: float = 0.1,
        detach_critic: bool = False,
        hidden_gain: float = SB3_HIDDEN_GAIN,
        action_gain: float = SB3_ACTION_GAIN,
        lr_scales: Mapping[str, float] | None = None,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] | None = None,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.ctm_config = CtmConfig(
            d_model=d_model, ticks=ticks, memory_length=memory_length, nlm_history=nlm_history, nlm_hidden=nlm_hidden,
            nlm_temperature=nlm_temperature, synapse_depth=synapse_depth, n_synch_out=n_synch_out,
            neuron_select=neuron_select, initial_decay=initial_decay, start_pre_rms=start_pre_rms,
        )
        check_policy_arguments({
            "compile_rollout": compile_rollout, "share_ctm": share_ctm,
            "share_features_extractor": share_features_extractor, "detach_critic": detach_critic,
            "standardize_output": standardize_output, "standardize_momentum": standardize_momentum,
            "hidden_gain": hidden_gain, "action_gain": action_gain, "ortho_init": ortho_init,
            "normalize_output": normalize_output, "lr_scales": lr_scales,
        })
        self.d_input = d_input
        self.carry_traces = carry_traces
        self.project_cells = project_cells
        self.share_ctm = share_ctm
        self.compile_rollout = compile_rollout
        self.normalize_output = normalize_output
        self.standardize_output = standardize_output
        self.standardize_momentum = standardize_momentum
        self.detach_critic = detach_critic
        self.hidden_gain = hidden_gain
        self.action_gain = action_gain
        self.lr_scales = None if lr_scales is None else dict(lr_scales)
        self.rollout_step = None if compile_rollout is False else CompiledStep(
            compile_rollout if isinstance(compile_rollout, dict) else None)  # {} compiles with the defaults
        if optimizer_kwargs is None and optimizer_class is torch.optim.Adam:
            optimizer_kwargs = {"eps": 1e-5, **({"fused": True} if _HAS_FUSED_ADAM else {})}
        if features_extractor_class is None:
            features_extractor_class = ObservationEncoder
            features_extractor_kwargs = {"d_input": d_input, **(features_extractor_kwargs or {})}
        # The heads are built on the synchronisation width (RecurrentActorCriticPolicy._build_mlp_extractor).
        self.lstm_output_dim = self.ctm_config.output_size
        # Skip RecurrentActorCriticPolicy.__init__: it would build LSTMs this policy does not use.
        ActorCriticPolicy.__init__(
            self, observation_space, action_space, lr_schedule, net_arch, activation_fn, ortho_init, use_sde,
            log_std_init, full_std, use_expln, squash_output, features_extractor_class, features_extractor_kwargs,
            share_features_extractor, normalize_images, optimizer_class, optimizer_kwargs,
        )
        self.lstm_hidden_state_shape = (1, 1, self.ctm.trace_size)
        self.output_scale = OutputScale()

    def _build(self, lr_schedule: Schedule) -> None:
        # The CTMs must exist before the parent builds the optimizer over all parameters.
        self.ctm = ContinuousThoughtMachine(self.features_dim, self.ctm_config)
        self.critic_ctm = None if self.share_ctm else ContinuousThoughtMachine(self.features_dim, self.ctm_config)
        width = self.ctm.output_size
        self.output_norm = output_normalisation(self.normalize_output, width)
        self.critic_output_norm = (output_normalisation(self.normalize_output, width) if not self.share_ctm
                                   else self.output_norm)

        def standardizer() -> nn.Module:
            if not self.standardize_output:
                return nn.Identity()
            return RunningStandardizer(width, self.standardize_momentum, scale=self.standardize_output != "center")

        self.output_standardizer = standardizer()
        self.critic_output_standardizer = standardizer() if not self.share_ctm else self.output_standardizer
        super()._build(lr_schedule)
        apply_head_gains(self, self.hidden_gain, self.action_gain)
        rebuild_optimizer(self, self.lr_scales, lr_schedule(1))

    @property
    def lstm_actor(self) -> RecurrentStateLayout:
        """The recurrent-state layout ``RecurrentPPO`` sizes its buffers from (one flattened trace per slot)."""
        return RecurrentStateLayout(num_layers=1, hidden_size=self.ctm.trace_size)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(self.ctm_config.to_dict(), d_input=self.d_input, carry_traces=self.carry_traces, share_ctm=self.share_ctm,
                    project_cells=self.project_cells, compile_rollout=self.compile_rollout,
                    normalize_output=self.normalize_output, standardize_output=self.standardize_output,
                    standardize_momentum=self.standardize_momentum,
                    detach_critic=self.detach_critic, hidden_gain=self.hidden_gain,
                    action_gain=self.action_gain, lr_scales=self.lr_scales)
        return data

    # --- Recurrent core ---------------------------------------------------------------------------------

    def _grid(self, extractor: BaseFeaturesExtractor) -> Any:
        """The default encoder's MiniGrid grid encoding when the CTM's input is projected from its cells, else None."""
        return extractor.grid if isinstance(extractor, ObservationEncoder) and self.project_cells else None

    def _ctm_input(self, obs: PyTorchObs, extractor: BaseFeaturesExtractor, ctm: ContinuousThoughtMachine
                   ) -> torch.Tensor:
        """What ``ctm`` reads from the observations: the features' :meth:`~ContinuousThoughtMachine.project`,
        computed for a MiniGrid grid straight from its distinct cells (the same numbers without the wide
        features).

        :return: ``(N, W)`` projections, one row per observation.
        """
        grid = self._grid(extractor)
        if grid is None:
            return ctm.project(BaseModel.extract_features(self, obs, extractor))
        obs = preprocess_obs(obs, self.observation_space, normalize_images=self.normalize_images)
        return grid.linear(obs, ctm.synapses.feature_weight, ctm.synapses.bias)

    def _run_ctm(
        self, ctm: ContinuousThoughtMachine, projected: torch.Tensor, traces: FlatTraces, episode_starts: torch.Tensor,
        lengths: torch.Tensor | None = None, rollout: bool = False,
    ) -> tuple[torch.Tensor, FlatTraces]:
        """Run ``ctm`` over a batch of sequences laid out as ``RecurrentPPO`` does, without its padding.

        One step per sequence (the rollout, ``predict``, the value bootstrap) runs :meth:`~ContinuousThoughtMachine.step`,
        compiled in the rollout if ``compile_rollout``; anything longer runs :meth:`~ContinuousThoughtMachine.replay`.

        :param projected: ``(N, W)``, the steps of each sequence one after the other, as :meth:`_ctm_input` gives.
        :param traces: flat traces before each sequence, each ``(1, n_seq, D * M)``.
        :param episode_starts: ``(N,)``, 1 at episode starts.
        :param lengths: ``(n_seq,)`` steps of each sequence; ``None`` when all have ``N / n_seq`` steps.
        :param rollout: a rollout step, which runs compiled if ``compile_rollout``.
        :return: synchronisation ``(N, P)`` and the flat traces after each sequence's last step.
        """
        n_seq = traces[0].shape[1]
        # RecurrentPPO keeps each env's trace as one flat row, (D, M) flattened; the CTM works on (D, M, n_seq).
        pre, post = ctm_traces(traces, ctm)
        if not self.carry_traces:
            episode_starts = torch.ones_like(episode_starts)  # every step starts from the learned start traces
        if len(projected) != n_seq:
            synchronisation, (pre, post) = ctm.replay(projected, (pre, post), episode_starts, lengths)  # (N, P)
        elif rollout and self.rollout_step is not None and not torch.is_grad_enabled():
            synchronisation, (pre, post) = self.rollout_step(ctm, projected, (pre, post), episode_starts)  # (N, P)
        else:
            synchronisation, (pre, post) = ctm.step(projected, (pre, post), episode_starts)  # (N, P)
        return synchronisation, flat_traces((pre, post))

    def _latents(
        self, obs: PyTorchObs, states: RNNStates, episode_starts: torch.Tensor, lengths: torch.Tensor | None = None,
        rollout: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, RNNStates]:
        extractor = self.pi_features_extractor
        # A separate critic CTM reading the actor's encoder projects the same features with its own synapses:
        # encode them once (grids are projected from their cells, without features).
        shared_features = (self.critic_ctm is not None and self.vf_features_extractor is extractor
                           and self._grid(extractor) is None)
        features = BaseModel.extract_features(self, obs, extractor) if shared_features else None
        projected = self._ctm_input(obs, extractor, self.ctm) if features is None else self.ctm.project(features)
        latent_pi, traces_pi = self._run_ctm(self.ctm, projected, states.pi, episode_starts, lengths, rollout)
        if self.critic_ctm is None:
            latent_vf, traces_vf = (latent_pi.detach() if self.detach_critic else latent_pi), traces_pi
        else:
            projected = (self._ctm_input(obs, self.vf_features_extractor, self.critic_ctm) if features is None
                         else self.critic_ctm.project(features))
            latent_vf, traces_vf = self._run_ctm(self.critic_ctm, projected, states.vf, episode_starts, lengths,
                                                 rollout)
        if rollout:
            self._observe_rollout(latent_pi, latent_vf, episode_starts)
        latent_pi = self.mlp_extractor.forward_actor(self._actor_input(latent_pi))
        latent_vf = self.mlp_extractor.forward_critic(self._critic_input(latent_vf))
        return latent_pi, latent_vf, RNNStates(traces_pi, traces_vf)

    def _actor_input(self, synchronisation: torch.Tensor) -> torch.Tensor:
        """What the actor head reads: the synchronisation ``(N, P)``, standardised and normalised if asked."""
        return self.output_norm(self.output_standardizer(synchronisation))

    def _critic_input(self, synchronisation: torch.Tensor) -> torch.Tensor:
        """What the critic head reads: its synchronisation ``(N, P)``, standardised and normalised if asked."""
        return self.critic_output_norm(self.critic_output_standardizer(synchronisation))

    def _observe_rollout(self, synchronisation_pi: torch.Tensor, synchronisation_vf: torch.Tensor,
                         episode_starts: torch.Tensor) -> None:
        """Record a rollout step's synchronisations, ``(N, P)`` each, where ``episode_starts`` ``(N,)`` marks the
        steps that start an episode: their scale for :meth:`diagnostics`, and the statistics the output
        standardisers take up at :meth:`commit_output_statistics`."""
        self.output_scale.add(synchronisation_pi, episode_starts)
        if isinstance(self.output_standardizer, RunningStandardizer):
            self.output_standardizer.observe(synchronisation_pi)
            if self.critic_output_standardizer is not self.output_standardizer:
                self.critic_output_standardizer.observe(synchronisation_vf)

    def commit_output_statistics(self) -> None:
        """Let the output standardisers (``standardize_output``) take up the statistics of the rollout steps seen
        since the last call; ``CtmPPO`` calls it after each update, so that a rollout and its update read the
        synchronisation through the same map."""
        for standardizer in {self.output_standardizer, self.critic_output_standardizer}:  # a shared one once
            if isinstance(standardizer, RunningStandardizer):
                standardizer.commit()

    def diagnostics(self) -> dict[str, float]:
        """The synchronisation's scale over the rollout steps since the last call (``sync_abs_mean``,
        ``sync_rms``, ``sync_rms_at_reset`` over the steps that start an episode, and ``sync_state_share``, the
        share of its mean square that varies from step to step), the actor CTM's decay rates
        (``decay_mean``, ``decay_min``, ``decay_max``) and its learned neuron-level temperatures, if any
        (``nlm_temperature_0`` for the first layer, ...)."""
        rates = self.ctm.synchronisation.rates().detach()
        summary = {**self.output_scale.summary(), "decay_mean": float(rates.mean()), "decay_min": float(rates.min()),
                   "decay_max": float(rates.max()),
                   **{f"nlm_temperature_{i}": t for i, t in enumerate(self.ctm.nlms.temperatures())}}
        self.output_scale.reset()
        return summary

    # --- The hooks RecurrentPPO calls ---------------------------------------------------------------------

    def forward(
        self, obs: torch.Tensor, lstm_states: RNNStates, episode_starts: torch.Tensor, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, RNNStates]:
        latent_pi, latent_vf, states = self._latents(obs, lstm_states, episode_starts, rollout=True)
        distribution = self._get_action_dist_from_latent(latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))
        return actions, self.value_net(latent_vf), log_prob, states

    def evaluate_actions(
        self, obs: PyTorchObs, actions: torch.Tensor, lstm_states: RNNStates, episode_starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Values, log-probabilities and entropies of a replay minibatch.

        ``RecurrentPPO`` pads its minibatch sequences to one length and masks the padded steps out of the loss;
        ``CtmPPO``'s buffers mark them (``PADDING``). Encoder, CTM and heads then run on the real steps only,
        and padded steps read zero.
        """
        if isinstance(self.action_space, spaces.MultiBinary):
            actions = actions.float()  # the rollout buffer keeps the space's integer type; Bernoulli wants floats
        real = episode_starts != PADDING
        rows = lengths = None
        if not bool(real.all()):
            n_seq = lstm_states.pi[0].shape[1]
            lengths = real.view(n_seq, -1).sum(dim=1)
            rows = real.nonzero().squeeze(1)
            obs = {key: value[rows] for key, value in obs.items()} if isinstance(obs, dict) else obs[rows]
            actions, episode_starts = actions[rows], episode_starts[rows]
        latent_pi, latent_vf, _ = self._latents(obs, lstm_states, episode_starts, lengths)
        distribution = self._get_action_dist_from_latent(latent_pi)
        results = (self.value_net(latent_vf), distribution.log_prob(actions), distribution.entropy())
        if rows is None:
            return results
        return tuple(None if result is None else _unpack(result, rows, len(real)) for result in results)

    def get_distribution(
        self, obs: torch.Tensor, lstm_states: FlatTraces, episode_starts: torch.Tensor
    ) -> tuple[Distribution, FlatTraces]:
        projected = self._ctm_input(obs, self.pi_features_extractor, self.ctm)
        latent_pi, traces = self._run_ctm(self.ctm, projected, lstm_states, episode_starts)
        return self._get_action_dist_from_latent(self.mlp_extractor.forward_actor(self._actor_input(latent_pi))), traces

    def predict_values(self, obs: torch.Tensor, lstm_states: FlatTraces, episode_starts: torch.Tensor) -> torch.Tensor:
        ctm = self.ctm if self.critic_ctm is None else self.critic_ctm
        projected = self._ctm_input(obs, self.vf_features_extractor, ctm)
        latent_vf, _ = self._run_ctm(ctm, projected, lstm_states, episode_starts)
        return self.value_net(self.mlp_extractor.forward_critic(self._critic_input(latent_vf)))

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's ``predict``; ``state=None`` starts new episodes from the learned start traces."""
        if state is None:
            # The parent fills missing state with zeros; marking an episode start swaps in the start traces.
            _, vectorized = self.obs_to_tensor(observation)
            first = observation[next(iter(observation))] if isinstance(observation, dict) else observation
            episode_start = np.ones(len(first) if vectorized else 1, dtype=bool)
        return super().predict(observation, state, episode_start, deterministic)


_POLICY_DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(CtmPolicy.__init__).parameters.items()
                    if parameter.default is not inspect.Parameter.empty}


# The RMSNorm's epsilon is far below the squared scale of a fresh CTM's synchronisation (RMS about 1e-3), so that
# every step's input reaches unit scale from the first update; torch's default (float32's resolution, 1.2e-7)
# would leave it a few percent short there, and a larger one far short.
_OUTPUT_NORMALISATIONS: dict[Any, Callable[[int], nn.Module]] = {
    False: lambda width: nn.Identity(), True: nn.LayerNorm, "layer": nn.LayerNorm,
    "rms": lambda width: nn.RMSNorm(width, eps=1e-12),
}


def output_normalisation(choice: bool | str, width: int) -> nn.Module:
    """The module ``normalize_output=choice`` puts between a synchronisation of ``width`` pairs and the heads."""
    return _OUTPUT_NORMALISATIONS[choice](width)


def check_policy_arguments(arguments: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for :class:`CtmPolicy` arguments that are out of range or contradict each other,
    before anything is built (the CTM's own are :class:`CtmConfig`'s to check).

    :param arguments: ``CtmPolicy`` keyword arguments; those left out take the policy's defaults.
    """
    given = {**_POLICY_DEFAULTS, **arguments}
    check_compile_option(given["compile_rollout"])
    if given["share_ctm"] and not given["share_features_extractor"]:
        raise ConfigError("share_ctm=True needs share_features_extractor=True: one CTM reads one set of features. "
                          "Fix: share_features_extractor=true, or share_ctm=false for a separate critic CTM.")
    if given["detach_critic"] and not given["share_ctm"]:
        raise ConfigError("detach_critic=True applies to a shared CTM; with share_ctm=False the critic trains its own. "
                          "Fix: drop detach_critic, or set share_ctm=true.")
    check_head_gains(given["hidden_gain"], given["action_gain"], given["ortho_init"])
    check_lr_scales(given["lr_scales"])
    normalization = given["normalize_output"]
    if not isinstance(normalization, (bool, str)) or normalization not in _OUTPUT_NORMALISATIONS:
        raise ConfigError(f"normalize_output must be false, true, layer or rms, got {normalization!r}. "
                          "Fix: normalize_output=rms scales each step's synchronisation to unit size, "
                          "normalize_output=layer also centres it.")
    standardize = given["standardize_output"]
    if not (isinstance(standardize, bool) or standardize == "center"):
        raise ConfigError(f"standardize_output must be false, true or center, got {standardize!r}. Fix: "
                          "standardize_output=center subtracts each pair's running mean, true also scales it.")
    momentum = given["standardize_momentum"]
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
        raise ConfigError(f"standardize_momentum must be in [0, 1], got {momentum!r}. Fix: 0.1 follows the rollouts, "
                          "0 keeps the first rollout's statistics.")
