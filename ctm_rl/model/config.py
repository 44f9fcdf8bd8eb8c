"""The CTM's hyperparameters: one typed, frozen config with the one set of defaults, validated on creation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ctm_rl.errors import ConfigError

NEURON_SELECTIONS = ("first-last", "random", "random-pairing")
"""Ways of choosing the neuron pairs of the output synchronisation."""
MAX_DECAY = 4.0
"""Upper clamp of the learned synchronisation decay rates (the RL reference's)."""


def synchronisation_size(n_synch: int, neuron_select: str) -> int:
    """Number of synchronisation values (neuron pairs) for a selection.

    :param n_synch: number of neurons on each side of the pairs.
    :param neuron_select: one of :data:`NEURON_SELECTIONS`.
    """
    return n_synch if neuron_select == "random-pairing" else n_synch * (n_synch + 1) // 2


@dataclass(frozen=True)
class CtmConfig:
    """Hyperparameters of a :class:`~ctm_rl.model.ctm.ContinuousThoughtMachine` (the input width aside).

    Creating one checks every field and raises :class:`ConfigError` naming the first bad one and its fix.
    """

    d_model: int = 128
    """Number of neurons ``D``."""
    ticks: int = 1
    """Internal ticks per environment step ``T``."""
    memory_length: int = 10
    """Length ``M`` of the pre- and post-activation traces each neuron-level model and the synchronisation read."""
    nlm_history: int | None = None
    """Newest pre-activations each neuron-level model reads (all ``memory_length`` of them if that is shorter);
    ``None`` reads all ``M`` (the reference). Shorter than ``M`` gives the synchronisation a long window while
    each neuron's model stays a model of its recent history."""
    nlm_hidden: int = 4
    """Hidden width of the deep neuron-level models (``M -> 2H -GLU-> H -> 2 -GLU-> 1``); 0 for shallow ones
    (``M -> 2 -GLU-> 1``)."""
    nlm_temperature: float | None = None
    """Starting value of a learned temperature that divides each neuron-level layer's output (one scalar per
    layer, shared by the neurons); the reference has one, starting at 1. ``None`` leaves it out (a deviation, see
    the README)."""
    synapse_depth: int = 1
    """1: two ``Linear -> GLU -> LayerNorm`` blocks; more: a U-Net of that many widths."""
    n_synch_out: int = 16
    """Neurons on each side of the output synchronisation pairs."""
    neuron_select: str = "first-last"
    """Pair selection, one of :data:`NEURON_SELECTIONS`."""
    initial_decay: float | list[float] = 3.0
    """Starting decay rate of the output pairs, in ``[0, MAX_DECAY]``: one number for every pair, or ``[low,
    high]`` to spread the pairs' rates evenly from ``low`` to ``high``, so that some pairs read the whole window
    and others its newest columns. The reference starts at 0, an even average over the window; 3 starts the
    output on the newest columns (a deviation, see the README)."""
    start_pre_rms: float | None = None
    """Root mean square of the learned start trace of pre-activations at initialisation (drawn uniformly);
    ``None`` draws it as the reference does, within ``±sqrt(1 / (d_model + memory_length))`` (an RMS of about
    0.035 for 256 neurons), far below the unit scale of the pre-activations the synapses' final LayerNorm gives.
    1 starts the trace at that scale, so that the neuron-level models read a history of the usual size after a
    reset."""

    def __post_init__(self) -> None:
        for name in ("d_model", "ticks", "memory_length", "synapse_depth", "n_synch_out"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}. Fix: pass {name}=1 or more.")
        if self.nlm_history is not None and (not is_int(self.nlm_history) or self.nlm_history < 1):
            raise ConfigError(f"nlm_history must be an integer >= 1, or null for the whole memory_length, got "
                              f"{self.nlm_history!r}. Fix: pass nlm_history=1 or more, or nlm_history=null.")
        if not is_int(self.nlm_hidden) or self.nlm_hidden < 0:
            raise ConfigError(f"nlm_hidden must be an integer >= 0 (0 = shallow NLMs), got {self.nlm_hidden!r}.")
        if self.nlm_temperature is not None and not is_positive_number(self.nlm_temperature):
            raise ConfigError(f"nlm_temperature must be a number > 0, or null for none, got {self.nlm_temperature!r}. "
                              f"Fix: pass nlm_temperature=1.0 (the reference's) or nlm_temperature=null.")
        if self.neuron_select not in NEURON_SELECTIONS:
            raise ConfigError(f"neuron_select must be one of {', '.join(NEURON_SELECTIONS)}, "
                              f"got {self.neuron_select!r}.")
        if self.neuron_select == "first-last" and self.n_synch_out > self.d_model:
            raise ConfigError(
                f"n_synch_out ({self.n_synch_out}) cannot exceed d_model ({self.d_model}) with first-last "
                f"selection, which synchronises the last n_synch_out neurons. Fix: lower n_synch_out to at most "
                f"{self.d_model}, raise d_model, or draw the pairs at random (neuron_select=random-pairing)."
            )
        decay_range(self.initial_decay)
        if self.start_pre_rms is not None and not is_positive_number(self.start_pre_rms):
            raise ConfigError(f"start_pre_rms must be a number > 0, or null for the reference's initialisation, got "
                              f"{self.start_pre_rms!r}. Fix: pass start_pre_rms=1.0 or start_pre_rms=null.")

    @property
    def nlm_inputs(self) -> int:
        """Pre-activations each neuron-level model reads: ``nlm_history`` up to ``memory_length``."""
        return self.memory_length if self.nlm_history is None else min(self.nlm_history, self.memory_length)

    @property
    def output_size(self) -> int:
        """Width of the synchronisation output: the number of neuron pairs."""
        return synchronisation_size(self.n_synch_out, self.neuron_select)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The field names, in order."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> CtmConfig:
        """The config of the CTM keys in ``values`` (other keys are ignored), defaults for the rest."""
        return cls(**{key: values[key] for key in cls.keys() if key in values})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer and not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_positive_number(value: Any) -> bool:
    """Whether ``value`` is an int or float above 0, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def decay_range(initial_decay: Any) -> tuple[float, float]:
    """``(low, high)`` of an ``initial_decay`` (a number is ``(x, x)``).

    :raises ConfigError: if it is neither a rate in ``[0, MAX_DECAY]`` nor a ``[low, high]`` pair of them.
    """
    def is_rate(value: Any) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and 0.0 <= value <= MAX_DECAY

    if is_rate(initial_decay):
        return float(initial_decay), float(initial_decay)
    if isinstance(initial_decay, (list, tuple)) and len(initial_decay) == 2 and all(map(is_rate, initial_decay)) \
            and initial_decay[0] <= initial_decay[1]:
        return float(initial_decay[0]), float(initial_decay[1])
    raise ConfigError(f"initial_decay must be a number in the decay clamp range [0, {MAX_DECAY:g}], or a [low, high] "
                      f"pair of them with low <= high, got {initial_decay!r}.")
