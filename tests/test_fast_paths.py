"""The optimised CTM ((neuron, memory, batch) traces, features projected once per sequence, pairs gathered from the
synchronised neurons only, batched private products) computes what the plain definition computes."""

import numpy as np
import pytest
import torch

from ctm_rl import ContinuousThoughtMachine
from ctm_rl.model.config import CtmConfig
from ctm_rl.model.reference import reference_forward


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


def _ctm_layout(traces):
    """Batch-major ``(B, D, M)`` traces, as the plain definition keeps them, in the CTM's ``(D, M, B)``."""
    return tuple(t.permute(1, 2, 0) for t in traces)


def _batch_major(traces):
    """The CTM's ``(D, M, B)`` traces as ``(B, D, M)``."""
    return tuple(t.permute(2, 0, 1) for t in traces)


def _assert_same_result(result, expected):
    """Two ``(output, (pre, post))`` results of the CTM agree to float rounding."""
    for a, b in zip((result[0], *result[1]), (expected[0], *expected[1])):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def _assert_same_gradients(module, grads, expected):
    """Per parameter: both unused, or equal to 1e-5 absolute / 1e-4 relative."""
    for (name, _), grad, other in zip(module.named_parameters(), grads, expected):
        assert (grad is None) == (other is None), name
        if grad is not None:
            torch.testing.assert_close(grad, other, atol=1e-5, rtol=1e-4, msg=name)


def _assert_replay_equals_the_plain_definition(ctm, features, traces, starts):
    """The replay's outputs, final traces and gradients equal the plain definition's; returns the replay's
    outputs."""
    fast, fast_traces = ctm(features, _ctm_layout(traces), starts)
    fast_grads = torch.autograd.grad(fast.pow(2).sum(), list(ctm.parameters()), allow_unused=True)
    plain, plain_traces = reference_forward(ctm, features, traces, starts)
    plain_grads = torch.autograd.grad(plain.pow(2).sum(), list(ctm.parameters()), allow_unused=True)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    for fast_trace, plain_trace in zip(_batch_major(fast_traces), plain_traces):
        torch.testing.assert_close(fast_trace, plain_trace, atol=1e-5, rtol=1e-5)
    _assert_same_gradients(ctm, fast_grads, plain_grads)
    return fast


def _assert_replay_and_step_equal_the_plain_definition(ctm, features, traces, starts):
    """As :func:`_assert_replay_equals_the_plain_definition`, and the rollout's step, one env step at a time,
    gives the replay's outputs."""
    fast = _assert_replay_equals_the_plain_definition(ctm, features, traces, starts)
    step_traces, outputs = _ctm_layout(traces), []
    with torch.no_grad():
        for t in range(len(features)):
            output, step_traces = ctm.step(ctm.project(features[t]), step_traces, starts[t])
            outputs.append(output)
    torch.testing.assert_close(torch.stack(outputs), fast.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("synapse_depth", [1, 3])
@pytest.mark.parametrize("nlm_hidden", [0, 4])
@pytest.mark.parametrize("ticks", [1, 3])
@pytest.mark.parametrize("neuron_select", ["first-last", "random", "random-pairing"])
def test_forward_and_gradients_equal_the_plain_definition(synapse_depth, nlm_hidden, ticks, neuron_select):
    torch.manual_seed(0)
    ctm = ContinuousThoughtMachine(6, CtmConfig(d_model=24, ticks=ticks, memory_length=4, nlm_hidden=nlm_hidden,
                                   synapse_depth=synapse_depth, n_synch_out=6, neuron_select=neuron_select))
    with torch.no_grad():
        ctm.synchronisation.decay.uniform_(-0.5, 5.0)  # both clamp limits and the inside
    fast = _assert_replay_equals_the_plain_definition(ctm, *_inputs(ctm))
    assert fast.shape == (7, 5, ctm.output_size)  # the plain definition's shape too: assert_close compares shapes


@pytest.mark.parametrize("nlm_hidden", [0, 4])
def test_learned_nlm_temperatures_equal_the_plain_definition(nlm_hidden):
    """The temperatures sit between the tape's first product and the rest of each neuron's model: the replay, its
    gradients (the temperatures' included) and the rollout step still equal the plain definition."""
    torch.manual_seed(2)
    ctm = ContinuousThoughtMachine(6, CtmConfig(d_model=16, ticks=2, memory_length=5, nlm_hidden=nlm_hidden,
                                   n_synch_out=4, nlm_temperature=1.0))
    with torch.no_grad():
        for value, layer in zip((0.7, 1.5), [m for m in ctm.nlms.layers if hasattr(m, "temperature")]):
            layer.temperature.fill_(value)
    _assert_replay_and_step_equal_the_plain_definition(ctm, *_inputs(ctm))


@pytest.mark.parametrize("nlm_history, ticks, nlm_hidden", [(1, 1, 4), (3, 3, 0), (6, 2, 4)])
def test_neuron_level_models_reading_the_newest_columns_equal_the_plain_definition(nlm_history, ticks, nlm_hidden):
    """A window of 6 whose neuron-level models read only its newest ``nlm_history`` columns: the rollout step, the
    replay and the plain definition agree, and the older columns reach the output through the synchronisation
    only."""
    torch.manual_seed(1)
    ctm = ContinuousThoughtMachine(6, CtmConfig(d_model=16, ticks=ticks, memory_length=6, nlm_hidden=nlm_hidden,
                                   n_synch_out=4, nlm_history=nlm_history, initial_decay=[0.0, 2.0]))
    assert ctm.nlms.layers[0].weight.shape[1] == nlm_history
    features, traces, starts = _inputs(ctm)
    _assert_replay_and_step_equal_the_plain_definition(ctm, features, traces, starts)

    # A pre-activation older than the newest nlm_history columns changes no post-activation: with one tick and
    # a trace whose old pre-activations differ, the first output is the same.
    if ticks == 1 and nlm_history < 6:
        pre, post = _ctm_layout(traces)
        changed = pre.clone()
        changed[:, : 6 - nlm_history] += 1.0
        no_reset = torch.zeros_like(starts[0])
        with torch.no_grad():
            first, _ = ctm.step(ctm.project(features[0]), (pre, post), no_reset)
            again, _ = ctm.step(ctm.project(features[0]), (changed, post), no_reset)
        torch.testing.assert_close(first, again)


@pytest.mark.parametrize("initial_decay", [0.0, 4.0])
def test_synchronisation_followed_column_by_column_stays_exact_over_long_sequences(initial_decay):
    """The replay updates the synchronisation as its window moves (drop the oldest product, age the rest, add
    the newest) instead of summing the window at every tick. Rounding must not build up: with no decay every
    product stays in the sum at full weight until it leaves."""
    torch.manual_seed(8)
    ctm = ContinuousThoughtMachine(6, CtmConfig(d_model=16, memory_length=5, nlm_hidden=2, n_synch_out=4,
                                   initial_decay=initial_decay))
    features, traces, _ = _inputs(ctm, length=300, batch=2)
    starts = torch.zeros(300, 2)
    with torch.no_grad():
        fast, _ = ctm(3 * features, _ctm_layout(traces), starts)
        plain, _ = reference_forward(ctm, 3 * features, traces, starts)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)


def test_no_grad_rollout_path_equals_the_plain_definition():
    torch.manual_seed(1)
    ctm = ContinuousThoughtMachine(6, CtmConfig(d_model=32, ticks=2, memory_length=5, nlm_hidden=4, n_synch_out=8))
    features, traces, starts = _inputs(ctm, length=1, batch=9)
    with torch.no_grad():
        fast, _ = ctm(features, _ctm_layout(traces), starts)
        plain, _ = reference_forward(ctm, features, traces, starts)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)


def _concatenated(tensor, lengths):
    """The real steps of a time-major ``(L, B, ...)`` tensor, sequence after sequence."""
    return torch.cat([tensor[:n, b] for b, n in enumerate(lengths.tolist())])


@pytest.mark.parametrize("ticks, nlm_hidden, synapse_depth", [(1, 4, 1), (3, 0, 3)])
@pytest.mark.parametrize("lengths", [[7, 3, 5, 1, 7, 2], [2, 7, 7, 7, 7, 7], [7, 6, 5, 4, 3, 2]])
def test_packed_sequences_equal_each_sequence_run_alone(lengths, ticks, nlm_hidden, synapse_depth):
    """Sequences of different lengths stored one after the other: every step equals the plain definition
    run on its sequence alone, final traces are those after each sequence's last step, and gradients of any
    loss over the steps agree."""
    torch.manual_seed(2)
    ctm = ContinuousThoughtMachine(6, CtmConfig(d_model=24, ticks=ticks, memory_length=4, nlm_hidden=nlm_hidden,
                                   synapse_depth=synapse_depth, n_synch_out=6))
    features, traces, starts = _inputs(ctm, length=7, batch=len(lengths))
    lengths = torch.tensor(lengths)
    loss_weights = torch.randn(int(lengths.sum()), ctm.output_size)

    packed, packed_traces = ctm.replay(ctm.project(_concatenated(features, lengths)), _ctm_layout(traces),
                                               _concatenated(starts, lengths), lengths)
    packed_grads = torch.autograd.grad((packed * loss_weights).sum(), list(ctm.parameters()), allow_unused=True)

    alone_outputs, alone_traces = [], []
    for b, n in enumerate(lengths.tolist()):
        output, final = reference_forward(ctm, features[:n, b:b + 1], tuple(t[b:b + 1] for t in traces),
                                          starts[:n, b:b + 1])
        alone_outputs.append(output[:, 0])
        alone_traces.append(final)
    alone = torch.cat(alone_outputs)
    alone_grads = torch.autograd.grad((alone * loss_weights).sum(), list(ctm.parameters()), allow_unused=True)

    assert packed.shape == alone.shape == (int(lengths.sum()), ctm.output_size)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    for i, packed_trace in enumerate(_batch_major(packed_traces)):
        torch.testing.assert_close(packed_trace, torch.cat([t[i] for t in alone_traces]), atol=1e-5, rtol=1e-5)
    _assert_same_gradients(ctm, packed_grads, alone_grads)


def test_packed_sequences_of_one_length_equal_the_time_major_path():
    torch.manual_seed(3)
    ctm = ContinuousThoughtMachine(6, CtmConfig(d_model=16, memory_length=3, n_synch_out=4))
    features, traces, starts = _inputs(ctm, length=5, batch=4)
    lengths = torch.full((4,), 5)
    with torch.no_grad():
        full, full_traces = ctm(features, _ctm_layout(traces), starts)
        packed, packed_traces = ctm.replay(ctm.project(_concatenated(features, lengths)), _ctm_layout(traces),
                                                   _concatenated(starts, lengths), lengths)
    _assert_same_result((packed, packed_traces), (_concatenated(full, lengths), full_traces))


def test_grid_encoder_encoding_distinct_cells_once_equals_encoding_every_cell():
    from gymnasium import spaces

    from ctm_rl.sb3.encoders import GridEncoder

    torch.manual_seed(4)
    encoder = GridEncoder(spaces.Box(0, 10, (5, 4, 3), dtype=np.int64), d_input=8)
    generator = torch.Generator().manual_seed(5)
    # Few distinct values, as in MiniGrid, and out-of-range indices that the encoder clips.
    grid = torch.stack([torch.randint(0, 3, (6, 5, 4), generator=generator),
                        torch.randint(0, 2, (6, 5, 4), generator=generator),
                        torch.randint(0, 4, (6, 5, 4), generator=generator)], dim=-1).float()

    fast = encoder(grid)
    clipped = torch.minimum(grid.long(), encoder.index_max)
    every_cell = torch.cat((encoder.objects(clipped[..., 0]), encoder.colours(clipped[..., 1]),
                            encoder.states(clipped[..., 2]), encoder.cells.expand(6, -1, -1, -1)), dim=-1)
    plain = encoder.project(every_cell).flatten(1)
    assert fast.shape == plain.shape == (6, 5 * 4 * 8)
    torch.testing.assert_close(fast, plain, atol=1e-6, rtol=1e-6)
    weights = torch.randn_like(plain)
    fast_grads = torch.autograd.grad((fast * weights).sum(), list(encoder.parameters()))
    plain_grads = torch.autograd.grad((plain * weights).sum(), list(encoder.parameters()))
    for (name, _), a, b in zip(encoder.named_parameters(), fast_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_batch_major_features_give_the_same_result():
    """Replay batches arrive as transposed views of (B, L, F); the CTM reads them in memory order."""
    torch.manual_seed(6)
    ctm = ContinuousThoughtMachine(6, CtmConfig(d_model=16, memory_length=3, n_synch_out=4))
    features, traces, starts = _inputs(ctm, length=5, batch=4)
    batch_major = features.transpose(0, 1).contiguous().transpose(0, 1)
    assert not batch_major.is_contiguous()
    _assert_same_result(ctm(batch_major, _ctm_layout(traces), starts),
                        ctm(features, _ctm_layout(traces), starts))


def test_grid_linear_equals_linear_of_the_grid_features():
    from gymnasium import spaces

    from ctm_rl.sb3.encoders import GridEncoder

    # In float64, so that the two summation orders agree to rounding on any CPU (in float32 they differ by 2e-5
    # on some).
    torch.manual_seed(7)
    encoder = GridEncoder(spaces.Box(0, 10, (3, 4, 3), dtype=np.int64), d_input=5).double()
    generator = torch.Generator().manual_seed(8)
    grid = torch.randint(0, 3, (9, 3, 4, 3), generator=generator).double()
    weight = torch.randn(11, 3 * 4 * 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, dtype=torch.float64, requires_grad=True)
    fast = encoder.linear(grid, weight, bias)
    plain = torch.nn.functional.linear(encoder(grid), weight, bias)
    torch.testing.assert_close(fast, plain, atol=1e-10, rtol=1e-10)
    loss_weights = torch.randn_like(plain)
    parameters = [weight, bias, *encoder.parameters()]
    fast_grads = torch.autograd.grad((fast * loss_weights).sum(), parameters)
    plain_grads = torch.autograd.grad((plain * loss_weights).sum(), parameters)
    for a, b in zip(fast_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
