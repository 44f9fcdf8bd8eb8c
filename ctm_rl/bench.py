"""Throughput benchmark: environment stepping alone, the parameter-matched LSTM agent and the CTM agent.

    python -m ctm_rl.bench                 # every config, prints a table and writes bench.json
    python -m ctm_rl.bench --quick         # fewer envs, ticks and iterations: under 2 minutes on a 2-core CPU
    python -m ctm_rl.bench --configs cartpole --ticks 1 --device cuda
    python -m ctm_rl.bench --configs fourrooms --device cuda --compile   # the CTM's rollout step compiled
    python -m ctm_rl.bench --configs fourrooms --device cuda --profile prof   # and a profiled iteration of each agent

Everything runs in one process. For each config and tick count, env stepping, the LSTM and the CTM each do
untimed warm-up iterations on their own, then timed iterations in rounds, one of each per round, so that a
machine whose speed drifts slows all three during the same minutes. An agent iteration is one
``RecurrentPPO`` rollout (``collect_rollouts``) and one update (``train``), exactly as ``learn`` runs them;
an env iteration steps the env as many times as a rollout does. Rates are env steps per second: rollout =
steps / rollout time, update = steps / update time, total = steps / (rollout + update), summed over the timed
iterations; ``best`` is the fastest single iteration's total rate. With ``--compile`` the CTM's rollout step
runs through ``torch.compile`` (``compile_rollout=True``: a CUDA graph on GPU); compilation happens in the
warm-up iteration, so give it one. With ``--profile DIR`` each agent runs one more iteration, untimed, under the
torch profiler (CUDA kernels too on GPU), which writes its trace (Chrome trace format) and a table of the
costliest operations to ``DIR``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.vec_env import VecEnv

from ctm_rl.allocator import keep_freed_memory, release_freed_memory
from ctm_rl.config import POLICY_KINDS, parse_key_values, resolve_config
from ctm_rl.envs import make_env
from ctm_rl.errors import CtmRlError
from ctm_rl.machine import machine_description
from ctm_rl.sb3.lstm import count_parameters
from ctm_rl.sb3.ppo import CtmPPO


@dataclass
class BenchConfig:
    """One benchmark setting: an environment and PPO's batch shape (the CTM reference's), measured on the agents
    that the presets train for that environment."""

    env: str
    """Environment name, as the training command takes it; the CTM is the ``ctm`` preset's for it, the LSTM the
    ``lstm`` preset's, matched to that CTM."""
    n_envs: int
    """Parallel environments."""
    n_steps: int
    """Rollout length per environment."""
    n_epochs: int
    """PPO epochs per update."""
    n_minibatches: int
    """Minibatches per epoch (``batch_size = n_envs * n_steps / n_minibatches``)."""
    ticks: tuple[int, ...]
    """Tick counts to measure."""
    hyperparams: dict[str, Any] = field(default_factory=dict)
    """Overrides of the presets' policy keys (``--hyperparams`` adds to them); keys the LSTM takes too
    (``d_input``) apply to both agents."""


CONFIGS: dict[str, BenchConfig] = {
    "cartpole": BenchConfig(env="CartPole-NoVel", n_envs=256, n_steps=100, n_epochs=4, n_minibatches=4, ticks=(1, 5)),
    "fourrooms": BenchConfig(env="MiniGrid-FourRooms", n_envs=256, n_steps=50, n_epochs=1, n_minibatches=4,
                             ticks=(1, 2)),
}
QUICK_ENVS = 32
"""Environments per config in ``--quick`` mode, which also measures only each config's first tick count (unless
``--ticks`` says otherwise), with no warm-up and one timed iteration."""


# --- Measurements ---------------------------------------------------------------------------------------


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (resident set size on Linux; allocated CUDA memory on GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:  # Linux lets a process reset its own high-water mark.
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since :func:`reset_peak_memory`, in MiB (process lifetime peak where it cannot be reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def buffer_bytes_per_step(model: RecurrentPPO) -> dict[str, float]:
    """Rollout-buffer bytes per env step: in total and for the recurrent states alone."""
    buffer = model.rollout_buffer
    arrays = {id(v): (k, v) for k, v in vars(buffer).items() if isinstance(v, np.ndarray)}  # aliases count once
    total = sum(v.nbytes for _, v in arrays.values())
    states = sum(v.nbytes for k, v in arrays.values() if k.startswith(("hidden_states", "cell_states", "traces")))
    steps = buffer.buffer_size * buffer.n_envs
    return {"buffer_bytes_per_step": total / steps, "state_bytes_per_step": states / steps}


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class AgentTimer:
    """Runs an agent's rollout/update iterations one at a time, as ``learn`` runs them, so that the iterations
    of several agents can be interleaved; keeps each timed iteration's times, and the peak memory of its first
    iteration (the warm-up, if any).

    Measuring the peak needs the heap that other agents freed handed back to the operating system first;
    doing that before every iteration would make each one fault its working memory back in, which training
    never does, so only the first iteration pays for it.

    :param model: the agent, untrained.
    :param iterations: iterations it will run in all, warm-up included (for ``learn``'s progress schedule).
    """

    def __init__(self, model: RecurrentPPO, iterations: int) -> None:
        self.model = model
        self.steps_per_iteration = model.n_steps * model.n_envs
        self.total_timesteps, self.callback = model._setup_learn(self.steps_per_iteration * iterations,
                                                                 callback=None, progress_bar=False)
        self.callback.on_training_start({}, {})
        self.times: list[tuple[float, float]] = []
        self.peak_memory_mb: float | None = None

    def iterate(self, timed: bool = True) -> None:
        """One rollout and one update; ``timed=False`` for warm-up."""
        model, device = self.model, self.model.device
        measure_memory = self.peak_memory_mb is None
        if measure_memory:
            release_freed_memory()  # the peak-memory window must not start from memory another agent freed
            reset_peak_memory(device)
        _synchronise(device)
        start = time.perf_counter()
        model.collect_rollouts(model.env, self.callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
        _synchronise(device)
        collected = time.perf_counter()
        model._update_current_progress_remaining(model.num_timesteps, self.total_timesteps)
        model.train()
        _synchronise(device)
        if timed:
            self.times.append((collected - start, time.perf_counter() - collected))
        if measure_memory:
            self.peak_memory_mb = peak_memory_mb(device)

    def last_seconds(self) -> float:
        """Rollout plus update time of the latest timed iteration."""
        return sum(self.times[-1])

    def result(self) -> dict[str, Any]:
        """Rates over all timed iterations, the best iteration's total rate, and every iteration's times."""
        self.callback.on_training_end()
        rollout_s, update_s = (sum(part) for part in zip(*self.times))
        steps = self.steps_per_iteration * len(self.times)
        return {
            "rollout_sps": steps / rollout_s,
            "update_sps": steps / update_s,
            "total_sps": steps / (rollout_s + update_s),
            "best_total_sps": self.steps_per_iteration / min(r + u for r, u in self.times),
            "iteration_seconds": [{"rollout": r, "update": u} for r, u in self.times],
            "peak_memory_mb": self.peak_memory_mb,
            **buffer_bytes_per_step(self.model),
        }


class EnvTimer:
    """Env stepping alone under uniformly random actions, in chunks as long as one agent rollout.

    :param venv: a vectorised environment of its own (not an agent's).
    :param steps_per_env: vectorised steps per chunk.
    :param seed: seed of the random actions.
    """

    def __init__(self, venv: VecEnv, steps_per_env: int, seed: int = 0) -> None:
        self.venv, self.steps_per_env = venv, steps_per_env
        self.rng = np.random.default_rng(seed)
        self.times: list[float] = []
        venv.reset()

    def iterate(self, timed: bool = True) -> None:
        """One chunk of steps; ``timed=False`` for warm-up."""
        space = self.venv.action_space
        if isinstance(space, spaces.Discrete):
            actions = self.rng.integers(space.n, size=(self.steps_per_env, self.venv.num_envs))
        else:
            actions = np.stack([[space.sample() for _ in range(self.venv.num_envs)]
                                for _ in range(self.steps_per_env)])
        start = time.perf_counter()
        for step_actions in actions:
            self.venv.step(step_actions)
        if timed:
            self.times.append(time.perf_counter() - start)

    def last_seconds(self) -> float:
        """Time of the latest timed chunk."""
        return self.times[-1]

    def result(self) -> dict[str, Any]:
        steps = self.steps_per_env * self.venv.num_envs
        return {"total_sps": steps * len(self.times) / sum(self.times), "best_total_sps": steps / min(self.times)}


Timer = AgentTimer | EnvTimer


def measure_interleaved(timers: dict[str, Timer], warmup: int, iterations: int,
                        progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Warm each timer up on its own, then run the timed iterations in rounds, one iteration of every timer per
    round: a machine whose speed drifts during the run then slows all of them during the same minutes.

    :param progress: called with a line after each round (a round can take minutes).
    """
    for timer in timers.values():
        for _ in range(warmup):
            timer.iterate(timed=False)
    for round_ in range(iterations):
        for timer in timers.values():
            timer.iterate()
        if progress is not None:
            seconds = ", ".join(f"{name} {timer.last_seconds():.1f} s" for name, timer in timers.items())
            progress(f"  timed round {round_ + 1}/{iterations}: {seconds}")
    return {name: timer.result() for name, timer in timers.items()}


def profile_iteration(timer: AgentTimer, path: Path) -> None:
    """One more iteration of ``timer``'s agent, untimed, under the torch profiler: its trace to ``path`` (Chrome
    trace format: Perfetto or ``chrome://tracing`` open it) and its costliest operations to ``path`` with the
    suffix ``.txt``."""
    on_cuda = timer.model.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        timer.iterate(timed=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    profiler.export_chrome_trace(str(path))
    table = profiler.key_averages().table(sort_by="self_cuda_time_total" if on_cuda else "self_cpu_time_total",
                                          row_limit=40)
    path.with_suffix(".txt").write_text(table)


# --- One config -----------------------------------------------------------------------------------------


def _agent(policy_class: type, policy_kwargs: dict[str, Any], venv: VecEnv, config: BenchConfig, n_envs: int,
           device: str, seed: int) -> RecurrentPPO:
    batch_size = n_envs * config.n_steps // config.n_minibatches
    return CtmPPO(policy_class, venv, n_steps=config.n_steps, batch_size=batch_size, n_epochs=config.n_epochs,
                  policy_kwargs=policy_kwargs, device=device, seed=seed, verbose=0)


def run_config(name: str, config: BenchConfig, ticks: list[int], n_envs: int, warmup: int, iterations: int,
               device: str, seed: int = 0, log=print, compile_rollout: bool = False,
               profile_dir: Path | None = None, hyperparams: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per tick count: env stepping, the matched LSTM and the CTM, timed in interleaved rounds
    (:func:`measure_interleaved`), each on its own copy of the vectorised env, all seeded alike.

    :param hyperparams: policy overrides on top of the config's own.
    :param compile_rollout: the CTM's ``compile_rollout`` (the LSTM is matched to the same CTM either way).
    :param profile_dir: where :func:`profile_iteration` writes each agent's profile after the timed rounds.
    """
    rows = []
    hyperparams = hyperparams or {}
    base = {"config": name, "env": config.env, "n_envs": n_envs, "n_steps": config.n_steps}
    for tick_count in ticks:
        ctm, env = resolve_config(config.env, "ctm", {**config.hyperparams, **hyperparams}, ticks=tick_count)
        shared = {key: value for key, value in {**config.hyperparams, **hyperparams}.items()
                  if key in POLICY_KINDS["lstm"].keys}
        lstm, _ = resolve_config(config.env, "lstm", shared, match_to=ctm.policy_kwargs)
        venvs = [make_env(env, n_envs=n_envs, seed=seed, max_steps=ctm.max_steps) for _ in range(3)]
        try:
            spaces_ = (venvs[0].observation_space, venvs[0].action_space)
            hidden = lstm.policy_kwargs["lstm_hidden_size"]
            policy_class, ctm_kwargs = ctm.policy_and_kwargs()
            agents = {"lstm": lstm.policy_and_kwargs(),
                      "ctm": (policy_class, {**ctm_kwargs, "compile_rollout": compile_rollout})}
            timers: dict[str, Timer] = {"env": EnvTimer(venvs[0], config.n_steps, seed)}
            for (agent, (policy_class, kwargs)), venv in zip(agents.items(), venvs[1:]):
                model = _agent(policy_class, kwargs, venv, config, n_envs, device, seed)
                timers[agent] = AgentTimer(model, warmup + iterations + (profile_dir is not None))
            results = measure_interleaved(timers, warmup, iterations,
                                          progress=lambda line: print(line, file=sys.stderr, flush=True))
            for agent in agents if profile_dir is not None else ():
                profile_iteration(timers[agent], profile_dir / f"{name}-ticks{tick_count}-{agent}.json")
            del timers, model
            env_row = {**base, "agent": "env", "ticks": tick_count, "params": 0, **results["env"]}
            rows.append(env_row)
            log(format_row(env_row))
            for agent, (policy_class, kwargs) in agents.items():
                row = {**base, "agent": agent, "ticks": tick_count, "lstm_hidden_size": hidden,
                       "params": count_parameters(policy_class, *spaces_, **kwargs), **results[agent]}
                row["vs_env"] = row["total_sps"] / env_row["total_sps"]
                if agent == "ctm":
                    row["vs_lstm"] = row["total_sps"] / rows[-1]["total_sps"]
                    row["best_vs_lstm"] = row["best_total_sps"] / rows[-1]["best_total_sps"]
                rows.append(row)
                log(format_row(row))
        finally:
            for venv in venvs:
                venv.close()
    return rows


# --- Reporting ------------------------------------------------------------------------------------------

_COLUMNS = (
    ("config", "{:10}", "config"), ("agent", "{:5}", "agent"), ("ticks", "{:>5}", "ticks"), ("params", "{:>10,}", "params"),
    ("rollout_sps", "{:>9,.0f}", "rollout/s"), ("update_sps", "{:>9,.0f}", "update/s"), ("total_sps", "{:>9,.0f}", "total/s"),
    ("best_total_sps", "{:>9,.0f}", "best/s"), ("vs_lstm", "{:>7.2f}", "vs LSTM"), ("best_vs_lstm", "{:>7.2f}", "best vs"),
    ("vs_env", "{:>6.3f}", "vs env"), ("peak_memory_mb", "{:>8,.0f}", "peak MiB"),
    ("buffer_bytes_per_step", "{:>9,.0f}", "buf B/step"),
)


_TEXT_WIDTHS = {"config": 10, "agent": 5}


def _width(fmt: str, key: str) -> int:
    return _TEXT_WIDTHS.get(key) or len(fmt.format(0))


def format_header() -> str:
    return " ".join(title.ljust(_width(fmt, key)) if key in _TEXT_WIDTHS else title.rjust(_width(fmt, key))
                    for key, fmt, title in _COLUMNS)


def format_row(row: dict[str, Any]) -> str:
    cells = []
    for key, fmt, _ in _COLUMNS:
        value = row.get(key)
        cells.append(fmt.format(value) if value is not None else " " * _width(fmt, key))
    return " ".join(cells)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ctm_rl.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS),
                        help="configs to measure (default: all)")
    parser.add_argument("--ticks", nargs="+", type=int, default=None,
                        help="tick counts to measure (default: each config's own)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_ENVS} envs per config, its first tick count only (unless --ticks), no warm-up "
                             "and one timed iteration")
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations per agent (default: 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per agent first (default: 1)")
    parser.add_argument("--n-envs", type=int, default=None, help="override every config's number of envs")
    parser.add_argument("--hyperparams", nargs="+", default=[], metavar="KEY=VALUE",
                        help="policy overrides of the presets for every config (d_model=512 d_input=128)")
    parser.add_argument("--compile", action="store_true",
                        help="run the CTM's rollout step through torch.compile (compile_rollout=True)")
    parser.add_argument("--profile", metavar="DIR", type=Path, default=None,
                        help="after the timed rounds, profile one more iteration of each agent: a trace (large) "
                             "and a table of the costliest operations per agent in DIR")
    parser.add_argument("--out", default="bench.json", help="JSON file for the results (default: bench.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kept_freed_memory = keep_freed_memory()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device. Fix: use --device cpu.", file=sys.stderr)
        return 2
    try:
        hyperparams = parse_key_values(args.hyperparams, "--hyperparams")
    except CtmRlError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    warmup, iterations = (0, 1) if args.quick else (args.warmup, args.iterations)
    if args.compile and warmup == 0:
        print("warning: --compile without a warm-up iteration times the compilation as part of the CTM's first "
              "rollout. Fix: --warmup 1 (and no --quick).", file=sys.stderr)
    results: dict[str, Any] = {"machine": {**machine_description(device), "keep_freed_memory": kept_freed_memory},
                               "quick": args.quick, "hyperparams": hyperparams, "warmup": warmup, "compile_rollout": args.compile,
                               "iterations": iterations, "configs": {}, "rows": []}
    print(format_header())
    for name in args.configs:
        config = CONFIGS[name]
        ticks = list(args.ticks or (config.ticks[:1] if args.quick else config.ticks))
        n_envs = args.n_envs or (QUICK_ENVS if args.quick else config.n_envs)
        results["configs"][name] = asdict(config)
        results["rows"] += run_config(name, config, ticks, n_envs, warmup, iterations, device,
                                      compile_rollout=args.compile, profile_dir=args.profile, hyperparams=hyperparams)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
