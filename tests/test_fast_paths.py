"""The optimised CTM (neuron-major traces, features projected once per sequence, pairs gathered from the
synchronised neurons only, batched private products) computes what the plain definition computes."""

import pytest
import torch

from ctm_rl import ContinuousThoughtMachine
from reference_ctm import reference_forward


def _inputs(ctm, length=7, batch=5, d_input=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(length, batch, d_input, generator=generator)
    shape = (batch, ctm.d_model, ctm.memory_length)
    traces = (torch.randn(shape, generator=generator), torch.randn(shape, generator=generator))
    starts = (torch.rand(length, batch, generator=generator) < 0.2).float()
    starts[0, 0] = 1.0  # a reset at the start...
    if length > 4:
        starts[4, 1] = 1.0  # ...and one mid-sequence
    return features, traces, starts


def _neuron_major(traces):
    return tuple(t.transpose(0, 1) for t in traces)


@pytest.mark.parametrize("synapse_depth", [1, 3])
@pytest.mark.parametrize("nlm_hidden", [0, 4])
@pytest.mark.parametrize("ticks", [1, 3])
@pytest.mark.parametrize("neuron_select", ["first-last", "random", "random-pairing"])
def test_forward_and_gradients_equal_the_plain_definition(synapse_depth, nlm_hidden, ticks, neuron_select):
    torch.manual_seed(0)
    ctm = ContinuousThoughtMachine(6, d_model=24, ticks=ticks, memory_length=4, nlm_hidden=nlm_hidden,
                                   synapse_depth=synapse_depth, n_synch_out=6, neuron_select=neuron_select)
    with torch.no_grad():
        ctm.synchronisation.decay.uniform_(-0.5, 5.0)  # both clamp limits and the inside
    features, traces, starts = _inputs(ctm)

    fast, fast_traces = ctm(features, _neuron_major(traces), starts)
    fast_grads = torch.autograd.grad(fast.pow(2).sum(), list(ctm.parameters()), allow_unused=True)
    plain, plain_traces = reference_forward(ctm, features, traces, starts)
    plain_grads = torch.autograd.grad(plain.pow(2).sum(), list(ctm.parameters()), allow_unused=True)

    assert fast.shape == plain.shape == (7, 5, ctm.output_size)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    for fast_trace, plain_trace in zip(_neuron_major(fast_traces), plain_traces):
        torch.testing.assert_close(fast_trace, plain_trace, atol=1e-5, rtol=1e-5)
    for (name, _), fast_grad, plain_grad in zip(ctm.named_parameters(), fast_grads, plain_grads):
        assert (fast_grad is None) == (plain_grad is None), name
        if fast_grad is not None:
            torch.testing.assert_close(fast_grad, plain_grad, atol=1e-5, rtol=1e-4, msg=name)


def test_no_grad_rollout_path_equals_the_plain_definition():
    torch.manual_seed(1)
    ctm = ContinuousThoughtMachine(6, d_model=32, ticks=2, memory_length=5, nlm_hidden=4, n_synch_out=8)
    features, traces, starts = _inputs(ctm, length=1, batch=9)
    with torch.no_grad():
        fast, _ = ctm(features, _neuron_major(traces), starts)
        plain, _ = reference_forward(ctm, features, traces, starts)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
