"""The compiled rollout step (``compile_rollout``) computes what the eager step computes, as one graph."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from ctm_rl import CtmPolicy
from ctm_rl.model.config import CtmConfig
from ctm_rl.model.ctm import ContinuousThoughtMachine
from ctm_rl.errors import ConfigError
from ctm_rl.sb3.ppo import CtmPPO
from tests.helpers import collect_rollout, small_model


@pytest.mark.parametrize("ticks, neuron_select, nlm_hidden", [(1, "first-last", 4), (3, "random-pairing", 0)])
def test_step_equals_forward_of_one_step(ticks, neuron_select, nlm_hidden):
    torch.manual_seed(0)
    ctm = ContinuousThoughtMachine(12, CtmConfig(d_model=32, ticks=ticks, memory_length=6, nlm_hidden=nlm_hidden,
                                   n_synch_out=8, neuron_select=neuron_select))
    features = torch.randn(1, 7, 12)
    traces = tuple(torch.randn(32, 6, 7) for _ in range(2))
    for starts in (torch.zeros(1, 7), torch.tensor([[0.0, 1, 0, 0, 1, 0, 0]])):
        expected, expected_traces = ctm(features, traces, starts)
        synchronisation, stepped_traces = ctm.step(ctm.project(features[0]), traces, starts[0])
        assert synchronisation.shape == (7, ctm.output_size)
        torch.testing.assert_close(synchronisation, expected[0], rtol=0, atol=1e-6)
        for stepped, trace in zip(stepped_traces, expected_traces):
            torch.testing.assert_close(stepped, trace, rtol=0, atol=1e-6)


def _rollouts_of(env: str, compile_rollout, **policy_kwargs):
    """The rollout buffers of the same seeded model without and with ``compile_rollout``."""
    buffers = []
    for option in (False, compile_rollout):
        model = small_model(env, n_envs=4, n_steps=24, max_steps=10, algorithm=CtmPPO, compile_rollout=option,
                            **policy_kwargs)
        collect_rollout(model)
        buffers.append(model.rollout_buffer)
    return buffers


@pytest.mark.parametrize("env, policy_kwargs", [("CartPole-NoVel", {"ticks": 2}),
                                                ("MiniGrid-Empty-5x5", {"share_ctm": False})],
                         ids=["cartpole-2-ticks", "minigrid-projected-cells-separate-critic"])
def test_compiled_rollout_equals_eager_rollout(env, policy_kwargs):
    # aot_eager traces the step as the compilers do (one graph, functionalised) and runs it without code generation.
    eager, compiled = _rollouts_of(env, {"backend": "aot_eager"}, **policy_kwargs)
    assert eager.episode_starts[1:].sum() > 0, "the rollout must cross episode starts"
    np.testing.assert_array_equal(compiled.actions, eager.actions)
    np.testing.assert_allclose(compiled.values, eager.values, rtol=0, atol=1e-5)
    np.testing.assert_allclose(compiled.log_probs, eager.log_probs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(compiled.traces, eager.traces, rtol=0, atol=1e-5)


def test_rollout_step_compiles_once_per_rollout():
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    model = small_model("CartPole-NoVel", n_envs=4, n_steps=24, max_steps=10, algorithm=CtmPPO,
                        compile_rollout={"backend": counting_backend})
    collect_rollout(model)
    assert model.rollout_buffer.episode_starts[1:].sum() > 0
    # One graph for every step, whether episodes start or not, and for the first step's state layout too.
    assert len(graphs) == 1
    collect_rollout(model)
    assert len(graphs) == 1


@pytest.mark.skipif(not any(shutil.which(name) for name in ("g++", "c++", "clang++")),
                    reason="inductor compiles CPU kernels with a C++ compiler")
def test_inductor_compiled_rollout_equals_eager_rollout():
    # The default compiler, generating and building its kernels: about a minute on a 2-core machine.
    eager, compiled = _rollouts_of("CartPole-NoVel", True)
    np.testing.assert_array_equal(compiled.actions, eager.actions)
    np.testing.assert_allclose(compiled.values, eager.values, rtol=0, atol=1e-5)
    np.testing.assert_allclose(compiled.traces, eager.traces, rtol=0, atol=1e-5)


@pytest.mark.parametrize("option, message", [("yes", "true, false or a mapping"), ({"modes": "default"}, "modes")])
def test_bad_compile_option_is_refused(option, message):
    with pytest.raises(ConfigError, match=message):
        small_model(compile_rollout=option)


def test_compile_option_is_saved_with_the_model(tmp_path):
    model = small_model(algorithm=CtmPPO, compile_rollout={"backend": "aot_eager"})
    model.save(tmp_path / "model.zip")
    loaded = CtmPPO.load(tmp_path / "model.zip")
    assert isinstance(loaded.policy, CtmPolicy)
    assert loaded.policy.compile_rollout == {"backend": "aot_eager"}
    assert loaded.policy.rollout_step is not None
