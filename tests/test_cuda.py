"""CUDA paths: the same numbers as on CPU, and the compiled rollout step as a CUDA graph. Skipped without a GPU.

``CTM_RL_TEST_DEVICE`` names another device to run them on (``cpu`` checks the tests themselves).
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch

from ctm_rl import CtmPolicy, bench
from ctm_rl.model.compiled import CompiledStep
from ctm_rl.model.config import CtmConfig
from ctm_rl.model.ctm import ContinuousThoughtMachine
from ctm_rl.sb3.ppo import CtmPPO
from ctm_rl.envs import make_env
from tests.helpers import SMALL_CTM, collect_rollout

DEVICE = os.environ.get("CTM_RL_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _full_float32_matmuls():
    # TF32 products round to 10 bits of mantissa; the comparisons below are made at float32 precision.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _model(device: str, env: str = "CartPole-NoVel", **policy_kwargs) -> CtmPPO:
    return CtmPPO(CtmPolicy, make_env(env, n_envs=4, seed=0, max_steps=10), n_steps=24, batch_size=48, n_epochs=1,
                  seed=0, device=device, policy_kwargs=SMALL_CTM | policy_kwargs)


@pytest.mark.parametrize("ticks", [1, 3])
def test_packed_replay_and_its_gradients_on_cuda_equal_cpu(ticks):
    torch.manual_seed(0)
    cpu = ContinuousThoughtMachine(6, CtmConfig(d_model=24, ticks=ticks, memory_length=4, nlm_hidden=4, n_synch_out=6))
    gpu = copy.deepcopy(cpu).to(DEVICE)
    lengths = torch.tensor([5, 2, 7, 1])
    features = torch.randn(int(lengths.sum()), 6)
    traces = tuple(torch.randn(24, 4, 4) for _ in range(2))
    starts = (torch.rand(len(features)) < 0.2).float()
    results = []
    for ctm, device in ((cpu, "cpu"), (gpu, DEVICE)):
        inputs = (features.to(device), tuple(t.to(device) for t in traces), starts.to(device), lengths.to(device))
        synchronisation, (pre, post) = ctm.replay(ctm.project(inputs[0]), *inputs[1:])
        (synchronisation.square().sum() + post.sum()).backward()
        results.append([synchronisation, pre, post, *(p.grad for p in ctm.parameters())])
    for on_cpu, on_gpu in zip(*results):
        torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-5, rtol=1e-4)


def test_compiled_step_on_cuda_equals_eager_and_keeps_earlier_outputs():
    torch.manual_seed(0)
    ctm = ContinuousThoughtMachine(6, CtmConfig(d_model=24, ticks=2, memory_length=4, nlm_hidden=4, n_synch_out=6)).to(DEVICE)
    step = CompiledStep()  # mode="reduce-overhead" on CUDA: a CUDA graph
    features = torch.randn(5, 6, device=DEVICE)
    compiled_traces = eager_traces = tuple(torch.randn(24, 4, 5, device=DEVICE) for _ in range(2))
    held = []
    with torch.no_grad():
        for index in range(6):
            starts = torch.zeros(5, device=DEVICE)
            starts[index % 5] = float(index % 2)
            synchronisation, compiled_traces = step(ctm, ctm.project(features), compiled_traces, starts)
            expected, eager_traces = ctm.step(ctm.project(features), eager_traces, starts)
            torch.testing.assert_close(synchronisation, expected, atol=1e-5, rtol=1e-5)
            for compiled, eager in zip(compiled_traces, eager_traces):
                torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
            held.append((compiled_traces, tuple(trace.clone() for trace in compiled_traces)))
    # A CUDA graph replays into the same memory; what the step handed out earlier must not change.
    for handed_out, copied in held:
        for trace, copy_ in zip(handed_out, copied):
            assert torch.equal(trace, copy_)


@pytest.mark.parametrize("env", ["CartPole-NoVel", "MiniGrid-Empty-5x5"])
def test_cuda_rollout_and_replay_equal_cpu(env):
    cpu, gpu = _model("cpu", env), _model(DEVICE, env)
    gpu.policy.load_state_dict(cpu.policy.state_dict())
    collect_rollout(cpu)
    buffer = cpu.rollout_buffer
    # Replay the CPU rollout on both devices: the same values and log-probabilities.
    for samples in buffer.get(batch_size=48):
        with torch.no_grad():
            expected = cpu.policy.evaluate_actions(samples.observations, samples.actions.long().flatten(),
                                                   samples.lstm_states, samples.episode_starts)
            on_gpu = gpu.policy.evaluate_actions(
                samples.observations.to(DEVICE), samples.actions.long().flatten().to(DEVICE),
                type(samples.lstm_states)(*(tuple(t.to(DEVICE) for t in pair) for pair in samples.lstm_states)),
                samples.episode_starts.to(DEVICE))
        for a, b in zip(expected[:2], on_gpu[:2]):
            torch.testing.assert_close(b.cpu(), a, atol=1e-5, rtol=1e-4)


def test_compiled_cuda_rollout_fills_the_buffer_like_the_eager_one():
    models = []
    for option in (False, True):  # each seeds the random generators it samples from when it is built
        models.append(_model(DEVICE, ticks=2, compile_rollout=option))
        collect_rollout(models[-1])
    eager, compiled = models
    assert eager.rollout_buffer.episode_starts[1:].sum() > 0
    np.testing.assert_array_equal(compiled.rollout_buffer.actions, eager.rollout_buffer.actions)
    for field in ("values", "log_probs", "traces"):
        np.testing.assert_allclose(getattr(compiled.rollout_buffer, field), getattr(eager.rollout_buffer, field),
                                   rtol=1e-5, atol=1e-5, err_msg=field)


def test_benchmark_on_cuda_reports_gpu_memory(tmp_path, monkeypatch):
    tiny = bench.BenchConfig(env="CartPole-NoVel", n_envs=4, n_steps=8, n_epochs=1, n_minibatches=2,
                             hyperparams=dict(d_model=16, d_input=8, nlm_hidden=2, n_synch_out=4), ticks=(1,))
    monkeypatch.setitem(bench.CONFIGS, "tiny", tiny)
    out = tmp_path / "bench.json"
    assert bench.main(["--configs", "tiny", "--device", DEVICE, "--compile", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["compile_rollout"] is True
    if DEVICE.startswith("cuda"):  # peak memory is then torch.cuda.max_memory_allocated
        assert results["machine"]["gpu"] == torch.cuda.get_device_name(0)
        for row in results["rows"][1:]:
            assert 0 < row["peak_memory_mb"] < torch.cuda.get_device_properties(0).total_memory / 2**20
