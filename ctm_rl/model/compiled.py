"""The CTM's rollout step compiled with ``torch.compile``: one graph per batch size and, on CUDA, a CUDA graph.

A rollout step of the CTM is a few dozen small kernels (synapses, neuron-level models and synchronisation
for every tick) on a batch of one step per environment. On a GPU, launching them one by one can cost more
than running them; a CUDA graph launches them all at once. ``torch.compile`` with ``mode="reduce-overhead"``
records one, provided the step is a single graph with fixed shapes, which is what
:meth:`ContinuousThoughtMachine.step` is written to be. On CPU, compilation fuses the element-wise work. It is
off by default everywhere; ``docs/performance.md`` has what it gains and costs.

CUDA graphs replay into the same output memory every time, so the outputs of one step would be overwritten
by the next while ``RecurrentPPO`` still holds them (it writes the previous step's traces to its buffer after
the next step has run); :class:`CompiledStep` hands out copies.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ctm_rl.model.ctm import ContinuousThoughtMachine, Traces
from ctm_rl.errors import ConfigError

CompileOption = bool | dict[str, Any]
"""``False`` (eager), ``True`` (the defaults below) or ``torch.compile`` keyword arguments."""

_COMPILE_ARGUMENTS = set(inspect.signature(torch.compile).parameters) - {"model"}


def check_compile_option(option: Any) -> None:
    """Raise :class:`ConfigError` unless ``option`` is a :data:`CompileOption`."""
    if isinstance(option, bool):
        return
    if not isinstance(option, dict):
        raise ConfigError(f"compile_rollout must be true, false or a mapping of torch.compile arguments, got "
                          f"{option!r}. Fix: compile_rollout=true, or for example compile_rollout={{mode: default}}.")
    unknown = sorted(set(option) - _COMPILE_ARGUMENTS)
    if unknown:
        raise ConfigError(f"compile_rollout has keys torch.compile does not take: {', '.join(map(str, unknown))}. "
                          f"Fix: use only {', '.join(sorted(_COMPILE_ARGUMENTS))}.")


def _step(ctm: ContinuousThoughtMachine, projected: torch.Tensor, traces: Traces, episode_starts: torch.Tensor
          ) -> tuple[torch.Tensor, Traces]:
    # A plain function of the module rather than a bound method: a copied policy's CTM must not run the
    # original's parameters.
    return ctm.step(projected, traces, episode_starts)


class CompiledStep:
    """:meth:`ContinuousThoughtMachine.step`, compiled on first use on each device type.

    Defaults: the whole step as one graph (``fullgraph=True``), shapes fixed (``dynamic=False``: a rollout's
    batch size does not change), and ``mode="reduce-overhead"`` (CUDA graphs) on CUDA. ``options`` override
    them.

    :param options: ``torch.compile`` keyword arguments.
    """

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        check_compile_option(options or {})
        self.options = dict(options or {})
        self._compiled: dict[str, Any] = {}

    def _function(self, device: torch.device) -> Any:
        if device.type not in self._compiled:
            defaults: dict[str, Any] = {"fullgraph": True, "dynamic": False}
            if device.type == "cuda" and "options" not in self.options:
                defaults["mode"] = "reduce-overhead"
            self._compiled[device.type] = torch.compile(_step, **{**defaults, **self.options})
        return self._compiled[device.type]

    def __call__(self, ctm: ContinuousThoughtMachine, projected: torch.Tensor, traces: Traces,
                 episode_starts: torch.Tensor) -> tuple[torch.Tensor, Traces]:
        """As :meth:`ContinuousThoughtMachine.step`."""
        # Shapes and strides are guarded: the first step's traces arrive in RecurrentPPO's layout, later ones in
        # the step's own; making both contiguous keeps one graph instead of two.
        projected, episode_starts = projected.contiguous(), episode_starts.contiguous()
        traces = (traces[0].contiguous(), traces[1].contiguous())
        on_cuda = projected.device.type == "cuda"
        if on_cuda:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs have been copied out
        try:
            function = self._function(projected.device)
            synchronisation, (pre, post) = function(ctm, projected, traces, episode_starts)
        except torch._dynamo.exc.TorchDynamoException as error:
            summary = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(
                f"torch.compile could not compile the CTM's rollout step ({summary}). Fix: compile_rollout=false, "
                f"or other torch.compile arguments, for example compile_rollout={{backend: aot_eager}}."
            ) from error
        if on_cuda:
            return synchronisation.clone(), (pre.clone(), post.clone())
        return synchronisation, (pre, post)
