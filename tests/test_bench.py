"""The throughput benchmark and the shared-trace rollout buffer it measures."""

import json
import os

import pytest
import torch
from sb3_contrib import RecurrentPPO

from ctm_rl import CtmPolicy, bench
from ctm_rl.sb3.lstm import LstmPolicy
from ctm_rl.sb3.buffers import CtmRolloutBuffer
from ctm_rl.sb3.ppo import CtmPPO
from ctm_rl.envs import make_env

SMALL = dict(d_model=16, d_input=8, memory_length=3, nlm_hidden=2, n_synch_out=4)


def _model(algorithm, share_ctm=True, seed=0):
    venv = make_env("CartPole-NoVel", n_envs=3, seed=seed)
    return algorithm(CtmPolicy, venv, n_steps=10, batch_size=15, n_epochs=2, seed=seed, device="cpu",
                     policy_kwargs=dict(SMALL, share_ctm=share_ctm))


def test_shared_ctm_buffer_stores_traces_once_and_learns_the_same():
    # Built and trained one after the other: both seed the global random generators they draw from.
    plain = _model(RecurrentPPO)
    plain.learn(60)
    lean = _model(CtmPPO)
    lean.learn(60)
    assert isinstance(lean.rollout_buffer, CtmRolloutBuffer) and lean.rollout_buffer.share_traces
    trace_bytes = SMALL["d_model"] * SMALL["memory_length"] * 4
    assert bench.buffer_bytes_per_step(plain)["state_bytes_per_step"] == 4 * trace_bytes
    assert bench.buffer_bytes_per_step(lean)["state_bytes_per_step"] == 2 * trace_bytes
    # Packed replay sums in another order than the padded one: equal up to float rounding.
    for (name, a), b in zip(plain.policy.state_dict().items(), lean.policy.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_separate_critic_gets_padding_marks_without_shared_traces():
    model = _model(CtmPPO, share_ctm=False)
    assert type(model.rollout_buffer) is CtmRolloutBuffer and not model.rollout_buffer.share_traces


def test_benchmark_reports_every_agent_and_consistent_ratios(tmp_path, monkeypatch):
    tiny = bench.BenchConfig(env="CartPole-NoVel", n_envs=4, n_steps=8, n_epochs=1, n_minibatches=2, ticks=(1, 2),
                             hyperparams=dict(d_model=16, d_input=8, nlm_hidden=2, n_synch_out=4, memory_length=2))
    monkeypatch.setitem(bench.CONFIGS, "tiny", tiny)
    out = tmp_path / "bench.json"
    assert bench.main(["--configs", "tiny", "--n-envs", "4", "--warmup", "0", "--iterations", "1",
                       "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["agent"], r["ticks"]) for r in rows] == [("env", 1), ("lstm", 1), ("ctm", 1),
                                                        ("env", 2), ("lstm", 2), ("ctm", 2)]
    for env, lstm, ctm in (rows[:3], rows[3:]):
        for row in (lstm, ctm):
            # total = steps / (rollout time + update time), over the timed iterations
            assert row["total_sps"] == pytest.approx(1 / (1 / row["rollout_sps"] + 1 / row["update_sps"]))
            (times,) = row["iteration_seconds"]
            assert row["best_total_sps"] == pytest.approx(4 * 8 / (times["rollout"] + times["update"]))
            assert row["vs_env"] == pytest.approx(row["total_sps"] / env["total_sps"])
            assert row["peak_memory_mb"] > 0
        assert ctm["vs_lstm"] == pytest.approx(ctm["total_sps"] / lstm["total_sps"])
        assert ctm["best_vs_lstm"] == pytest.approx(ctm["best_total_sps"] / lstm["best_total_sps"])
        # The LSTM is matched to the CTM of the same row pair, within 5%.
        assert abs(lstm["params"] - ctm["params"]) / ctm["params"] < 0.05
    # The preset's CTM with the config's overrides, whatever the ticks: (pre + post) x d_model x memory x 4 bytes,
    # stored once for the shared CTM.
    assert rows[5]["state_bytes_per_step"] == rows[2]["state_bytes_per_step"] == 2 * 16 * 2 * 4


def test_compile_flag_compiles_the_ctm_rollout_step_only(tmp_path, monkeypatch, capsys):
    tiny = bench.BenchConfig(env="CartPole-NoVel", n_envs=4, n_steps=4, n_epochs=1, n_minibatches=1,
                             hyperparams=dict(d_model=16, d_input=8, nlm_hidden=2, n_synch_out=4), ticks=(1,))
    monkeypatch.setitem(bench.CONFIGS, "tiny", tiny)
    built = {}
    make_agent = bench._agent

    def recording_agent(policy_class, policy_kwargs, *args, **kwargs):
        built[policy_class] = dict(policy_kwargs)
        if policy_kwargs.get("compile_rollout"):  # the same path, without the code generation's minute
            policy_kwargs = {**policy_kwargs, "compile_rollout": {"backend": "eager"}}
        return make_agent(policy_class, policy_kwargs, *args, **kwargs)

    monkeypatch.setattr(bench, "_agent", recording_agent)
    out = tmp_path / "bench.json"
    assert bench.main(["--configs", "tiny", "--warmup", "0", "--iterations", "1", "--compile", "--out", str(out)]) == 0
    assert built[CtmPolicy]["compile_rollout"] is True
    assert "compile_rollout" not in built[LstmPolicy]
    assert json.loads(out.read_text())["compile_rollout"] is True
    assert "times the compilation" in capsys.readouterr().err  # no warm-up iteration was asked for


def test_quick_mode_measures_each_configs_first_tick_count_on_fewer_envs(tmp_path, monkeypatch):
    tiny = bench.BenchConfig(env="CartPole-NoVel", n_envs=64, n_steps=4, n_epochs=1, n_minibatches=1,
                             hyperparams=dict(d_model=16, d_input=8, nlm_hidden=2, n_synch_out=4), ticks=(2, 3))
    monkeypatch.setitem(bench.CONFIGS, "tiny", tiny)
    out = tmp_path / "bench.json"
    assert bench.main(["--configs", "tiny", "--quick", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [(row["agent"], row["ticks"], row["n_envs"]) for row in results["rows"]] == [
        (agent, 2, bench.QUICK_ENVS) for agent in ("env", "lstm", "ctm")]
    assert (results["warmup"], results["iterations"]) == (0, 1)
    assert len(results["rows"][-1]["iteration_seconds"]) == 1


def test_profile_option_writes_a_trace_and_a_table_per_agent(tmp_path, monkeypatch):
    tiny = bench.BenchConfig(env="CartPole-NoVel", n_envs=4, n_steps=4, n_epochs=1, n_minibatches=1,
                             hyperparams=dict(d_model=16, d_input=8, nlm_hidden=2, n_synch_out=4), ticks=(1,))
    monkeypatch.setitem(bench.CONFIGS, "tiny", tiny)
    profiles = tmp_path / "profiles"
    assert bench.main(["--configs", "tiny", "--warmup", "0", "--iterations", "1", "--profile", str(profiles),
                       "--out", str(tmp_path / "bench.json")]) == 0
    assert sorted(path.name for path in profiles.iterdir()) == [
        "tiny-ticks1-ctm.json", "tiny-ticks1-ctm.txt", "tiny-ticks1-lstm.json", "tiny-ticks1-lstm.txt"]
    trace = json.loads((profiles / "tiny-ticks1-ctm.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert "aten::baddbmm" in names  # the neuron-level models' products: the CTM's iteration was recorded
    assert "aten::lstm" in (profiles / "tiny-ticks1-lstm.txt").read_text()


def test_benchmark_refuses_cuda_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert bench.main(["--device", "cuda", "--configs", "cartpole"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_timed_iterations_run_in_rounds_after_each_timer_warms_up_alone():
    calls = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def iterate(self, timed=True):
            calls.append((self.name, timed))

        def last_seconds(self):
            return len(calls) / 2

        def result(self):
            return self.name

    timers = {name: Recorder(name) for name in ("env", "lstm", "ctm")}
    lines = []
    assert bench.measure_interleaved(timers, warmup=1, iterations=2, progress=lines.append) == {
        "env": "env", "lstm": "lstm", "ctm": "ctm"}
    assert calls == [("env", False), ("lstm", False), ("ctm", False),
                     ("env", True), ("lstm", True), ("ctm", True), ("env", True), ("lstm", True), ("ctm", True)]
    assert lines == ["  timed round 1/2: env 3.0 s, lstm 3.0 s, ctm 3.0 s",
                     "  timed round 2/2: env 4.5 s, lstm 4.5 s, ctm 4.5 s"]


def test_agent_timer_hands_freed_memory_back_before_its_first_iteration_only(monkeypatch):
    released = []
    monkeypatch.setattr(bench, "release_freed_memory", lambda: released.append(True))
    timer = bench.AgentTimer(_model(CtmPPO), iterations=3)
    timer.iterate(timed=False)
    first_peak = timer.peak_memory_mb
    timer.iterate()
    timer.iterate()
    assert released == [True]  # later iterations keep freed memory in the process, as training does
    assert first_peak > 0 and timer.peak_memory_mb == first_peak
    assert len(timer.times) == 2 and timer.result()["peak_memory_mb"] == first_peak


def test_allocator_setting_applies_on_glibc_and_leaves_a_users_malloc_variables_alone(monkeypatch):
    import platform
    import sys

    from ctm_rl.allocator import keep_freed_memory

    for name in [name for name in os.environ if name.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is glibc
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert keep_freed_memory() is False
