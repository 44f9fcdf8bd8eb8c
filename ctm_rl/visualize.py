"""Watch a trained agent think: episode animations, a neural-dynamics figure, tick probes, and returns at other
tick counts than the agent was trained with.

    python -m ctm_rl.visualize runs/CartPole-NoVel/ctm-seed0 --episodes 2 --out viz/cartpole
    python -m ctm_rl.visualize runs/CartPole-NoVel/ctm-seed0 --ticks 1 2 4 8       # think longer at test time
    python -m ctm_rl.visualize model.zip --env MiniGrid-DoorKey-5x5 --trust-pickle   # a model file on its own

Each episode becomes an animated GIF (and an MP4 with ``pip install 'ctm-rl[video]'``), one frame per env step:
the environment (or a plot of the observation where it has no renderer); the action probabilities with the
chosen action marked, the value estimate, the reward and the return so far; a few neurons' post-activations
(pre-activations dashed) scrolling with time, ticks on the time axis and env steps marked; and the output
synchronisation as a heat strip. LSTM agents show hidden units (cell units dashed) and their hidden state.

Per episode it also draws ``dynamics-<n>.png`` (many neurons' traces over the whole episode, and the
synchronisation over time) and, for agents with more than one tick, ``ticks-<n>.png`` (the action distribution
and its entropy after every internal tick: the tick probes). It prints each episode's return and dynamics
measures. With several ``--ticks`` it evaluates the agent at each count and prints return against ticks.

A run folder is loaded without unpickling anything (rebuilt from its ``config.yaml`` and its tensors); a model
file inside a run folder is loaded the same way, a model file on its own only with ``--trust-pickle``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path


from ctm_rl.dynamics import EpisodeRecord, agent_kind, dynamics_measures, evaluate_ticks, record_episode, ticks_of
from ctm_rl.errors import ConfigError, CtmRlError
from ctm_rl.figures import draw_frames, dynamics_figure, tick_probe_figure, write_gif, write_mp4

def load_agent_for_viewing(source: Path, env: str | None, trust_pickle: bool, render: bool = True):
    """The agent of a run folder or model file with a one-env environment to watch it in.

    :return: the model, its one-env VecEnv (rendering ``rgb_array``), and the run's config (``None`` for a model
        file loaded on its own).
    """
    from ctm_rl.sb3.checkpoints import load_agent, load_weights
    from ctm_rl.train import build_model, load_run_model, read_run_config, run_env

    render_mode = "rgb_array" if render else None
    if source.is_dir():
        config = read_run_config(source)
        if env:
            raise ConfigError("--env is for a model file on its own; a run folder names its env. Fix: drop --env.")
        venv = run_env(config, render_mode=render_mode)
        return load_run_model(source, venv, config), venv, config
    if not source.exists():
        raise ConfigError(f"{source} does not exist. Fix: pass a run folder or a model .zip.")
    run_dir = next((folder for folder in (source.parent, source.parent.parent) if (folder / "config.yaml").exists()),
                   None)
    if run_dir is not None:  # a save inside its run folder: rebuild from the folder, read only tensors
        config = read_run_config(run_dir)
        venv = run_env(config, render_mode=render_mode)
        return load_weights(build_model(config, venv, run_dir), source, config.device), venv, config
    if not env:
        raise ConfigError(f"{source} is not inside a run folder, so its env is unknown. Fix: pass --env NAME.")
    from ctm_rl.envs import make_env, resolve_env

    venv = make_env(resolve_env(env), n_envs=1, seed=12_345, render_mode=render_mode)
    return load_agent(source, env=venv, trust_pickle=trust_pickle), venv, None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctm_rl.visualize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a run folder, or a model .zip")
    parser.add_argument("--episodes", type=int, default=1, help="episodes to record (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=12_345, help="seed of the first episode's env (default: %(default)s)")
    actions = parser.add_mutually_exclusive_group()
    actions.add_argument("--deterministic", dest="deterministic", action="store_true", default=True,
                         help="take the likeliest action (default)")
    actions.add_argument("--stochastic", dest="deterministic", action="store_false", help="sample actions")
    parser.add_argument("--out", type=Path, help="output folder (default: SOURCE's folder /visualize)")
    parser.add_argument("--ticks", type=int, nargs="+", metavar="K",
                        help="internal ticks per step at test time (CTM agents); several: record each, and "
                             "evaluate return against ticks")
    parser.add_argument("--eval-episodes", type=int, default=20,
                        help="episodes per tick count when several --ticks are given (default: %(default)s)")
    parser.add_argument("--max-frames", type=int, help="animate at most this many steps of each episode")
    parser.add_argument("--fps", type=int, default=8, help="frames per second of the animations (default: %(default)s)")
    parser.add_argument("--env", help="environment of a model file that is not inside a run folder")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load a model file on its own, which unpickles it and runs any code it carries")
    return parser


def _validate(args: argparse.Namespace) -> None:
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}.")
    if args.ticks and min(args.ticks) < 1:
        raise ConfigError(f"--ticks must all be >= 1, got {args.ticks}.")
    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError(f"--max-frames must be >= 1, got {args.max_frames}.")
    if args.eval_episodes < 1 or args.fps < 1:
        raise ConfigError("--eval-episodes and --fps must be >= 1.")


def visualize(args: argparse.Namespace) -> dict:
    """Record, draw and evaluate as the command line asks; return what it printed, as a summary dict."""
    _validate(args)
    model, venv, config = load_agent_for_viewing(args.source, args.env, args.trust_pickle)
    out = args.out or (args.source if args.source.is_dir() else args.source.parent) / "visualize"
    kind = agent_kind(model)
    summary: dict = {"agent": kind, "episodes": []}
    try:
        if args.ticks and kind != "ctm":
            raise ConfigError("Only CTM agents have internal ticks. Fix: drop --ticks for an LSTM agent.")
        out.mkdir(parents=True, exist_ok=True)
        for ticks in args.ticks or [None]:
            with ticks_of(model, ticks):
                for number in range(args.episodes):
                    venv.seed(args.seed + number)
                    episode = record_episode(model, venv, args.deterministic)
                    name = f"episode-{number}" + (f"-ticks{ticks}" if ticks else "")
                    shown = EpisodeRecord(episode.kind, episode.ticks, episode.steps[: args.max_frames],
                                          episode.frames[: args.max_frames], episode.observations[: args.max_frames])
                    frames = draw_frames(shown)
                    write_gif(frames, out / f"{name}.gif", args.fps)
                    write_mp4(frames, out / f"{name}.mp4", args.fps)
                    dynamics_figure(episode, out / f"dynamics-{name.removeprefix('episode-')}.png")
                    if episode.ticks > 1 and episode.steps[0].tick_probabilities is not None:
                        tick_probe_figure(episode, out / f"ticks-{name.removeprefix('episode-')}.png")
                    measures = dynamics_measures(episode.unit_trace())
                    row = {"episode": number, "ticks": episode.ticks, "return": episode.total_return,
                           "steps": len(episode.steps), **asdict(measures)}
                    summary["episodes"].append(row)
                    print(f"{name}: return {episode.total_return:.4g} over {len(episode.steps)} steps; dynamics: "
                          f"dominant-frequency spread {measures.frequency_spread:.3g}, mean |correlation| "
                          f"{measures.mean_correlation:.3g} ({measures.active_units} varying units)")
        if args.ticks and len(args.ticks) > 1:
            evaluation = evaluate_ticks(model, venv, args.ticks, args.eval_episodes, args.deterministic, args.seed)
            summary["ticks"] = [{"ticks": e.ticks, "mean": e.mean.value, "low": e.mean.low, "high": e.mean.high,
                                 "returns": e.returns} for e in evaluation]
            print(f"Return against test-time ticks ({args.eval_episodes} episodes each, mean [95% CI]):")
            for e in evaluation:
                print(f"  {e.ticks:>3} ticks: {e.mean.value:.4g} [{e.mean.low:.4g}, {e.mean.high:.4g}]")
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(f"Wrote {out}")
    finally:
        venv.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        visualize(args)
    except CtmRlError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
