"""The pre-activation tape: gradients through every path equal the plain definition's, a graph can be
differentiated twice, and nothing it builds waits for the garbage collector."""

import gc

import pytest
import torch

from ctm_rl import ContinuousThoughtMachine
from ctm_rl.model.config import CtmConfig
from ctm_rl.model.tape import PreActivationTape
from ctm_rl.model.reference import reference_forward
from test_fast_paths import _assert_same_gradients, _batch_major, _concatenated, _ctm_layout, _inputs


def _packed_loss(ctm, features, traces, starts, lengths, weights):
    """A loss over the outputs and both final traces of a packed forward pass."""
    output, (pre, post) = ctm.replay(ctm.project(_concatenated(features, lengths)), _ctm_layout(traces),
                                             _concatenated(starts, lengths), lengths)
    return (output * weights[0]).sum() + (pre * weights[1]).sum() + (post * weights[2]).sum()


@pytest.mark.parametrize("ticks, memory_length, nlm_history", [(1, 4, None), (3, 4, None), (2, 9, None), (2, 9, 3),
                                                                (3, 4, 1)])
def test_gradients_through_outputs_final_traces_and_initial_traces_equal_the_plain_definition(ticks, memory_length,
                                                                                             nlm_history):
    """Sequences end at different steps (the batch shrinks), some after fewer ticks than the window holds (their
    final window still contains initial columns), and one resets mid-sequence. With ``nlm_history`` the
    neuron-level models read only the newest columns of the window."""
    torch.manual_seed(4)
    ctm = ContinuousThoughtMachine(6, CtmConfig(d_model=12, ticks=ticks, memory_length=memory_length, nlm_hidden=3,
                                   n_synch_out=4, nlm_history=nlm_history))
    lengths = torch.tensor([7, 3, 5, 1, 7, 2])
    features, traces, starts = _inputs(ctm, length=7, batch=len(lengths))
    traces = tuple(t.requires_grad_() for t in traces)  # (B, D, M) leaves, as the plain definition keeps them
    n_steps = int(lengths.sum())
    weights = (torch.randn(n_steps, ctm.output_size), torch.randn(12, memory_length, 6),
               torch.randn(12, memory_length, 6))
    inputs = [*ctm.parameters(), *traces]

    taped = torch.autograd.grad(_packed_loss(ctm, features, traces, starts, lengths, weights), inputs,
                                allow_unused=True)

    loss = 0.0
    for b, n in enumerate(lengths.tolist()):
        output, (pre, post) = reference_forward(ctm, features[:n, b:b + 1], tuple(t[b:b + 1] for t in traces),
                                                starts[:n, b:b + 1])
        start = int(lengths[:b].sum())
        loss = loss + (output[:, 0] * weights[0][start:start + n]).sum()
        loss = loss + (pre[0] * weights[1][..., b]).sum() + (post[0] * weights[2][..., b]).sum()
    plain = torch.autograd.grad(loss, inputs, allow_unused=True)

    _assert_same_gradients(ctm, taped[:-2], plain[:-2])
    for taped_trace, plain_trace in zip(taped[-2:], plain[-2:]):
        torch.testing.assert_close(taped_trace, plain_trace, atol=1e-5, rtol=1e-4)
    assert taped[-2].abs().sum() > 0  # the initial pre-activations do reach the loss


def test_a_graph_differentiated_twice_gives_the_same_gradients():
    torch.manual_seed(5)
    ctm = ContinuousThoughtMachine(6, CtmConfig(d_model=12, ticks=2, memory_length=4, nlm_hidden=3, n_synch_out=4))
    lengths = torch.tensor([5, 2, 4])
    features, traces, starts = _inputs(ctm, length=5, batch=3)
    weights = (torch.randn(11, ctm.output_size), torch.randn(12, 4, 3), torch.randn(12, 4, 3))
    loss = _packed_loss(ctm, features, traces, starts, lengths, weights)
    first = torch.autograd.grad(loss, list(ctm.parameters()), retain_graph=True)
    second = torch.autograd.grad(loss, list(ctm.parameters()))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=0.0, rtol=0.0)


@pytest.mark.parametrize("backward", [True, False])
def test_forward_passes_leave_no_reference_cycles(backward):
    """Autograd's nodes refer to the tape; a reference back from the tape would keep every forward pass's
    memory until the garbage collector runs."""
    torch.manual_seed(6)
    ctm = ContinuousThoughtMachine(6, CtmConfig(d_model=12, ticks=2, memory_length=4, n_synch_out=4))
    features, traces, starts = _inputs(ctm, length=4, batch=3)
    gc.collect()
    gc.disable()
    try:
        output, final = ctm(features, _ctm_layout(traces), starts)
        if backward:
            (output.sum() + final[0].sum()).backward()
        del output, final
        assert not any(type(thing) is PreActivationTape for thing in gc.get_objects())
    finally:
        gc.enable()


def test_recording_and_inference_give_the_same_result():
    """Autograd gets the tape, inference the plain window: the same numbers either way."""
    torch.manual_seed(7)
    ctm = ContinuousThoughtMachine(6, CtmConfig(d_model=12, ticks=3, memory_length=4, n_synch_out=4))
    features, traces, starts = _inputs(ctm, length=6, batch=4)
    recorded, recorded_traces = ctm(features, _ctm_layout(traces), starts)
    with torch.no_grad():
        inferred, inferred_traces = ctm(features, _ctm_layout(traces), starts)
    for a, b in zip((recorded, *_batch_major(recorded_traces)), (inferred, *_batch_major(inferred_traces))):
        torch.testing.assert_close(a.detach(), b, atol=1e-6, rtol=1e-6)
