"""Learning check: best mean evaluation return per (agent, seed) on a fixed budget.

    python benchmarks/learning.py --env CartPole-NoVel --agents ctm lstm --seeds 0 1 2 --timesteps 200000

Runs the training command for each pair (evaluating every ``--eval-freq`` steps on 10 episodes) and prints
the best evaluation, the step it was first reached at, and the wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ctm_rl.train import main as train_main, run_dir_for


def best_evaluation(run_dir: Path) -> tuple[float, int]:
    """The best mean evaluation return of a run and the first step it was reached at."""
    with np.load(run_dir / "eval" / "evaluations.npz") as data:
        means = data["results"].mean(axis=1)
        best = int(np.argmax(means))
        return float(means[best]), int(data["timesteps"][best])


def learn(env: str, agent: str, seed: int, timesteps: int, log_dir: str, eval_freq: int = 10_000,
          extra: list[str] | None = None) -> dict:
    """Train one agent and report its best evaluation."""
    start = time.time()
    code = train_main(["--env", env, "--agent", agent, "--seed", str(seed), "--timesteps", str(timesteps),
                       "--log-dir", log_dir, "--eval-freq", str(eval_freq), "--checkpoint-freq", "0",
                       "--no-progress-bar", *(extra or [])])
    if code != 0:
        raise RuntimeError(f"training {agent} seed {seed} failed")
    best, at = best_evaluation(run_dir_for(log_dir, env, agent, seed))
    return {"agent": agent, "seed": seed, "best_return": best, "reached_at": at, "wall_s": time.time() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-NoVel")
    parser.add_argument("--agents", nargs="+", default=["ctm", "lstm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=200_000)
    parser.add_argument("--hyperparams", nargs="+", default=[])
    args = parser.parse_args()
    extra = ["--hyperparams", *args.hyperparams] if args.hyperparams else []
    with tempfile.TemporaryDirectory() as log_dir:
        print(f"{'agent':6} {'seed':>4} {'best return':>12} {'at step':>9} {'wall s':>7}")
        for agent in args.agents:
            for seed in args.seeds:
                r = learn(args.env, agent, seed, args.timesteps, log_dir, extra=extra)
                print(f"{r['agent']:6} {r['seed']:>4} {r['best_return']:>12.1f} {r['reached_at']:>9} {r['wall_s']:>7.0f}",
                      flush=True)


if __name__ == "__main__":
    main()
