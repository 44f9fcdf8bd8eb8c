"""The pre-activation history of a run of ticks, stored once and read by the neuron-level models in windows.

Each tick appends one column of pre-activations, and the neuron-level models read the newest ``M`` columns.
Built the plain way (drop the oldest column, append the new one), every tick copies the whole window into a
new ``(D, M, B)`` trace, and autograd keeps every one of them until the backward pass.

A tape holds the history once, ``(D, M + capacity, B)``, and the window of tick ``k`` is the view
``[:, k + 1 : k + 1 + M]``. Autograd cannot follow writes into a buffer that earlier products read, so the
first layer of the neuron-level models runs as one autograd function per tick (:class:`_WindowProduct`), whose
backward pass adds its window's gradient into a gradient tape of the same shape. The backward pass runs the
ticks newest first, and a column is read only by the ticks from the one that appended it on, so when a tick's
backward runs, the gradient of the column it appended is complete and goes to the synapses that produced it.

Without autograd nothing is kept for a backward pass, and the plain way costs less: one copy of the window per
tick, against the tape's two per call (the initial trace in, the final window out).
:class:`PreActivationWindow` is that plain history with the tape's interface; :func:`pre_activation_history`
picks one of the two. ``docs/performance.md`` has the memory this saves.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

from ctm_rl.model.nlm import PrivateLinear, newest_columns, private_linear


def pre_activation_history(initial: torch.Tensor, capacity: int) -> PreActivationTape | PreActivationWindow:
    """A tape where autograd records, else the plain window.

    :param initial: the trace before the first tick, ``(D, M, B)``.
    :param capacity: the number of ticks that will append to the history.
    """
    return PreActivationTape(initial, capacity) if torch.is_grad_enabled() else PreActivationWindow(initial)


class PreActivationWindow:
    """The newest ``M`` pre-activation columns, copied into a new trace every tick.

    :param initial: the trace before the first tick, ``(D, M, B)``.
    """

    def __init__(self, initial: torch.Tensor) -> None:
        self.trace = initial

    def append_and_project(self, pre_activation: torch.Tensor, layer: PrivateLinear) -> torch.Tensor:
        """As :meth:`PreActivationTape.append_and_project`."""
        older = self.trace[:, 1:, : pre_activation.shape[0]]  # the first b entries are still running
        self.trace = torch.cat((older, pre_activation.t().unsqueeze(1)), dim=1)  # (D, M, b)
        return layer(newest_columns(self.trace, layer.weight.shape[1]))  # (D, out, b)

    def read(self, batch: slice, after: torch.Tensor) -> torch.Tensor:
        """As :meth:`PreActivationTape.read`."""
        return self.trace[..., batch]


class PreActivationTape:
    """The initial pre-activation trace followed by every tick's pre-activations.

    :param initial: the trace before the first tick, ``(D, M, B)``; its gradient is the gradient of the
        columns it contributes to the windows read from the tape.
    :param capacity: the number of ticks that will append to the tape.
    """

    def __init__(self, initial: torch.Tensor, capacity: int) -> None:
        d_model, self.memory_length, batch = initial.shape
        self.initial = initial
        self.values = initial.new_empty(d_model, self.memory_length + capacity, batch)  # no autograd history
        self.values[:, : self.memory_length] = initial.detach()
        self.gradient: torch.Tensor | None = None  # allocated by the first backward pass that reaches the tape
        self.ticks = 0

    def window(self, tick: int, batch: int | slice = slice(None)) -> torch.Tensor:
        """The ``M`` columns the neuron-level models read after tick ``tick - 1``: a view ``(D, M, B)``."""
        batch = slice(batch) if isinstance(batch, int) else batch
        return self.values[:, tick : tick + self.memory_length, batch]

    def columns_read(self, tick: int, weight: torch.Tensor) -> slice:
        """The columns of :meth:`window` ``tick`` that a ``(D, K, out)`` private ``weight`` reads: its newest ``K``."""
        return slice(tick + self.memory_length - weight.shape[1], tick + self.memory_length)

    def gradient_tape(self) -> torch.Tensor:
        """The gradient of every column, zero until backward passes add to it."""
        if self.gradient is None:
            self.gradient = torch.zeros_like(self.values)
        return self.gradient

    def append_and_project(self, pre_activation: torch.Tensor, layer: PrivateLinear) -> torch.Tensor:
        """Append one tick's pre-activations and apply a private linear map to the newest columns of every
        neuron's new window.

        :param pre_activation: ``(b, D)`` for the first ``b`` batch entries (the ones still running).
        :param layer: the per-neuron linear map, ``K -> out`` for the newest ``K <= M`` columns.
        :return: ``(D, out, b)``, equal to ``layer(window[:, M - K:])`` over the moved window.
        """
        if self.memory_length + self.ticks >= self.values.shape[1]:
            raise RuntimeError(f"the tape holds {self.values.shape[1] - self.memory_length} ticks, all appended")
        initial = self.initial if self.ticks == 0 else None
        product = _WindowProduct.apply(pre_activation, layer.weight, layer.bias, initial, self)
        self.ticks += 1
        return product

    def read(self, batch: slice, after: torch.Tensor) -> torch.Tensor:
        """The current window of the ``batch`` entries, as a new ``(D, M, b)`` tensor that autograd follows.

        :param after: any tensor computed from the newest tick's product (the tape keeps no reference to its
            products: autograd's nodes refer to the tape, and a reference back would make a cycle that only
            the garbage collector frees).
        """
        if self.ticks == 0:
            return self.initial[..., batch]
        return _WindowRead.apply(after, self, batch)


class _WindowProduct(torch.autograd.Function):
    """One tick of :meth:`PreActivationTape.append_and_project`."""

    @staticmethod
    def forward(ctx: FunctionCtx, pre_activation: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                initial: torch.Tensor | None, tape: PreActivationTape) -> torch.Tensor:
        batch = pre_activation.shape[0]
        tick = tape.ticks
        tape.values[:, tape.memory_length + tick, :batch] = pre_activation.t()
        window = tape.values[:, tape.columns_read(tick + 1, weight), :batch]  # (D, K, b)
        ctx.save_for_backward(weight)
        ctx.tape, ctx.tick, ctx.first = tape, tick, initial is not None  # type: ignore[attr-defined]
        return private_linear(window, weight, bias)  # (D, out, b)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_product: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (weight,) = ctx.saved_tensors
        tape, tick = ctx.tape, ctx.tick
        batch = grad_product.shape[-1]
        memory_length = tape.memory_length
        gradient = tape.gradient_tape()
        read = tape.columns_read(tick + 1, weight)  # the K columns the forward product read
        # The window's gradient joins what later ticks (and reads of final traces) left on the tape. (An in-place
        # baddbmm_ into the window, a strided view once the batch has shrunk, runs one product per neuron.)
        gradient[:, read, :batch] += torch.bmm(weight, grad_product)  # (D, K, b)
        grad_weight = torch.bmm(tape.values[:, read, :batch], grad_product.transpose(1, 2))  # (D, K, out)
        grad_bias = grad_product.sum(-1)  # (D, out)
        # Nothing before this tick reads its column: that gradient is complete. Clearing what has been handed on
        # leaves the tape at zero after a whole backward pass, ready for another one.
        newest = gradient[:, memory_length + tick, :batch]  # (D, b)
        grad_pre_activation = newest.t().clone()  # (b, D)
        newest.zero_()
        grad_initial = None
        if ctx.first:
            grad_initial = gradient[:, :memory_length].clone()
            gradient[:, :memory_length].zero_()
        return grad_pre_activation, grad_weight, grad_bias, grad_initial, None


class _WindowRead(torch.autograd.Function):
    """:meth:`PreActivationTape.read`. It takes a result of the newest tick as an input only so that its
    backward runs before that tick's, while the tape's gradient is still being gathered."""

    @staticmethod
    def forward(ctx: FunctionCtx, after: torch.Tensor, tape: PreActivationTape, batch: slice) -> torch.Tensor:
        ctx.tape, ctx.tick, ctx.batch = tape, tape.ticks, batch  # type: ignore[attr-defined]
        return tape.window(tape.ticks, batch).clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_window: torch.Tensor) -> tuple[None, None, None]:
        tape = ctx.tape
        tape.gradient_tape()[:, ctx.tick : ctx.tick + tape.memory_length, ctx.batch] += grad_window
        return None, None, None
