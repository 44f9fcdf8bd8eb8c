"""The named parts of a CTM or LSTM policy, and per-part learning rates.

A part is a group of parameters with one role (``encoder``, ``synapses``, ``nlms``, ``decay``, ``start_traces``,
``lstm``, ``output_norm``, ``actor_head``, ``critic_head``). The diagnostics log gradient norms per part, and
``lr_scales`` gives a part's parameters their own multiple of the learning rate: Adam moves every parameter by
about the learning rate per step whatever its share of the gradient's signal, so a large part whose gradient is
mostly noise moves the policy as far as one that carries the signal. Two finer groups can be scaled on their own
within their part: ``synapse_input``, the synapses' input layer over the features and the last post-activations
(most of a CTM's parameters, whose small steps add up over its wide input), and ``lstm_input``, the LSTM's
input-to-hidden weights, its counterpart in the LSTM. A finer group not named in ``lr_scales`` follows its part.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping

from torch import nn

from ctm_rl.errors import ConfigError
from ctm_rl.model.config import is_positive_number

# Prefixes of parameter names (as ``named_parameters`` gives them) and the part each belongs to; first match wins.
_PARTS = (
    (("features_extractor.", "pi_features_extractor.", "vf_features_extractor."), "encoder"),
    (("ctm.synapses.", "critic_ctm.synapses."), "synapses"),
    (("ctm.nlms.", "critic_ctm.nlms."), "nlms"),
    (("ctm.synchronisation.", "critic_ctm.synchronisation."), "decay"),
    (("ctm.start_", "critic_ctm.start_"), "start_traces"),
    (("lstm_actor.", "lstm_critic."), "lstm"),
    (("output_norm.", "critic_output_norm."), "output_norm"),
    (("mlp_extractor.policy_net.", "action_net.", "log_std"), "actor_head"),
    (("mlp_extractor.value_net.", "value_net.", "critic."), "critic_head"),
)

PART_NAMES = tuple(part for _, part in _PARTS)
"""Every part name :func:`parameter_part` gives a parameter of a CTM or LSTM policy."""

# Finer groups within a part that ``lr_scales`` can name: prefixes of parameter names, and the group.
_SUBPARTS = (
    (tuple(f"{ctm}.synapses.{name}" for ctm in ("ctm", "critic_ctm")
           for name in ("feature_weight", "recurrent_weight", "bias")), "synapse_input"),
    (tuple(f"{lstm}.{name}_ih_l" for lstm in ("lstm_actor", "lstm_critic") for name in ("weight", "bias")),
     "lstm_input"),
)

LR_GROUP_NAMES = PART_NAMES + tuple(group for _, group in _SUBPARTS)
"""Every name ``lr_scales`` accepts: the parts and the finer groups within them."""


def parameter_part(name: str) -> str:
    """The part of a policy a parameter belongs to: ``encoder``, ``synapses``, ``nlms``, ``decay``,
    ``start_traces``, ``lstm``, ``output_norm``, ``actor_head``, ``critic_head``, else its first name component."""
    for prefixes, part in _PARTS:
        if name.startswith(prefixes):
            return part
    return name.split(".")[0]


def trainable_parameters_by_part(module: nn.Module) -> dict[str, list[nn.Parameter]]:
    """A module's trainable parameters grouped by :func:`parameter_part`, each in ``named_parameters`` order; a
    parameter shared between submodules counts once (``named_parameters`` gives it once)."""
    parts: dict[str, list[nn.Parameter]] = defaultdict(list)
    for name, parameter in module.named_parameters():
        if parameter.requires_grad:
            parts[parameter_part(name)].append(parameter)
    return dict(parts)


def lr_scale(name: str, lr_scales: Mapping[str, float]) -> float:
    """The learning-rate multiple of the parameter called ``name``: its finer group's if ``lr_scales`` names one,
    else its part's, else 1."""
    for prefixes, group in _SUBPARTS:
        if group in lr_scales and name.startswith(prefixes):
            return float(lr_scales[group])
    return float(lr_scales.get(parameter_part(name), 1.0))


def check_lr_scales(lr_scales: Any) -> None:
    """Raise :class:`ConfigError` unless ``lr_scales`` is ``None`` or maps part or group names to numbers > 0."""
    if lr_scales is None:
        return
    if not isinstance(lr_scales, Mapping):
        raise ConfigError(f"lr_scales must map part names to learning-rate multiples, got {lr_scales!r}. "
                          "Fix: for example lr_scales={synapses: 0.1}.")
    for part, scale in lr_scales.items():
        if part not in LR_GROUP_NAMES:
            raise ConfigError(f"lr_scales names an unknown part {part!r}. "
                              f"Fix: use one of {', '.join(LR_GROUP_NAMES)}.")
        if not is_positive_number(scale):
            raise ConfigError(f"lr_scales[{part}] must be a number > 0, got {scale!r}. Fix: for example 0.1.")


def scaled_parameter_groups(named_parameters: Iterable[tuple[str, nn.Parameter]],
                            lr_scales: Mapping[str, float]) -> list[dict[str, Any]]:
    """Optimizer parameter groups, one per distinct multiple, each holding its ``lr_scale`` (parts not named
    take 1; see :func:`lr_scale`). :class:`~ctm_rl.sb3.ppo.CtmPPO` sets each group's rate to the schedule's times
    its ``lr_scale``."""
    groups: dict[float, list[nn.Parameter]] = defaultdict(list)
    for name, parameter in named_parameters:
        groups[lr_scale(name, lr_scales)].append(parameter)
    return [{"params": params, "lr_scale": scale} for scale, params in groups.items()]


def rebuild_optimizer(policy: Any, lr_scales: Mapping[str, float] | None, learning_rate: float) -> None:
    """Give ``policy`` (an SB3 policy whose ``_build`` made its optimizer over all parameters) an optimizer of the
    same class and arguments whose groups follow ``lr_scales``; nothing to do for ``None`` or an empty mapping."""
    if not lr_scales:
        return
    groups = scaled_parameter_groups(policy.named_parameters(), lr_scales)
    for group in groups:
        group["lr"] = learning_rate * group["lr_scale"]
    policy.optimizer = policy.optimizer_class(groups, lr=learning_rate, **policy.optimizer_kwargs)
