"""Watching agents: episode records, tick probes, dynamics measures, test-time ticks and the visualize command."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import ctm_rl.train as train_module
import ctm_rl.figures as figures
import ctm_rl.visualize as visualize
from ctm_rl.dynamics import dynamics_measures, evaluate_ticks, record_episode, ticks_of
from ctm_rl.probe import recurrent_features
from ctm_rl.train import load_run_model, read_run_config, run_env

TINY = ["--n-envs", "2", "--eval-freq", "0", "--checkpoint-freq", "0", "--no-progress-bar", "--hyperparams",
        "n_steps=16", "batch_size=32", "n_epochs=1", "d_input=8"]
TINY_CTM = ["d_model=16", "n_synch_out=4", "memory_length=3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trained runs: CartPole CTM at 1 and 2 ticks, a CartPole LSTM and a MiniGrid CTM."""
    root = tmp_path_factory.mktemp("runs")

    def train(env, agent, *extra, ticks=1):
        hyperparams = [*TINY_CTM, f"ticks={ticks}"] if agent == "ctm" else ["lstm_hidden_size=8"]
        assert train_module.main(["--log-dir", str(root), "--env", env, "--agent", agent, "--timesteps", "64",
                                  "--seed", str(ticks), *TINY, *hyperparams, *extra]) == 0
        return root / env / f"{agent}-seed{ticks}"

    return {"ctm": train("CartPole-NoVel", "ctm", "--max-steps", "10"),
            "ctm2": train("CartPole-NoVel", "ctm", "--max-steps", "10", ticks=2),
            "lstm": train("CartPole-NoVel", "lstm", "--max-steps", "10"),
            "minigrid": train("MiniGrid-Empty-5x5", "ctm", "--max-steps", "8")}


def _model(run_dir, render_mode=None):
    config = read_run_config(run_dir)
    venv = run_env(config, render_mode=render_mode)
    return load_run_model(run_dir, venv, config), venv


@pytest.mark.parametrize("run", ["ctm", "ctm2", "lstm"])
def test_recorded_episode_acts_as_predict_does(runs, run):
    model, venv = _model(runs[run])
    venv.seed(7)
    episode = record_episode(model, venv, deterministic=True, render=False)
    venv.seed(7)
    obs, state, start, actions, outputs = venv.reset(), None, np.ones(1, dtype=bool), [], []
    while True:
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        actions.append(int(action[0]))
        outputs.append(recurrent_features(model.policy, state)[0])
        obs, _, dones, _ = venv.step(action)
        start = dones
        if dones[0]:
            break
    assert [int(step.action) for step in episode.steps] == actions
    np.testing.assert_allclose(np.stack([step.output for step in episode.steps]), np.stack(outputs), atol=1e-5)
    ticks = 2 if run == "ctm2" else 1
    assert episode.ticks == ticks and all(step.units.shape[0] == ticks for step in episode.steps)


def test_tick_probes_give_one_distribution_per_tick_and_the_last_is_the_policy(runs):
    model, venv = _model(runs["ctm2"])
    with ticks_of(model, 3):
        episode = record_episode(model, venv, render=False)
    for step in episode.steps:
        assert step.tick_probabilities.shape == (3, 2) and step.units.shape == (3, 16)
        np.testing.assert_allclose(step.tick_probabilities.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(step.tick_probabilities[-1], step.probabilities)
    assert model.policy.ctm.ticks == 2, "the trained tick count comes back"
    # The CTM's neurons and output change as it thinks, and with them the probes.
    assert all(not np.allclose(s.units[0], s.units[-1]) for s in episode.steps)
    assert any(not np.array_equal(s.tick_probabilities[0], s.tick_probabilities[-1]) for s in episode.steps)


def test_a_one_tick_agent_evaluated_at_three_ticks_gives_finite_and_different_returns(runs):
    model, _ = _model(runs["ctm"])
    venv = run_env(read_run_config(runs["ctm"]), n_envs=2)
    one, three = evaluate_ticks(model, venv, [1, 3], episodes=4)
    assert (one.ticks, three.ticks) == (1, 3) and len(three.returns) == 4
    assert np.isfinite(three.returns).all() and one.mean.low <= one.mean.value <= one.mean.high
    again = evaluate_ticks(model, venv, [1], episodes=4)[0]
    assert again.returns == one.returns, "every tick count is evaluated on the same episodes"


def test_dynamics_measures_tell_rhythms_and_synchrony_apart():
    time = np.arange(200)
    same = np.stack([np.sin(2 * np.pi * 0.05 * time)] * 4, axis=1)
    varied = np.stack([np.sin(2 * np.pi * f * time) for f in (0.05, 0.1, 0.2, 0.4)], axis=1)
    synchronous, rich = dynamics_measures(same), dynamics_measures(varied)
    assert synchronous.frequency_spread == pytest.approx(0.0) and synchronous.mean_correlation == pytest.approx(1.0)
    assert rich.frequency_spread > 0.1 and rich.mean_correlation < 0.1 and rich.active_units == 4
    assert np.isnan(dynamics_measures(np.ones((50, 3))).mean_correlation)


@pytest.mark.parametrize("run", ["ctm2", "lstm", "minigrid"])
def test_the_command_writes_one_frame_per_step_a_dynamics_figure_and_tick_probes(runs, run, tmp_path, capsys):
    out = tmp_path / "viz"
    assert visualize.main([str(runs[run]), "--out", str(out), "--episodes", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [row["episode"] for row in summary["episodes"]] == [0, 1]
    for row in summary["episodes"]:
        gif = Image.open(out / f"episode-{row['episode']}.gif")
        assert gif.n_frames == row["steps"]
        gif.seek(gif.n_frames // 2)
        pixels = np.asarray(gif.convert("L"), dtype=float)
        assert pixels.std() > 10, "a frame is (nearly) blank"
        assert (out / f"dynamics-{row['episode']}.png").exists()
        assert np.isfinite(row["mean_correlation"])
    assert (out / "ticks-0.png").exists() == (run == "ctm2")
    assert "return" in capsys.readouterr().out


def test_the_dynamics_figure_has_a_panel_per_unit_and_the_output_panel(runs, tmp_path):
    model, venv = _model(runs["minigrid"], render_mode="rgb_array")
    episode = record_episode(model, venv)
    assert len(episode.frames) == len(episode.steps) and episode.frames[0].ndim == 3  # MiniGrid renders
    titles = figures.dynamics_figure(episode, tmp_path / "dynamics.png", units=10)
    assert len(titles) == 11 and titles[-1] == "synchronisation over the episode"
    assert all(title.startswith("unit ") for title in titles[:10])
    image = np.asarray(Image.open(tmp_path / "dynamics.png").convert("L"), dtype=float)
    assert image.std() > 10


def test_several_ticks_print_return_against_ticks(runs, tmp_path, capsys):
    out = tmp_path / "viz"
    assert visualize.main([str(runs["ctm"]), "--out", str(out), "--ticks", "1", "3", "--eval-episodes", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [row["ticks"] for row in summary["ticks"]] == [1, 3]
    assert all(len(row["returns"]) == 3 and np.isfinite(row["mean"]) for row in summary["ticks"])
    assert (out / "episode-0-ticks3.gif").exists() and (out / "ticks-0-ticks3.png").exists()
    assert "3 ticks:" in capsys.readouterr().out


def test_a_model_file_inside_its_run_folder_loads_without_unpickling(runs, tmp_path, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    out = tmp_path / "viz"
    assert visualize.main([str(runs["lstm"] / "model.zip"), "--out", str(out)]) == 0
    assert (out / "episode-0.gif").exists()


@pytest.mark.parametrize("args, message", [
    (["--ticks", "2"], "Only CTM agents have internal ticks"),
    (["--episodes", "0"], "--episodes must be >= 1"),
    (["--env", "CartPole-v1"], "--env is for a model file on its own"),
])
def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, capsys, args, message):
    out = tmp_path / "viz"
    assert visualize.main([str(runs["lstm"]), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_lone_model_file_needs_its_env_and_trust(runs, tmp_path, capsys):
    lone = tmp_path / "lone.zip"
    lone.write_bytes((runs["ctm"] / "model.zip").read_bytes())
    assert visualize.main([str(lone)]) == 2
    assert "Fix: pass --env NAME" in capsys.readouterr().err
    assert visualize.main([str(lone), "--env", "CartPole-NoVel"]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert visualize.main([str(lone), "--env", "CartPole-NoVel", "--trust-pickle", "--out", str(tmp_path / "v")]) == 0
    torch.manual_seed(0)


def test_log_dynamics_writes_a_figure_and_measures_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert train_module.main(["--log-dir", str(tmp_path), "--timesteps", "64", "--n-envs", "2", "--max-steps", "10",
                              "--eval-freq", "32", "--eval-episodes", "1", "--checkpoint-freq", "0", "--no-progress-bar",
                              "--log-dynamics", "--hyperparams", "n_steps=16", "batch_size=32", "n_epochs=1",
                              "d_input=8", *TINY_CTM]) == 0
    events = next((tmp_path / "CartPole-NoVel" / "ctm-seed0" / "tb").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    assert "dynamics/figure" in accumulator.Tags()["images"]
    image = accumulator.Images("dynamics/figure")[-1]
    assert image.width > 300 and image.height > 200
    assert np.isfinite(accumulator.Scalars("dynamics/mean_correlation")[-1].value)


def test_an_mp4_has_one_frame_per_step_when_the_video_extra_is_installed(tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    frames = [np.full((30, 41, 3), 20 * i, dtype=np.uint8) for i in range(5)]
    assert figures.write_mp4(frames, tmp_path / "clip.mp4", fps=5)
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "clip.mp4"))
    meta = next(reader)
    assert meta["size"] == (40, 30) and sum(1 for _ in reader) == 5  # even sides for H.264
