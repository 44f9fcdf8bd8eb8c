"""The training command: run folder, presets and overrides, resume, Ctrl-C, checkpoints and bad input."""

import re

import numpy as np
import pytest
import torch
import yaml
from helpers import interrupt_training_at
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.logger import configure

import ctm_rl.train as train_module
from ctm_rl import CheckpointError, ConfigError, CtmPolicy
from ctm_rl.sb3.callbacks import TimedEvalCallback
from ctm_rl.sb3.checkpoints import load_agent
from ctm_rl.config import apply_hyperparams, load_preset, parse_value, resolve_config
from ctm_rl.envs import make_env, resolve_env
from ctm_rl.tune import search_space

TINY = ["--n-envs", "2", "--hyperparams", "n_steps=16", "batch_size=32", "n_epochs=1", "d_model=16", "d_input=8",
        "n_synch_out=4", "memory_length=3", "--eval-freq", "32", "--eval-episodes", "2", "--checkpoint-freq", "32",
        "--no-progress-bar"]


def run(tmp_path, *args):
    return train_module.main(["--log-dir", str(tmp_path), *args])


def test_run_folder_holds_everything(tmp_path):
    assert run(tmp_path, "--timesteps", "64", "--seed", "3", *TINY) == 0
    run_dir = tmp_path / "CartPole-NoVel" / "ctm-seed3"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["env"] == "CartPole-NoVel" and config["seed"] == 3 and config["mask_velocity"] is True
    assert config["policy"] == "ctm" and config["agent"] == "ctm"
    assert config["policy_kwargs"]["d_model"] == 16 and config["algo"]["n_steps"] == 16
    assert "--seed 3" in (run_dir / "command.txt").read_text()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["ctm_32_steps.zip", "ctm_64_steps.zip"]
    assert len(list((run_dir / "monitor").glob("*.monitor.csv"))) == 2
    assert list((run_dir / "tb").rglob("events.out.tfevents.*"))
    with np.load(run_dir / "eval" / "evaluations.npz") as evaluations:
        assert evaluations["timesteps"].tolist() == [32, 64]
        assert evaluations["results"].shape == (2, 2)
        wall, train_time = evaluations["wall_time"], evaluations["train_time"]
        assert wall.shape == train_time.shape == (2,)
        assert np.all(np.diff(wall) > 0) and np.all(train_time > 0) and np.all(train_time < wall)
    model = RecurrentPPO.load(run_dir / "model.zip")
    assert isinstance(model.policy, CtmPolicy) and model.num_timesteps == 64


def test_resume_continues_from_latest_checkpoint(tmp_path):
    run(tmp_path, "--timesteps", "64", *TINY)
    run_dir = tmp_path / "CartPole-NoVel" / "ctm-seed0"
    assert train_module.main(["--resume", str(run_dir), "--timesteps", "128", "--no-progress-bar"]) == 0
    assert RecurrentPPO.load(run_dir / "model.zip").num_timesteps == 128
    with np.load(run_dir / "eval" / "evaluations.npz") as evaluations:
        assert evaluations["timesteps"].tolist() == [32, 64, 96, 128]
        assert np.all(np.diff(evaluations["wall_time"]) > 0)  # the clock continues across the resume
        assert np.all(np.diff(evaluations["train_time"]) > 0)
    assert len((run_dir / "command.txt").read_text().splitlines()) == 2


def test_the_minigrid_presets_relu_heads_and_adam_eps_reach_the_model_and_survive_a_resume(tmp_path):
    """The preset names its heads' activation by string and Adam's eps in a nested mapping: both must reach the
    policy that trains, and the policy a resume rebuilds from the run folder."""

    def heads_and_eps(model):
        activations = {type(m) for m in model.policy.mlp_extractor.modules()
                       if isinstance(m, (torch.nn.ReLU, torch.nn.Tanh))}
        return activations, model.policy.optimizer.defaults["eps"]

    assert run(tmp_path, "--env", "MiniGrid-Empty-5x5", "--timesteps", "64", *TINY) == 0
    run_dir = tmp_path / "MiniGrid-Empty-5x5" / "ctm-seed0"
    assert heads_and_eps(RecurrentPPO.load(run_dir / "model.zip")) == ({torch.nn.ReLU}, 1e-8)
    assert train_module.main(["--resume", str(run_dir), "--timesteps", "128", "--no-progress-bar"]) == 0
    resumed = RecurrentPPO.load(run_dir / "model.zip")
    assert resumed.num_timesteps == 128 and heads_and_eps(resumed) == ({torch.nn.ReLU}, 1e-8)
    # and the Tanh heads stay one override away
    overrides_end = TINY.index("--eval-freq")
    assert run(tmp_path, "--env", "MiniGrid-Empty-5x5", "--timesteps", "32", "--seed", "1", *TINY[:overrides_end],
               "activation_fn=Tanh", *TINY[overrides_end:]) == 0
    tanh = RecurrentPPO.load(tmp_path / "MiniGrid-Empty-5x5" / "ctm-seed1" / "model.zip")
    assert heads_and_eps(tanh) == ({torch.nn.Tanh}, 1e-8)


def test_ctrl_c_saves_what_was_learned_and_exits_130(tmp_path, monkeypatch):
    interrupt_training_at(monkeypatch, 40)
    assert run(tmp_path, "--timesteps", "1000", *TINY) == 130
    assert RecurrentPPO.load(tmp_path / "CartPole-NoVel" / "ctm-seed0" / "model.zip").num_timesteps == 40


def test_lstm_agent_is_parameter_matched_and_recorded(tmp_path):
    assert run(tmp_path, "--agent", "lstm", "--timesteps", "32", "--n-envs", "2", "--hyperparams", "n_steps=16",
               "batch_size=32", "n_epochs=1", "--eval-freq", "0", "--checkpoint-freq", "0", "--no-progress-bar") == 0
    run_dir = tmp_path / "CartPole-NoVel" / "lstm-seed0"
    hidden = yaml.safe_load((run_dir / "config.yaml").read_text())["policy_kwargs"]["lstm_hidden_size"]
    assert isinstance(hidden, int) and hidden > 1
    assert RecurrentPPO.load(run_dir / "model.zip").policy.lstm_actor.hidden_size == hidden


def test_presets_merge_default_family_and_exact_name():
    preset = load_preset("ctm", resolve_env("MiniGrid-FourRooms").preset_blocks)
    assert preset["max_steps"] == 300  # exact name
    assert preset["policy_kwargs"]["d_model"] == 256 and preset["algo"]["n_epochs"] == 4  # family
    assert preset["algo"]["clip_range"] == 0.2 and preset["policy"] == "ctm"  # default


@pytest.mark.parametrize("name", ["MiniGrid-FourRooms-v0", "MiniGrid-FourRooms"])
def test_an_exact_block_applies_to_the_id_with_and_without_version(name, tmp_path):
    assert resolve_env(name).preset_blocks[:3] == ("default", "MiniGrid", "MiniGrid-FourRooms")
    assert resolve_config(name, "ctm", {})[0].max_steps == 300  # the bundled preset's MiniGrid-FourRooms block
    (tmp_path / "search").mkdir()
    (tmp_path / "mine.yml").write_text("default: {policy: lstm, n_timesteps: 1000}\n"
                                       "MiniGrid-FourRooms: {max_steps: 77}\nMiniGrid-FourRooms-v0: {n_envs: 3}\n")
    (tmp_path / "search" / "mine.yml").write_text("MiniGrid-FourRooms: {n_epochs: {type: int, low: 2, high: 3}}\n")
    config = resolve_config(name, str(tmp_path / "mine.yml"), {})[0]
    assert config.max_steps == 77 and config.n_envs == 3  # both exact blocks, the versioned one last
    assert search_space(str(tmp_path / "mine.yml"), name) == {"n_epochs": {"type": "int", "low": 2, "high": 3}}


def test_hyperparams_override_any_key():
    preset = apply_hyperparams(load_preset("ctm", resolve_env("CartPole-NoVel").preset_blocks),
                               {"d_model": 64, "algo.n_epochs": 2, "learning_rate": parse_value("3e-4"), "n_envs": 4,
                                "policy_kwargs.ticks": 2})
    assert preset["policy_kwargs"]["d_model"] == 64 and preset["algo"]["n_epochs"] == 2
    assert preset["policy_kwargs"]["ticks"] == 2
    assert preset["algo"]["learning_rate"] == 3e-4 and preset["n_envs"] == 4


def test_unknown_hyperparameter_suggests_close_names():
    with pytest.raises(ConfigError, match="Unknown hyperparameter 'd_modle'.*Did you mean: d_model"):
        apply_hyperparams({"policy": "ctm"}, {"d_modle": 3})


@pytest.mark.parametrize("args, message", [
    (["--env", "CartPol-v1"], "Unknown environment 'CartPol-v1'. Close matches: CartPole-v1"),
    (["--hyperparams", "n_synch_out=300"], "n_synch_out (300) cannot exceed d_model (128)"),
    (["--hyperparams", "memory_length=0"], "memory_length must be an integer >= 1"),
    (["--ticks", "0"], "ticks must be an integer >= 1"),
    (["--agent", "lstm", "--ticks", "2"], "--ticks sets the CTM's internal ticks; the lstm agent's policy is lstm"),
    (["--agent", "gru"], "Unknown agent 'gru'. Fix: use one of ctm, lstm, or the path of a preset file"),
    (["--agent", "nowhere/preset.yml"], "Preset file 'nowhere/preset.yml' does not exist"),
    (["--n-envs", "2", "--hyperparams", "n_envs=4"], "--n-envs 2 and --hyperparams n_envs=4 disagree"),
    (["--hyperparams", "batch_size=100000"], "batch_size (100000) exceeds the rollout size"),
    (["--resume", "/nonexistent/run"], "has no config.yaml"),
    (["--hyperparams", "learning_rate=lin_x"], "'lin_x' is not a linear schedule. Fix: lin_<number>"),
    (["--hyperparams", "batch_size=0"], "batch_size must be an integer >= 1, got 0"),
    (["--hyperparams", "gamma=abc"], "gamma must be a number > 0 and <= 1, got 'abc'"),
    (["--hyperparams", "n_epochs=2.5"], "n_epochs must be an integer >= 1, got 2.5"),
    (["--hyperparams", "learning_rate=-1"], "learning_rate must be a number > 0, got -1"),
    (["--hyperparams", "n_envs=0"], "n_envs must be an integer >= 1, got 0"),
    (["--max-steps", "0"], "max_steps must be an integer >= 1"),
    (["--max-steps", "-1"], "max_steps must be an integer >= 1"),
    (["--seed", "-1"], "seed must be an integer >= 0, got -1"),
    (["--eval-freq", "-1"], "eval_freq must be an integer >= 0, got -1"),
    (["--checkpoint-freq", "-5"], "checkpoint_freq must be an integer >= 0, got -5"),
    (["--keep-checkpoints", "-1"], "keep_checkpoints must be an integer >= 0, got -1"),
    (["--env-kwargs", "colour=red"], "CartPole-NoVel could not be built with the environment arguments given "
                                     "(colour='red')"),
    (["--env", "MiniGrid-DoorKey-5x5", "--env-kwargs", "colour=red"], "MiniGrid-DoorKey-5x5 could not be built"),
    (["--hyperparams", "standardize_momentum=2"], "standardize_momentum must be in [0, 1], got 2"),
    (["--hyperparams", "action_gain=0"], "action_gain must be a number > 0, got 0"),
    (["--agent", "lstm", "--hyperparams", "action_gain=-1"], "action_gain must be a number > 0, got -1"),
    (["--hyperparams", "share_ctm=false", "detach_critic=true"], "detach_critic=True applies to a shared CTM"),
    (["--hyperparams", "share_features_extractor=false"], "share_ctm=True needs share_features_extractor=True"),
    (["--hyperparams", "compile_rollout=3"], "compile_rollout must be true, false or a mapping"),
    (["--hyperparams", "activation_fn=Relu"], "activation_fn 'Relu' is not a torch.nn module name"),
    (["--agent", "lstm", "--hyperparams", "shared_lstm=false", "detach_critic=false"],
     "detach_critic=False applies to a shared LSTM"),
])
def test_bad_input_prints_one_clear_error_and_creates_nothing(tmp_path, capsys, args, message):
    assert run(tmp_path, "--timesteps", "32", "--no-progress-bar", *args) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert "Run folder" not in out + err, "refused only after the run had started"
    assert "Fix" in err or "Did you mean" in err or "Close matches" in err
    assert not any(tmp_path.iterdir()), "a failed command left files behind"


def test_a_run_whose_evaluation_interval_exceeds_its_budget_is_evaluated_once_at_the_end(tmp_path, capsys):
    assert run(tmp_path, "--timesteps", "64", "--eval-freq", "1000", *TINY[:-7], "--eval-episodes", "2",
               "--checkpoint-freq", "0", "--no-progress-bar") == 0
    assert "evaluated once, at the end" in capsys.readouterr().err
    with np.load(tmp_path / "CartPole-NoVel" / "ctm-seed0" / "eval" / "evaluations.npz") as evaluations:
        assert evaluations["timesteps"].tolist() == [64]


@pytest.mark.parametrize("max_steps, warned", [([], True), (["--max-steps", "10"], False)])
def test_a_class_env_without_step_limit_gets_a_warning(tmp_path, capsys, max_steps, warned):
    assert run(tmp_path, "--env", "toy_envs:CueRecall", "--timesteps", "32", *max_steps, *TINY) == 0
    err = capsys.readouterr().err
    assert ("toy_envs:CueRecall has no episode step limit" in err and "Fix: pass --max-steps N" in err) == warned


def test_a_log_dir_that_is_a_file_gets_a_clear_error(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert train_module.main(["--log-dir", str(tmp_path / "file"), "--timesteps", "32", "--no-progress-bar"]) == 2
    err = capsys.readouterr().err
    assert "Cannot create the run folder" in err and "Fix: give --log-dir a folder" in err and "Traceback" not in err


@pytest.mark.parametrize("agent, env, n_envs, expected", [
    ("ctm", "MiniGrid-FourRooms", 2, 64),  # 32 envs x 128 steps in 4 minibatches of 1024 -> 2 x 128 in 4 of 64
    ("lstm", "MiniGrid-FourRooms", 2, 128),  # 16 envs x 128 steps in 2 minibatches of 1024 -> 2 x 128 in 2 of 128
    ("lstm", "CartPole-NoVel", 4, 128),  # 8 x 32 in 1 of 256 -> 4 x 32 in 1 of 128
])
def test_fewer_envs_keep_the_presets_minibatches_per_epoch(capsys, agent, env, n_envs, expected):
    from ctm_rl.config import resolve_config

    config, _ = resolve_config(env, agent, n_envs=n_envs)
    assert config.algo["batch_size"] == expected and config.n_envs == n_envs
    assert "batch_size" in capsys.readouterr().err
    explicit, _ = resolve_config(env, agent, {"batch_size": 64}, n_envs=n_envs)
    assert explicit.algo["batch_size"] == 64


def _copy_preset(source: str, path, edit=lambda text: text):
    from ctm_rl.config import preset_file

    path.write_text(edit(preset_file(source).read_text()))
    return path


@pytest.mark.parametrize("source", ["ctm", "lstm"])
def test_a_copied_preset_trains_the_policy_it_names(tmp_path, monkeypatch, source):
    """The policy kind comes from the preset's `policy` key, not its file name: a copy under another name
    trains, as a bundled preset and by path."""
    from ctm_rl import config as config_module

    bundled = tmp_path / "presets"
    bundled.mkdir()
    for name in ("ctm", "lstm"):
        _copy_preset(name, bundled / f"{name}.yml")
    copied = _copy_preset(source, bundled / f"{source}_small.yml")
    monkeypatch.setattr(config_module, "preset_dir", lambda: bundled)
    tiny = ["--timesteps", "32", "--n-envs", "2", "--hyperparams", "n_steps=16", "batch_size=32", "n_epochs=1",
            "--eval-freq", "0", "--checkpoint-freq", "0", "--no-progress-bar"]
    for agent, folder in ((f"{source}_small", f"{source}_small-seed0"), (str(copied), f"{source}_small-seed0-2")):
        assert run(tmp_path / "runs", "--agent", agent, *tiny) == 0
        run_dir = tmp_path / "runs" / "CartPole-NoVel" / folder
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["policy"] == source
        policy = RecurrentPPO.load(run_dir / "model.zip").policy
        assert isinstance(policy, CtmPolicy) == (source == "ctm")


@pytest.mark.parametrize("edit, message", [
    (lambda text: text.replace("  n_envs: 8", "  n_envs: [8"), r"line \d+: .*Fix: correct the YAML there"),
    (lambda text: text.replace("  n_envs: 8", "  n_env: 8"), "block 'default' has unknown keys n_env"),
    (lambda text: text.replace("  policy: ctm\n", ""), "names no policy kind"),
    (lambda text: text.replace("  policy: ctm\n", "  policy: gru\n"), "Unknown policy kind 'gru'"),
    (lambda text: text.replace("    n_epochs: 10", "    n_epoch: 10"), "unknown algo keys n_epoch .*Did you mean: n_epochs"),
    (lambda text: text.replace("    d_model: 128", "    d_modl: 128"), "unknown policy_kwargs keys d_modl"),
    (lambda text: text.replace("    gamma: 0.98", "    gamma: high"), "gamma must be a number > 0"),
])
def test_bad_preset_files_name_the_problem(tmp_path, capsys, edit, message):
    preset = _copy_preset("ctm", tmp_path / "broken.yml", edit)
    assert run(tmp_path / "runs", "--agent", str(preset), "--no-progress-bar") == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def saved_model(tmp_path):
    model = RecurrentPPO(CtmPolicy, make_env("CartPole-NoVel", n_envs=2), n_steps=8, batch_size=16,
                         policy_kwargs=dict(d_model=16, d_input=8, n_synch_out=4))
    model.save(tmp_path / "model.zip")
    return tmp_path / "model.zip"


def test_corrupt_checkpoints_raise_checkpoint_error(saved_model, tmp_path):
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(saved_model.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="not a readable model archive"):
        load_agent(truncated, trust_pickle=True)
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="not a readable model archive"):
        load_agent(garbage, trust_pickle=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_agent(tmp_path / "missing.zip", trust_pickle=True)


def test_mismatched_checkpoints_raise_checkpoint_error(saved_model):
    assert load_agent(saved_model, expected_policy_kwargs={"d_model": 16}, trust_pickle=True).policy.ctm.d_model == 16
    with pytest.raises(CheckpointError, match="does not match the environment"):
        load_agent(saved_model, env=make_env("MiniGrid-Empty-5x5"), trust_pickle=True)
    with pytest.raises(CheckpointError, match="d_model: saved 16, requested 32"):
        load_agent(saved_model, expected_policy_kwargs={"d_model": 32}, trust_pickle=True)


@pytest.mark.parametrize("flags, deterministic", [((), True), (("--eval-stochastic",), False)])
def test_evaluation_takes_the_most_likely_or_sampled_actions(tmp_path, flags, deterministic):
    # CueOrWait with the go signal at step 1: a policy that prefers waiting a little waits every step of every
    # episode with its most likely actions (9 steps, then the episode ends unanswered), while sampling answers
    # within a few steps.
    args = ["--env", "ToyCueOrWait-v0", "--env-module", "toy_envs", "--env-kwargs", "delay=1", "patience=8",
            "--timesteps", "16", *TINY, "--eval-episodes", "20", *flags]
    config, env = train_module.config_from_args(train_module.build_parser().parse_args(args))
    assert config.eval_deterministic is deterministic
    run_dir = tmp_path / "run"
    model = train_module.build_model(config, make_env(env, n_envs=2, env_kwargs=config.env_kwargs), run_dir)
    with torch.no_grad():  # the actions' logits no longer depend on the observation: wait is the most likely
        model.policy.action_net.weight.zero_()
        model.policy.action_net.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.5]))
    (evaluation,) = [c for c in train_module.make_callbacks(config, env, run_dir) if isinstance(c, TimedEvalCallback)]
    model.set_logger(configure(None, []))
    evaluation.init_callback(model)
    evaluation.evaluate_now()
    lengths = np.asarray(evaluation.evaluations_length[-1])
    if deterministic:
        assert lengths.tolist() == [9] * 20
    else:
        assert lengths.mean() < 4
