"""The CTM core: shapes, private neuron-level models, synchronisation, trace reset and carry."""

import pytest
import torch

from ctm_rl import ConfigError, ContinuousThoughtMachine
from ctm_rl.model.nlm import NeuronLevelModels
from ctm_rl.model.config import CtmConfig, synchronisation_size
from ctm_rl.model.synchronisation import Synchronisation


@pytest.mark.parametrize("neuron_select, expected", [("first-last", 36), ("random", 36), ("random-pairing", 8)])
@pytest.mark.parametrize("synapse_depth", [1, 3])
@pytest.mark.parametrize("nlm_hidden", [0, 4])
def test_output_shapes(neuron_select, expected, synapse_depth, nlm_hidden):
    ctm = ContinuousThoughtMachine(6, CtmConfig(d_model=32, ticks=2, memory_length=5, nlm_hidden=nlm_hidden,
                                   synapse_depth=synapse_depth, n_synch_out=8, neuron_select=neuron_select))
    sync, (pre, post) = ctm(torch.randn(3, 4, 6), ctm.start_traces(4), torch.zeros(3, 4))
    assert ctm.output_size == expected == synchronisation_size(8, neuron_select)
    assert sync.shape == (3, 4, expected)
    assert pre.shape == post.shape == (32, 5, 4)  # (neurons, memory, batch)
    assert torch.isfinite(sync).all()


def test_neuron_level_models_are_private():
    nlms = NeuronLevelModels(n_neurons=5, memory_length=4, hidden=3)
    history = torch.randn(5, 4, 2)  # (neurons, memory, batch)
    before = nlms(history)
    with torch.no_grad():
        nlms.layers[0].weight[2].add_(1.0)  # change neuron 2's own model only
    after = nlms(history)
    changed = (after - before).abs().sum(1) > 0
    assert changed.tolist() == [False, False, True, False, False]


def test_neuron_level_model_reads_only_its_own_history():
    nlms = NeuronLevelModels(n_neurons=4, memory_length=3, hidden=0)
    history = torch.randn(4, 3, 1)  # (neurons, memory, batch)
    edited = history.clone()
    edited[1, :, 0] += 5.0
    changed = (nlms(edited) - nlms(history)).abs()[:, 0] > 0
    assert changed.tolist() == [False, True, False, False]


def test_synchronisation_matches_definition():
    torch.manual_seed(1)
    sync = Synchronisation(d_model=6, n_synch=3, neuron_select="random", memory_length=4, initial_decay=0.0)
    with torch.no_grad():
        sync.decay.copy_(torch.linspace(-1.0, 6.0, sync.size))  # exercises both clamp limits
    post = torch.randn(6, 4, 2)  # (neurons, memory, batch)
    expected = torch.zeros(2, sync.size)
    for p, (i, j) in enumerate(zip(sync.left.tolist(), sync.right.tolist())):
        rate = min(max(sync.decay[p].item(), 0.0), 4.0)
        weights = torch.tensor([torch.exp(torch.tensor(-rate * (3 - t))).item() for t in range(4)])
        expected[:, p] = (weights[:, None] * post[i] * post[j]).sum(0) / weights.sum().sqrt()
    assert torch.allclose(sync(post), expected, atol=1e-6)


@pytest.mark.parametrize("neuron_select", ["first-last", "random", "random-pairing"])
def test_sliding_the_window_by_one_column_equals_synchronising_the_moved_window(neuron_select):
    torch.manual_seed(2)
    sync = Synchronisation(d_model=6, n_synch=3, neuron_select=neuron_select, memory_length=4, initial_decay=0.0)
    with torch.no_grad():
        sync.decay.copy_(torch.linspace(-1.0, 6.0, sync.size))
    window = torch.randn(6, 5, 3)  # five columns: the window before the move is the first four
    weights = sync.weights()
    before, after = sync(window[:, :4], weights), sync(window[:, 1:], weights)
    products = sync.pair_products(window)  # (P, 5, 3)
    slid = sync.slide(before.t(), products[:, 0], products[:, 4], sync.sliding_weights(weights))
    torch.testing.assert_close(slid.t(), after, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("initial_decay, expected", [(2.5, [2.5] * 6), ([0.0, 1.0], [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])])
def test_initial_decay_sets_every_pair_or_spreads_the_pairs_evenly(initial_decay, expected):
    ctm = ContinuousThoughtMachine(4, CtmConfig(d_model=8, n_synch_out=3, initial_decay=initial_decay))
    assert torch.allclose(ctm.synchronisation.rates(), torch.tensor(expected))


def test_first_last_pairs_are_upper_triangle_of_last_neurons():
    sync = Synchronisation(d_model=10, n_synch=3, neuron_select="first-last", memory_length=2, initial_decay=0.0)
    pairs = set(zip(sync.left.tolist(), sync.right.tolist()))
    assert pairs == {(i, j) for i in range(7, 10) for j in range(7, 10) if i <= j}


def test_reset_replaces_only_starting_entries_with_learned_start_traces():
    ctm = ContinuousThoughtMachine(4, CtmConfig(d_model=8, memory_length=3, n_synch_out=4))
    traces = (torch.randn(8, 3, 3), torch.randn(8, 3, 3))  # (neurons, memory, batch)
    pre, post = ctm.reset_traces(traces, torch.tensor([1.0, 0.0, 1.0]))
    for b in (0, 2):
        assert torch.equal(pre[..., b], ctm.start_pre_trace) and torch.equal(post[..., b], ctm.start_post_trace)
    assert torch.equal(pre[..., 1], traces[0][..., 1]) and torch.equal(post[..., 1], traces[1][..., 1])


def test_traces_carry_across_calls():
    ctm = ContinuousThoughtMachine(4, CtmConfig(d_model=16, ticks=2, memory_length=4, n_synch_out=4))
    features, starts = torch.randn(6, 2, 4), torch.zeros(6, 2)
    starts[0] = 1.0
    starts[3, 1] = 1.0  # one sequence starts a new episode halfway
    whole, traces_whole = ctm(features, ctm.start_traces(2), starts)
    first, traces_mid = ctm(features[:3], ctm.start_traces(2), starts[:3])
    second, traces_end = ctm(features[3:], traces_mid, starts[3:])
    assert torch.allclose(whole, torch.cat([first, second]), atol=1e-6)
    assert torch.allclose(traces_whole[1], traces_end[1], atol=1e-6)
    # Without the carried traces the second half would differ.
    fresh, _ = ctm(features[3:], ctm.start_traces(2), starts[3:])
    assert not torch.allclose(fresh[:, 0], second[:, 0], atol=1e-4)


def test_start_traces_and_decay_receive_gradients():
    ctm = ContinuousThoughtMachine(4, CtmConfig(d_model=8, memory_length=3, n_synch_out=4))
    with torch.no_grad():
        ctm.synchronisation.decay.fill_(0.5)  # inside the clamp range
    sync, _ = ctm(torch.randn(2, 3, 4), (torch.zeros(8, 3, 3), torch.zeros(8, 3, 3)), torch.ones(2, 3))
    sync.pow(2).sum().backward()
    assert ctm.start_pre_trace.grad.abs().sum() > 0
    assert ctm.start_post_trace.grad.abs().sum() > 0
    assert ctm.synchronisation.decay.grad.abs().sum() > 0


@pytest.mark.parametrize("neuron_select, pairs", [("random-pairing", 20), ("random", 210)])
def test_random_pairs_draw_their_neurons_with_replacement_as_the_reference_does(neuron_select, pairs):
    torch.manual_seed(0)
    ctm = ContinuousThoughtMachine(4, CtmConfig(d_model=6, memory_length=3, n_synch_out=20, neuron_select=neuron_select))
    left, right = ctm.synchronisation.left, ctm.synchronisation.right
    assert len(left) == len(right) == ctm.output_size == pairs
    assert 0 <= int(left.min()) and int(left.max()) < 6 and int(right.max()) < 6
    sync, _ = ctm(torch.randn(2, 3, 4), ctm.start_traces(3), torch.ones(2, 3))
    assert sync.shape == (2, 3, pairs) and torch.isfinite(sync).all()
    # Drawn with replacement, 16 of 32 neurons repeat one at least with probability above 0.99.
    torch.manual_seed(0)
    small = ContinuousThoughtMachine(4, CtmConfig(d_model=32, memory_length=3, n_synch_out=16,
                                                  neuron_select="random-pairing")).synchronisation.left
    assert len(set(small.tolist())) < 16


def test_a_saved_random_selection_loads_into_a_model_whose_own_draw_differs():
    config = CtmConfig(d_model=32, memory_length=3, n_synch_out=16, neuron_select="random-pairing")
    drawn = {}
    for seed in range(20):  # two draws that synchronise different numbers of distinct neurons
        torch.manual_seed(seed)
        ctm = ContinuousThoughtMachine(4, config)
        drawn.setdefault(len(ctm.synchronisation.neurons), ctm)
    saved, fresh = list(drawn.values())[:2]
    fresh.load_state_dict(saved.state_dict())
    assert torch.equal(fresh.synchronisation.left, saved.synchronisation.left)
    assert torch.equal(fresh.synchronisation.right, saved.synchronisation.right)
    inputs, starts = torch.randn(2, 3, 4), torch.ones(2, 3)
    torch.testing.assert_close(fresh(inputs, fresh.start_traces(3), starts)[0],
                               saved(inputs, saved.start_traces(3), starts)[0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_model=8, n_synch_out=9), "n_synch_out (9) cannot exceed d_model (8)"),
    (dict(memory_length=0), "memory_length must be an integer >= 1"),
    (dict(ticks=0), "ticks must be an integer >= 1"),
    (dict(nlm_hidden=-1), "nlm_hidden must be an integer >= 0"),
    (dict(neuron_select="all"), "neuron_select must be one of"),
    (dict(initial_decay=[2.0, 1.0]), "initial_decay must be a number"),
    (dict(initial_decay=[0.0, 1.0, 2.0]), "initial_decay must be a number"),
    (dict(initial_decay=[0.0, 9.0]), "initial_decay must be a number"),
    (dict(nlm_history=0), "nlm_history must be an integer >= 1"),
    (dict(nlm_history=2.5), "nlm_history must be an integer >= 1"),
    (dict(nlm_history=True), "nlm_history must be an integer >= 1"),
    (dict(nlm_temperature=0.0), "nlm_temperature must be a number > 0"),
    (dict(nlm_temperature=-1.0), "nlm_temperature must be a number > 0"),
    (dict(nlm_temperature="1"), "nlm_temperature must be a number > 0"),
    (dict(nlm_temperature=True), "nlm_temperature must be a number > 0"),
    (dict(start_pre_rms=0.0), "start_pre_rms must be a number > 0"),
    (dict(start_pre_rms="1"), "start_pre_rms must be a number > 0"),
])
def test_bad_hyperparameters_raise_clear_errors_when_the_config_is_made(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CtmConfig(**kwargs)


@pytest.mark.parametrize("start_pre_rms", [None, 1.0, 0.3])
def test_start_pre_rms_sets_the_start_pre_activation_traces_scale_and_leaves_the_rest_as_the_reference(start_pre_rms):
    config = dict(d_model=64, memory_length=10, n_synch_out=4)
    torch.manual_seed(0)
    reference = ContinuousThoughtMachine(4, CtmConfig(**config))
    torch.manual_seed(0)
    ctm = ContinuousThoughtMachine(4, CtmConfig(**config, start_pre_rms=start_pre_rms))
    bound = (1 / (64 + 10)) ** 0.5  # the reference's: uniform within ±sqrt(1 / (d_model + memory_length))
    expected = bound / 3 ** 0.5 if start_pre_rms is None else start_pre_rms
    rms = float(ctm.start_pre_trace.detach().square().mean().sqrt())
    assert abs(rms - expected) < 0.05 * expected
    # The same draw, scaled: every other parameter, the start post-activations included, is the reference's.
    torch.testing.assert_close(ctm.start_pre_trace / ctm.start_pre_trace.abs().max(),
                               reference.start_pre_trace / reference.start_pre_trace.abs().max())
    for (name, parameter), (_, expected_parameter) in zip(ctm.named_parameters(), reference.named_parameters()):
        if name != "start_pre_trace":
            assert torch.equal(parameter, expected_parameter), name


@pytest.mark.parametrize("memory_length, nlm_history, inputs", [(10, None, 10), (10, 4, 4), (3, 10, 3), (5, 5, 5)])
def test_the_neuron_level_models_read_at_most_the_whole_window(memory_length, nlm_history, inputs):
    ctm = ContinuousThoughtMachine(4, CtmConfig(d_model=8, memory_length=memory_length, nlm_history=nlm_history,
                                                n_synch_out=4))
    assert ctm.nlms.layers[0].weight.shape[1] == inputs


@pytest.mark.parametrize("nlm_hidden", [0, 3])
def test_a_learned_nlm_temperature_divides_each_layers_output_as_the_references_does(nlm_hidden):
    """The reference's neuron-level layers compute ``(x W + b) / T`` with one learned ``T`` per layer: the same as
    the layers without temperature whose weights and biases are divided by ``T``."""
    config = dict(d_model=8, memory_length=5, nlm_hidden=nlm_hidden, n_synch_out=4)
    torch.manual_seed(0)
    tempered = ContinuousThoughtMachine(4, CtmConfig(**config, nlm_temperature=1.0))
    plain = ContinuousThoughtMachine(4, CtmConfig(**config))
    temperatures = [layer.temperature for layer in tempered.nlms.layers if hasattr(layer, "temperature")]
    assert len(temperatures) == (2 if nlm_hidden else 1)
    assert all(t.requires_grad and t.shape == (1,) for t in temperatures)
    assert sum(p.numel() for p in tempered.parameters()) == sum(p.numel() for p in plain.parameters()) + len(temperatures)

    with torch.no_grad():
        for t, value in zip(temperatures, (0.5, 4.0)):
            t.fill_(value)
        tempered_linears = [layer for layer in tempered.nlms.layers if hasattr(layer, "weight")]
        plain_linears = [layer for layer in plain.nlms.layers if hasattr(layer, "weight")]
        for source, target, t in zip(tempered_linears, plain_linears, temperatures):
            target.weight.copy_(source.weight / t)
            target.bias.copy_(source.bias / t)
    pre_trace = torch.randn(8, 5, 3)  # (D, M, B)
    torch.testing.assert_close(tempered.nlms(pre_trace), plain.nlms(pre_trace))

    tempered.nlms(pre_trace).pow(2).sum().backward()
    assert all(t.grad is not None and t.grad.abs().item() > 0 for t in temperatures)
