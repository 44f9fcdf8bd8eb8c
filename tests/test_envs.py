"""Environment factory: friendly names, masking, MiniGrid set-up, custom envs and errors."""

import sys

import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from ctm_rl import UnknownEnvError
from ctm_rl.envs import make_env, make_single_env, resolve_env


def test_versionless_name_resolves_to_latest_version():
    assert resolve_env("MiniGrid-FourRooms").gym_id == "MiniGrid-FourRooms-v0"
    assert resolve_env("CartPole").gym_id == "CartPole-v1"


def test_novel_suffix_masks_velocities():
    resolved = resolve_env("CartPole-NoVel")
    assert resolved.gym_id == "CartPole-v1" and resolved.mask_velocity and resolved.name == "CartPole-NoVel"
    env = make_single_env(resolved)
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
        assert obs[1] == 0.0 and obs[3] == 0.0 and obs[0] != 0.0 and obs[2] != 0.0
    acrobot = make_single_env(resolve_env("Acrobot-v1", mask_velocity=True))
    obs, _ = acrobot.reset(seed=0)
    assert np.all(obs[4:] == 0.0) and np.any(obs[:4] != 0.0)


def test_masking_an_env_without_known_velocities_is_an_error():
    with pytest.raises(UnknownEnvError, match="Velocity masking is defined for CartPole, Acrobot"):
        resolve_env("Pendulum-NoVel")


def test_minigrid_observes_symbolic_grid_with_max_steps():
    env = make_single_env(resolve_env("MiniGrid-Empty-5x5"), max_steps=7)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (7, 7, 3) and env.observation_space.contains(obs)
    assert env.observation_space.high.reshape(-1, 3)[0].tolist() == [10, 5, 2]
    for step in range(1, 8):
        _, _, terminated, truncated, _ = env.step(2 if step % 2 else 1)
    assert truncated or terminated


def test_unknown_id_lists_close_matches():
    with pytest.raises(UnknownEnvError, match=r"Unknown environment 'CartPol-v1'\. Close matches: CartPole-v1"):
        resolve_env("CartPol-v1")
    with pytest.raises(UnknownEnvError, match="MiniGrid-FourRooms"):
        resolve_env("MiniGrid-FourRoom")


def test_custom_env_by_entry_point_with_kwargs():
    venv = make_env("toy_envs:CueRecall", n_envs=2, env_kwargs={"n_cues": 3, "delay": 2}, seed=0)
    assert venv.observation_space.shape == (4,) and venv.action_space.n == 3
    venv.reset()
    for _ in range(2):
        _, _, dones, _ = venv.step(np.zeros(2, dtype=int))
        assert not dones.any()
    _, _, dones, _ = venv.step(np.zeros(2, dtype=int))
    assert dones.all()


def test_popgym_ids_resolve_with_tuple_observations_as_dicts():
    pytest.importorskip("popgym")
    assert resolve_env("popgym-AutoencodeEasy").gym_id == "popgym-AutoencodeEasy-v0"
    venv = make_env("popgym-AutoencodeEasy-v0", n_envs=2, seed=0)
    assert set(venv.observation_space.spaces) == {"0", "1"}
    assert [venv.observation_space[key].n for key in ("0", "1")] == [2, 4]
    observations = venv.reset()
    assert venv.observation_space.contains({key: value[0] for key, value in observations.items()})
    battleship = make_env("popgym-BattleshipEasy-v0", n_envs=1, seed=0)
    assert battleship.action_space.nvec.tolist() == [8, 8]


def test_popgym_id_without_popgym_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "popgym", None)  # makes `import popgym` fail
    with pytest.raises(UnknownEnvError, match=r"popgym is not installed\. Fix: pip install 'ctm-rl\[popgym\]'"):
        resolve_env("popgym-RepeatPreviousEasy-v0")


def test_env_module_registers_ids():
    with pytest.raises(UnknownEnvError):
        resolve_env("ToyCueRecall-v7")
    assert resolve_env("ToyCueRecall", env_module="toy_envs").gym_id == "ToyCueRecall-v0"


def test_bad_entry_point_and_module_errors():
    with pytest.raises(UnknownEnvError, match="has no attribute 'CueRecal'. Close matches: CueRecall"):
        resolve_env("toy_envs:CueRecal")
    with pytest.raises(UnknownEnvError, match="Could not import env module 'no_such_package'"):
        resolve_env("CartPole-v1", env_module="no_such_package")


@pytest.mark.parametrize("vec_env, cls", [("dummy", DummyVecEnv), ("subproc", SubprocVecEnv)])
def test_vectorisation_and_monitor(tmp_path, vec_env, cls):
    venv = make_env("CartPole-v1", n_envs=2, seed=0, vec_env=vec_env, monitor_dir=str(tmp_path))
    try:
        assert isinstance(venv.venv, cls) and venv.num_envs == 2  # under the guard
        venv.reset()
        for _ in range(60):
            venv.step(np.ones(2, dtype=int))
    finally:
        venv.close()
    lines = (tmp_path / "0.monitor.csv").read_text().splitlines()
    assert lines[1] == "r,l,t" and len(lines) > 2


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_observations_stop_training_with_the_env_and_step_named(tmp_path, capsys, value):
    import ctm_rl.train as train_module

    assert train_module.main(["--env", "toy_envs:GoesNonFinite", "--env-kwargs", "bad_step=5", f"value={value}",
                              "--log-dir", str(tmp_path), "--timesteps", "64", "--n-envs", "2", "--hyperparams",
                              "n_steps=16", "batch_size=32", "d_model=16", "d_input=8", "n_synch_out=4",
                              "--eval-freq", "0", "--no-progress-bar"]) == 2
    err = capsys.readouterr().err
    assert "toy_envs:GoesNonFinite returned NaN or infinity in the observation at step 5 (env 0)" in err
    assert "Fix:" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir()), "a run that saved nothing leaves no folder behind"


FAULT_RUN = ["--timesteps", "64", "--n-envs", "2", "--hyperparams", "n_steps=16", "batch_size=32", "d_model=16",
             "d_input=8", "n_synch_out=4", "--eval-freq", "0", "--no-progress-bar"]


@pytest.mark.parametrize("fault, message", [
    ("raise", "toy_envs:Faulty raised RuntimeError at step 3: the simulator lost its state. Fix:"),
    ("shape", "toy_envs:Faulty returned an observation that does not fit its observation space Box(-1.0, 1.0, (3,), "
              "float32) at step 3"),
])
def test_an_env_fault_is_one_line_naming_env_and_step_and_debug_shows_its_traceback(tmp_path, capsys, fault, message):
    import ctm_rl.train as train_module
    from ctm_rl.envs.wrappers import EnvFaultError

    args = ["--env", "toy_envs:Faulty", "--env-kwargs", f"fault={fault}", "--max-steps", "50", "--log-dir",
            str(tmp_path), *FAULT_RUN]
    assert train_module.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir()), "a run that saved nothing leaves no folder behind"
    with pytest.raises(EnvFaultError) as raised:
        train_module.main([*args, "--debug"])
    assert isinstance(raised.value.__cause__, RuntimeError if fault == "raise" else ValueError)
