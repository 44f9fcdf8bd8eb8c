"""Memory probe: how well an agent's recurrent state holds what it observed k steps earlier.

    python -m ctm_rl.probe runs/CartPole-NoVel/ctm-seed0 --steps 4000 --max-k 16

The agent acts in its environment (deterministically by default) while its recurrent state is recorded after
every step: the CTM's output synchronisation (what its heads read), the LSTM's hidden state. For each lag
``k``, a linear decoder (ridge regression on standardised states) is fitted from the state at step ``t`` to the
observation at step ``t - k`` of the same episode, on the first part of the steps, and scored on the rest: the
coefficient of determination R² averaged over the observation's varying entries. R² near 1 at lag ``k`` means
the state still holds that observation linearly; near 0, that it does not. The same decoder from the current
observation alone is the no-memory baseline: memory shows as the state scoring above it. A probe that decodes well while the
agent acts as if it had forgotten tells "did not learn to use it" from "cannot remember".
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ctm_rl.errors import CtmRlError
from ctm_rl.sb3.encoders import flat_observations


@dataclass(frozen=True)
class ProbePoint:
    """The decoder's score at one lag."""

    lag: int
    """Steps between the decoded observation and the state."""
    r2: float
    """Held-out R², averaged over the observation entries that vary (NaN if too few pairs)."""
    observation_r2: float
    """The same decoder's score from the current observation instead of the state: what needs no memory (an
    environment whose observations change slowly makes earlier ones predictable from the current one)."""
    pairs: int
    """(state, earlier observation) pairs within one episode, fit and held-out together."""


def decode_by_lag(states: np.ndarray, observations: np.ndarray, episode_starts: np.ndarray, lags: list[int],
                  ridge: float = 1.0, fit_share: float = 0.7) -> list[ProbePoint]:
    """Fit and score one linear decoder per lag.

    :param states: ``(T, N, S)`` recurrent state after each step of ``N`` parallel episodes' streams.
    :param observations: ``(T, N, O)`` the observation each step acted on.
    :param episode_starts: ``(T, N)``, True where the step's observation starts an episode.
    :param lags: the lags ``k`` to probe (0 decodes the current observation).
    :param ridge: the ridge penalty on standardised states.
    :param fit_share: share of the time steps (the first ones) used for fitting; the rest score.
    """
    steps = states.shape[0]
    # Episode index of every step, per stream: pairs must not cross an episode start.
    episode = np.cumsum(episode_starts, axis=0)
    split = int(steps * fit_share)
    points = []
    for lag in lags:
        later = slice(lag, steps)
        earlier = slice(0, steps - lag)
        same = episode[later] == episode[earlier]  # (T - k, N)
        times = np.broadcast_to(np.arange(lag, steps)[:, None], same.shape)
        x, y, t = states[later][same], observations[earlier][same], times[same]
        now = observations[later][same]
        fit, test = t < split, t >= split
        points.append(ProbePoint(lag, _ridge_r2(x[fit], y[fit], x[test], y[test], ridge),
                                 _ridge_r2(now[fit], y[fit], now[test], y[test], ridge), int(len(x))))
    return points


def _ridge_r2(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, ridge: float) -> float:
    if len(x_fit) < 10 or len(x_test) < 10:
        return float("nan")
    mean, scale = x_fit.mean(0), x_fit.std(0) + 1e-8
    a, b = (x_fit - mean) / scale, (x_test - mean) / scale
    a = np.hstack([a, np.ones((len(a), 1))])
    b = np.hstack([b, np.ones((len(b), 1))])
    weights = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ y_fit)
    residual = ((y_test - b @ weights) ** 2).sum(0)
    total = ((y_test - y_test.mean(0)) ** 2).sum(0)
    varying = total > 1e-8 * len(y_test)
    if not varying.any():
        return float("nan")
    return float(np.mean(1.0 - residual[varying] / total[varying]))


def recurrent_features(policy, state: tuple[np.ndarray, ...]) -> np.ndarray:
    """The part of a recurrent state an agent's heads read: a CTM's synchronisation of its post-activation
    trace, an LSTM's hidden state. :return: ``(N, S)``."""
    from ctm_rl.sb3.policy import CtmPolicy

    if isinstance(policy, CtmPolicy):
        ctm = policy.ctm
        post = torch.as_tensor(state[1], device=policy.device).reshape(-1, ctm.d_model, ctm.memory_length)
        with torch.no_grad():
            return ctm.synchronisation(post.permute(1, 2, 0)).cpu().numpy()
    return np.asarray(state[0])[-1]  # the last LSTM layer's hidden state, (N, hidden)


def record(model, venv, steps: int, deterministic: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the agent for ``steps`` steps of every env of ``venv``; return states, flattened observations and
    episode starts, ``(T, N, ...)``."""
    obs = venv.reset()
    state, starts = None, np.ones(venv.num_envs, dtype=bool)
    states, observations, episode_starts = [], [], []
    for _ in range(steps):
        action, state = model.predict(obs, state=state, episode_start=starts, deterministic=deterministic)
        states.append(recurrent_features(model.policy, state))
        observations.append(flat_observations(obs, venv.observation_space))
        episode_starts.append(starts.copy())
        obs, _, dones, _ = venv.step(action)
        starts = dones.astype(bool)
    return np.stack(states), np.stack(observations), np.stack(episode_starts)


def probe_run(run_dir: Path, steps: int = 2000, max_lag: int = 16, n_envs: int = 8, seed: int = 12_345,
              deterministic: bool = True) -> list[ProbePoint]:
    """Probe the newest save of a run folder (loaded safely, from its config), on fresh environments."""
    from ctm_rl.train import load_run_model, read_run_config, run_env

    config = read_run_config(run_dir)
    venv = run_env(config, n_envs, seed)
    try:
        model = load_run_model(run_dir, venv, config)
        states, observations, starts = record(model, venv, steps, deterministic)
    finally:
        venv.close()
    return decode_by_lag(states, observations, starts, list(range(max_lag + 1)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctm_rl.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run folder written by python -m ctm_rl.train or compare")
    parser.add_argument("--steps", type=int, default=2000, help="steps per env to record (default: %(default)s)")
    parser.add_argument("--n-envs", type=int, default=8, help="parallel envs (default: %(default)s)")
    parser.add_argument("--max-k", type=int, default=16, help="largest lag to probe (default: %(default)s)")
    parser.add_argument("--stochastic", action="store_true", help="sample actions instead of taking the likeliest")
    parser.add_argument("--out", type=Path, help="JSON file for the results (default: RUN_DIR/probe.json)")
    args = parser.parse_args(argv)
    try:
        if args.steps < 20 or args.max_k < 0 or args.n_envs < 1:
            raise CtmRlError("--steps must be >= 20, --max-k >= 0 and --n-envs >= 1. Fix: larger values.")
        points = probe_run(args.run_dir, args.steps, args.max_k, args.n_envs, deterministic=not args.stochastic)
    except CtmRlError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("lag  state R²  observation R²    pairs")
    for point in points:
        print(f"{point.lag:>3} {point.r2:>9.3f} {point.observation_r2:>15.3f} {point.pairs:>8,}")
    out = args.out or args.run_dir / "probe.json"
    out.write_text(json.dumps([asdict(point) for point in points], indent=1))
    print(f"Wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
