"""A comparison folder's report: tidy CSVs, ``summary.md`` and plots, rebuilt from the runs' ``result.json``
files alone, so it can be redone at any time without training.

Written into the comparison folder:

- ``curves.csv``: one row per (agent, seed, evaluation): step, mean/std return, mean episode length,
  wall time, training time and env steps per second up to that evaluation;
- ``runs.csv``: one row per run: final and best return, steps to threshold and the lowest evaluation after it,
  parameters, steps per second, and the steps a run was continued from after an interruption;
- ``params.csv``: trainable parameters per agent;
- ``summary.md``: the table per agent, the plots and how the numbers were made;
- ``curves_steps.png``, ``curves_wall.png``: IQM return across runs with 95% bootstrap bands, against env
  steps and against wall-clock time; ``aggregates.png``: interval estimates of the final returns and of the
  probability of improvement.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctm_rl import stats
from ctm_rl.runs import (COMMAND_FILE, CONFIG_FILE, RESULT_FILE, ROLLOUT_SETTINGS, CompareConfig, finished_runs,
                         read_comparison_config)
from ctm_rl.errors import ConfigError

BOOTSTRAP_REPS = 2000
PLOTS = {"curves_steps.png": "IQM evaluation return against environment steps",
         "curves_wall.png": "IQM evaluation return against wall-clock time",
         "aggregates.png": "Final return and probability of improvement, 95% intervals"}


TABLES = ("curves.csv", "runs.csv", "params.csv")


@dataclass
class AgentSummary:
    """The aggregate numbers of one agent."""

    agent: str
    runs: int
    parameters: int
    iqm: stats.Estimate
    mean: stats.Estimate
    median: stats.Estimate
    steps_to_threshold: list[float]
    """Per run; NaN where the threshold was never reached."""
    lowest_after_threshold: list[float]
    """Per run, the lowest evaluation from its first one at the threshold on; NaN where it never reached it."""
    improvement: stats.Estimate | None
    """P(this agent > the baseline); ``None`` for the baseline itself."""
    steps_per_second: list[float]
    sooner: stats.Estimate | None = None
    """P(a run of this agent reaches the threshold in fewer steps than a run of the baseline); ``None`` for the
    baseline itself, or without a threshold."""


def load_comparison(out: Path) -> tuple[CompareConfig, dict[str, list[dict[str, Any]]]]:
    """The comparison's config and its finished runs per agent, in the config's order.

    :raises ConfigError: if ``out`` is not a comparison folder or holds no finished run.
    """
    if not (out / CONFIG_FILE).exists():
        raise ConfigError(f"{out} is not a comparison folder (no {CONFIG_FILE}). Fix: pass the --out folder of a "
                          f"python -m ctm_rl.compare run.")
    config = read_comparison_config(out)
    runs: dict[str, list[dict[str, Any]]] = {}
    for agent, _, run_dir in finished_runs(out, config):
        record = json.loads((run_dir / RESULT_FILE).read_text())
        if "n_envs" not in record:
            record.update(_rollout_settings(run_dir))
        runs.setdefault(agent, []).append(record)
    if not runs:
        raise ConfigError(f"{out} holds no finished run yet. Fix: run the comparison (without --report) first.")
    return config, runs


def _rollout_settings(run_dir: Path) -> dict[str, Any]:
    """``n_envs`` and ``max_steps`` of a run whose record predates them, from its saved config (none if it has
    none)."""
    import yaml

    from ctm_rl.train import CONFIG_FILE as RUN_CONFIG_FILE

    path = run_dir / RUN_CONFIG_FILE
    try:
        saved = yaml.safe_load(path.read_text()) if path.exists() else None
    except (OSError, yaml.YAMLError):
        saved = None
    if not isinstance(saved, dict):
        return {}
    return {name: saved[name] for name in ROLLOUT_SETTINGS if name in saved}


def threshold_of(config: CompareConfig) -> float | None:
    """The comparison's threshold, else the environment's registered ``reward_threshold``."""
    if config.threshold is not None:
        return config.threshold
    from ctm_rl.envs import resolve_env

    env = resolve_env(config.env, env_module=config.env_module)
    if env.gym_id is None:
        return None
    import gymnasium as gym

    return gym.spec(env.gym_id).reward_threshold


def final_returns(results: list[dict[str, Any]]) -> np.ndarray:
    """Each run's score: the mean return of its last evaluation, ``(runs,)``."""
    return np.array([run["evaluations"]["return_mean"][-1] for run in results])


def summarise(config: CompareConfig, runs: dict[str, list[dict[str, Any]]]) -> list[AgentSummary]:
    baseline = config.baseline_agent()
    threshold = threshold_of(config)
    baseline_steps = _steps_to_reach(runs[baseline], threshold) if baseline in runs else None
    summaries = []
    for agent, results in runs.items():
        scores = final_returns(results)
        improvement = None
        if agent != baseline and baseline in runs:
            improvement = stats.improvement_estimate(scores, final_returns(runs[baseline]), BOOTSTRAP_REPS)
        to_threshold = _steps_to_reach(results, threshold)
        sooner = None
        if improvement is not None and threshold is not None:
            # Fewer steps is better and never is worst: compare the negated steps, never counting as -inf.
            sooner = stats.improvement_estimate(-stats.never_as_inf(to_threshold), -stats.never_as_inf(baseline_steps),
                                                BOOTSTRAP_REPS)
        summaries.append(AgentSummary(
            agent=agent, runs=len(results), parameters=results[0]["parameters"],
            iqm=stats.interval_estimate(scores, stats.iqm, BOOTSTRAP_REPS),
            mean=stats.interval_estimate(scores, stats.mean, BOOTSTRAP_REPS),
            median=stats.interval_estimate(scores, stats.median, BOOTSTRAP_REPS),
            steps_to_threshold=to_threshold, lowest_after_threshold=_lowest_after_reaching(results, threshold),
            improvement=improvement, steps_per_second=[r["steps_per_second"] for r in results], sooner=sooner))
    return summaries


def _steps_to_reach(results: list[dict[str, Any]], threshold: float | None) -> list[float]:
    """Each run's first evaluation step at or above ``threshold``; NaN where none is (or no threshold is set)."""
    if threshold is None:
        return [math.nan] * len(results)
    return [stats.first_reaching(np.array(r["evaluations"]["step"]), np.array(r["evaluations"]["return_mean"]),
                                 threshold) for r in results]


def _lowest_after_reaching(results: list[dict[str, Any]], threshold: float | None) -> list[float]:
    """Each run's lowest evaluation from its first one at or above ``threshold`` on; NaN where none is."""
    if threshold is None:
        return [math.nan] * len(results)
    return [stats.lowest_after_reaching(np.array(r["evaluations"]["return_mean"]), threshold) for r in results]


def _held_lines(summaries: list[AgentSummary], threshold: float) -> list[str]:
    """How the agents' runs held the threshold after first reaching it: solved policies can fall back, and a final
    evaluation alone does not show whether a run was caught in a dip."""
    parts = []
    for s in summaries:
        lowest = np.array([value for value in s.lowest_after_threshold if not math.isnan(value)])
        if lowest.size:
            parts.append(f"{s.agent} {int((lowest < threshold).sum())} of {lowest.size} (lowest later evaluation: "
                         f"median {np.median(lowest):.3g}, min {lowest.min():.3g})")
    if not parts:
        return []
    return ["", f"Runs that fell below {threshold:g} at a later evaluation after first reaching it, of those that "
                f"reached it: {'; '.join(parts)}."]


# --- CSV ----------------------------------------------------------------------------------------------------------

def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


def curve_rows(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for agent, results in runs.items():
        for run in results:
            e = run["evaluations"]
            for i, step in enumerate(e["step"]):
                rows.append({"agent": agent, "seed": run["seed"], "step": step, "return_mean": e["return_mean"][i],
                             "return_std": e["return_std"][i], "length_mean": e["length_mean"][i],
                             # A record rebuilt from exported tables holds episode counts, not every return.
                             "episodes": len(e["returns"][i]) if "returns" in e else e["episodes"][i],
                             "wall_time_s": round(e["wall_time_s"][i], 3),
                             "train_time_s": round(e["train_time_s"][i], 3),
                             "steps_per_second": round(step / e["train_time_s"][i], 1),
                             # Records written before the time-limit share was recorded have none.
                             "time_limit_fraction": (e.get("time_limit_fraction") or [None] * len(e["step"]))[i]})
    return rows


def run_rows(runs: dict[str, list[dict[str, Any]]], summaries: list[AgentSummary]) -> list[dict[str, Any]]:
    """One row per run; steps to threshold come from the agents' summaries (same agents, same run order)."""
    rows = []
    for (agent, results), summary in zip(runs.items(), summaries):
        for run, reached, lowest in zip(results, summary.steps_to_threshold, summary.lowest_after_threshold):
            e = run["evaluations"]
            rows.append({"agent": agent, "seed": run["seed"], "final_return": e["return_mean"][-1],
                         "best_return": max(e["return_mean"]), "steps_to_threshold": "" if math.isnan(reached) else int(reached),
                         "lowest_after_threshold": "" if math.isnan(lowest) else lowest,
                         "parameters": run["parameters"], "steps_per_second": round(run["steps_per_second"], 1),
                         "wall_time_s": round(run["wall_time_s"], 1), "timesteps": run["timesteps"],
                         "resumed_at": " ".join(str(steps) for steps in run.get("resumed_at", []))})
    return rows


# --- Plots --------------------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _band(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM across runs and its 95% bootstrap interval at every column of ``(runs, points)``."""
    estimates = [stats.interval_estimate(matrix[:, j], stats.iqm, BOOTSTRAP_REPS, seed=j) for j in range(matrix.shape[1])]
    return tuple(np.array(values) for values in zip(*estimates))


def curve_matrix(results: list[dict[str, Any]], x: str, points: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Runs' returns on a common x axis: ``x="step"`` uses the evaluation steps all runs share; ``x="wall"``
    interpolates each run onto a time grid that every run covers.

    :return: the x values ``(points,)`` and returns ``(runs, points)``.
    """
    if x == "step":
        common = sorted(set.intersection(*(set(r["evaluations"]["step"]) for r in results)))
        matrix = [[dict(zip(r["evaluations"]["step"], r["evaluations"]["return_mean"]))[s] for s in common]
                  for r in results]
        return np.array(common, dtype=float), np.array(matrix, dtype=float).reshape(len(results), len(common))
    start = max(r["evaluations"]["wall_time_s"][0] for r in results)
    stop = min(r["evaluations"]["wall_time_s"][-1] for r in results)
    grid = np.linspace(start, stop, points) if stop > start else np.array([start])
    matrix = [np.interp(grid, r["evaluations"]["wall_time_s"], r["evaluations"]["return_mean"]) for r in results]
    return grid, np.array(matrix)


def plot_curves(config: CompareConfig, runs: dict[str, list[dict[str, Any]]], x: str, path: Path) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for agent, results in runs.items():
        xs, matrix = curve_matrix(results, x)
        if x == "wall":
            xs = xs / 60
        value, low, high = _band(matrix)
        line, = axis.plot(xs, value, label=f"{agent} ({len(results)} runs)")
        axis.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    threshold = threshold_of(config)
    if threshold is not None:
        axis.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    axis.set_xlabel("environment steps" if x == "step" else "wall-clock time (minutes)")
    axis.set_ylabel("evaluation return (IQM over runs)")
    axis.set_title(f"{config.env}: IQM and 95% stratified-bootstrap interval")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _interval_bar(axis, row: int, estimate: stats.Estimate, colour: str) -> None:
    """An interval as a bar with its point estimate marked; degenerate intervals stay visible as the mark."""
    axis.barh(row, estimate.high - estimate.low, left=estimate.low, height=0.6, color=colour, alpha=0.6,
              edgecolor=colour)
    axis.plot([estimate.value], [row], marker="|", markersize=16, markeredgewidth=2, color="black")


def _pad_x(axis, estimates: list[stats.Estimate]) -> None:
    # Set by hand: bars pin autoscaling to their edges, which hides marks at the ends.
    low, high = min(e.low for e in estimates), max(e.high for e in estimates)
    pad = 0.08 * (high - low) or 0.08 * max(abs(high), 1.0)
    axis.set_xlim(low - pad, high + pad)


def plot_aggregates(config: CompareConfig, summaries: list[AgentSummary], path: Path) -> None:
    plt = _pyplot()
    panels = [("Median", lambda s: s.median), ("IQM", lambda s: s.iqm), ("Mean", lambda s: s.mean)]
    compared = [s for s in summaries if s.improvement is not None]
    figure, axes = plt.subplots(1, len(panels) + bool(compared), figsize=(3.2 * (len(panels) + bool(compared)),
                                                                           0.5 * len(summaries) + 1.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, (title, pick) in zip(axes, panels):
        for row, summary in enumerate(summaries):
            estimate = pick(summary)
            _interval_bar(axis, row, estimate, colours[row % len(colours)])
        axis.set_yticks(range(len(summaries)), [s.agent for s in summaries] if axis is axes[0] else [])
        _pad_x(axis, [pick(summary) for summary in summaries])
        axis.set_title(f"{title} final return", fontsize=9)
        axis.grid(axis="x", alpha=0.3)
    if compared:
        axis = axes[-1]
        for row, summary in enumerate(compared):
            estimate = summary.improvement
            _interval_bar(axis, row, estimate, "tab:grey")
        axis.axvline(0.5, color="black", linestyle=":", linewidth=1)
        axis.set_xlim(-0.03, 1.03)
        axis.set_yticks(range(len(compared)), [s.agent for s in compared])
        axis.yaxis.tick_right()
        axis.set_title(f"P(agent > {config.baseline_agent()})", fontsize=9)
    figure.suptitle(f"{config.env}: 95% stratified-bootstrap intervals", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- Markdown -----------------------------------------------------------------------------------------------------

def _interval(estimate: stats.Estimate) -> str:
    return f"{estimate.value:.3g} [{estimate.low:.3g}, {estimate.high:.3g}]"


def _steps_to_threshold(steps: list[float]) -> str:
    reached = sum(not math.isnan(s) for s in steps)
    if not reached:
        return f"not reached (0/{len(steps)})"
    # Runs that never reached it count as never: the median (or a bound) exists only if at least half did.
    estimate = stats.time_to_threshold_estimate(np.array(steps), BOOTSTRAP_REPS)

    def shown(value: float, never: str = "never") -> str:
        return f"{value:,.0f}" if math.isfinite(value) else never

    return (f"{shown(estimate.value, 'not reached')} [{shown(estimate.low)}, {shown(estimate.high)}] "
            f"({reached}/{len(steps)})")


def _machines(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    seen = []
    for results in runs.values():
        for run in results:
            m, at_once = run["machine"], run.get("runs_at_once")
            text = (f"{m['processor']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} thread(s) "
                    f"per run, device {m['device']}" + (f" ({m['gpu']})" if "gpu" in m else "")
                    + (f", {at_once} runs at a time" if at_once else "") + (f", {run['code']}" if "code" in run else ""))
            if text not in seen:
                seen.append(text)
    return seen


def _finite_mean(values: list[float]) -> float:
    finite = [value for value in values if np.isfinite(value)]
    return float(np.mean(finite)) if finite else float("nan")


def _dynamics_lines(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The dynamics measures of each agent's runs (one deterministic episode per run), mean over runs."""
    rows = []
    for agent, results in runs.items():
        measured = [r["dynamics"] for r in results if "dynamics" in r]
        if measured:
            spread = _finite_mean([m["frequency_spread"] for m in measured])
            correlation = _finite_mean([m["mean_correlation"] for m in measured])
            rows.append(f"| {agent} | {len(measured)} | {spread:.3g} | {correlation:.3g} |")
    if not rows:
        return []
    return ["Dynamics of the trained agents (one deterministic episode per run, mean over runs; a CTM's "
            "post-activations tick by tick, an LSTM's hidden units step by step; see `ctm_rl.dynamics`):", "",
            "| agent | runs | dominant-frequency spread | mean abs. pairwise correlation |", "|---|---:|---:|---:|",
            *rows, ""]


def _test_ticks_lines(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Return against test-time ticks: IQM over runs of each run's mean return at each tick count."""
    counts = sorted({e["ticks"] for results in runs.values() for r in results for e in r.get("test_ticks", [])})
    if not counts:
        return []
    lines = ["Return against test-time ticks (each run's mean return over its evaluation episodes at that tick "
             "count, IQM over runs [95% CI]; trained at the tick count in its settings):", "",
             "| agent | " + " | ".join(f"{k} ticks" for k in counts) + " |", "|---|" + "---|" * len(counts)]
    for agent, results in runs.items():
        per_ticks = {k: [e["mean"] for r in results for e in r.get("test_ticks", []) if e["ticks"] == k]
                     for k in counts}
        if any(per_ticks.values()):
            cells = [_interval(stats.interval_estimate(np.array(v), reps=BOOTSTRAP_REPS)) if v else ""
                     for v in per_ticks.values()]
            lines.append(f"| {agent} | " + " | ".join(cells) + " |")
    return lines + [""]


def _tuning_lines(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """What the summary says about tuning: which agents' presets a study chose, with what budget."""
    tuned = {agent: results[0].get("tuning") for agent, results in runs.items() if results[0].get("tuning")}
    if not tuned:
        return ["No agent's preset was tuned (`python -m ctm_rl.tune`): both use hand-set presets.", ""]
    lines = ["Tuned with `python -m ctm_rl.tune`: " + "; ".join(
        f"{agent}: study {t['study']} on {t['env']}, {t['trials']} trials of {t['timesteps_per_trial']:,} steps x "
        f"{t['seeds_per_trial']} seed(s) scored by the {t.get('score', 'final')} return, best trial {t['trial']} "
        f"({t['value']:.4g})" for agent, t in tuned.items()) + "."]
    untuned = [agent for agent in runs if agent not in tuned]
    budgets = {(t["trials"], t["timesteps_per_trial"], t["seeds_per_trial"], t.get("score", "final"))
               for t in tuned.values()}
    if untuned or len(budgets) > 1:
        lines.append("**The agents did not get the same tuning budget**" + (f" ({', '.join(untuned)} untuned)"
                                                                           if untuned else "") + ".")
    return lines + [""]


def summary_markdown(config: CompareConfig, runs: dict[str, list[dict[str, Any]]], summaries: list[AgentSummary],
                     images: str = "", heading: str = "#", command: str | None = None) -> str:
    """The summary page of one comparison.

    :param images: prefix of the plots' paths (the page's folder relative to the comparison's).
    :param heading: markdown heading of the title (``##`` to nest it in a larger page).
    :param command: the command that trained the comparison.
    """
    threshold = threshold_of(config)
    baseline = config.baseline_agent()
    lines = [f"{heading} {' vs '.join(runs)} on {config.env}", ""]
    if config.description:
        lines += [config.description, ""]
    missing = [f"{agent} ({len(runs.get(agent, []))}/{len(config.seeds)})" for agent in config.agents
               if len(runs.get(agent, [])) < len(config.seeds)]
    lines += [
        f"{len(config.seeds)} seeds per agent ({', '.join(map(str, config.seeds))}), {config.timesteps:,} env steps "
        f"per run, evaluated every {config.eval_freq:,} steps on {config.eval_episodes} episodes of separate "
        f"evaluation environments with {'deterministic' if config.eval_deterministic else 'sampled'} actions."
        + (f" Shared overrides: `{' '.join(config.hyperparams)}`." if config.hyperparams else ""),
        "",
        "- **Final return**: a run's mean return at its last evaluation. IQM (interquartile mean), mean and median "
        f"are over runs, with 95% stratified-bootstrap percentile intervals ({BOOTSTRAP_REPS} resamples).",
        f"- **P(> {baseline})**: the probability that a run of the agent ends with a higher final return than a run "
        "of the baseline (ties count half), with its bootstrap interval.",
        "- **Steps to threshold**: the first evaluation whose mean return reached "
        + (f"{threshold:g}; the median over runs (runs that never did count as never) with its bootstrap interval, "
           "and how many reached it."
           if threshold is not None else "a threshold; none was set (`--threshold`)."),
        "- **Steps/s**: env steps per second of training, evaluations excluded; mean ± std over runs.",
        "",
    ]
    if missing:
        lines += [f"**Incomplete**: finished runs: {', '.join(missing)}.", ""]
    if config.stop_at_threshold:
        stopped = sum(run.get("stopped_at_threshold", False) for results in runs.values() for run in results)
        total = sum(map(len, runs.values()))
        rest = "" if stopped == total else f"; the other {total - stopped} never reached it and trained their budget"
        lines += [f"**Stopped at the threshold** (`--stop-at-threshold`, a screen): each run ended at its first "
                  f"evaluation at or above {threshold:g} ({stopped} of {total} runs{rest}), so steps to threshold are "
                  f"exact while a final return is that evaluation's and the final-return statistics do not describe "
                  f"the end of the budget.", ""]
    resumed = [f"{agent} seed {run['seed']} at {', '.join(f'{steps:,}' for steps in run['resumed_at'])} steps"
               for agent, results in runs.items() for run in results if run.get("resumed_at")]
    if resumed:
        # A continued run restarts its environments' episodes and random streams, so it is a valid run of its seed
        # but not the one an uninterrupted attempt would have produced.
        lines += [f"**Continued from a save** after an interruption (fresh episodes from there on, so not "
                  f"bit-identical to an uninterrupted run): {'; '.join(resumed)}.", ""]
    lines += [
        f"| agent | parameters | runs | final return IQM [95% CI] | mean [95% CI] | median [95% CI] | "
        f"P(> {baseline}) [95% CI] | steps to {threshold if threshold is not None else 'threshold'} | steps/s |",
        "|---|---:|---:|---|---|---|---|---|---:|",
    ]
    for s in summaries:
        improvement = "baseline" if s.agent == baseline else (_interval(s.improvement) if s.improvement else "")
        sps = np.array(s.steps_per_second)
        lines.append(f"| {s.agent} | {s.parameters:,} | {s.runs} | {_interval(s.iqm)} | {_interval(s.mean)} | "
                     f"{_interval(s.median)} | {improvement} | {_steps_to_threshold(s.steps_to_threshold)} | "
                     f"{sps.mean():,.0f} ± {sps.std():,.0f} |")
    sooner = [f"{s.agent} {_interval(s.sooner)}" for s in summaries if s.sooner is not None]
    if sooner:
        lines += ["", f"P(a run reaches {threshold:g} in fewer steps than a run of {baseline}), runs that never reach "
                  f"it counting as never and ties as half, with its bootstrap interval: {'; '.join(sooner)}."]
    if threshold is not None and not config.stop_at_threshold:
        # A screen's runs end at their first evaluation at the threshold, so they have nothing to fall back from.
        lines += _held_lines(summaries, threshold)
    lines += ["", "Settings per agent (preset with overrides, as trained):", "",
              "| agent | rollout and algorithm | policy |", "|---|---|---|"]
    for agent, results in runs.items():
        # Records written before rewards could be scaled have no "normalize_reward": they trained on the env's own.
        scaled = ["normalize_reward=true"] if results[0].get("normalize_reward") else []
        rollout = [f"{name}={results[0][name]}" for name in ROLLOUT_SETTINGS if results[0].get(name) is not None]
        algo = ", ".join(rollout + scaled + [f"{k}={v}" for k, v in results[0]["algo"].items()])
        # Records written before presets named their policy kind hold the keyword arguments under "policy".
        kwargs = results[0].get("policy_kwargs", results[0]["policy"])
        policy = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        lines.append(f"| {agent} | {algo} | {policy} |")
    lines.append("")
    lines += _dynamics_lines(runs) + _test_ticks_lines(runs)
    lines += _tuning_lines(runs)
    for name, caption in PLOTS.items():
        lines += [f"![{caption}]({images}{name})", ""]
    machines = _machines(runs)
    lines += ["Produced on " + "; ".join(machines) + "." if machines else "", ""]
    if command:
        lines += ["Commands:", "", "```bash", command, "```", ""]
    lines += [f"Per-run curves: [curves.csv]({images}curves.csv); per-run results: [runs.csv]({images}runs.csv); "
              f"parameter counts: [params.csv]({images}params.csv). In the comparison folder, each run's folder "
              "(`runs/<agent>/seed<N>/`) holds its config, TensorBoard logs and model.", ""]
    return "\n".join(lines)


def _command(out: Path) -> str | None:
    """The commands recorded for the comparison, one per line, without their ``--description`` (shown above
    them) and with a plain ``python`` for this machine's interpreter path."""
    path = out / COMMAND_FILE
    if not path.exists():
        return None
    commands = []
    for line in path.read_text().splitlines():
        words = shlex.split(line)
        if "-m" not in words:
            continue
        words = ["python", *words[words.index("-m"):]]
        if "--description" in words:
            at = words.index("--description")
            del words[at:at + 2]
        command = shlex.join(words)
        if command not in commands:
            commands.append(command)
    return "\n".join(commands) or None


def _build_report(out: Path) -> tuple[CompareConfig, dict[str, list[dict[str, Any]]], list[AgentSummary]]:
    """Write the CSVs, plots and ``summary.md`` of the comparison in ``out``; return what they were made from."""
    config, runs = load_comparison(out)
    summaries = summarise(config, runs)
    curves, runs_table, params = TABLES
    _write_csv(out / curves, curve_rows(runs))
    _write_csv(out / runs_table, run_rows(runs, summaries))
    _write_csv(out / params, [{"agent": s.agent, "parameters": s.parameters} for s in summaries])
    plot_curves(config, runs, "step", out / "curves_steps.png")
    plot_curves(config, runs, "wall", out / "curves_wall.png")
    plot_aggregates(config, summaries, out / "aggregates.png")
    (out / "summary.md").write_text(summary_markdown(config, runs, summaries, command=_command(out)))
    return config, runs, summaries


def write_report(out: Path) -> Path:
    """Write the CSVs, plots and ``summary.md`` of the comparison in ``out``; return the summary's path."""
    _build_report(out)
    return out / "summary.md"


def _copy_comparison(out: Path, config: CompareConfig, dest: Path) -> None:
    """The comparison's plots and tables, and what rebuilds them (its settings, commands and each finished run's
    record and config, not its models or logs), into ``dest``: the numbers travel with the page, and
    ``--report dest`` rebuilds its section."""
    from ctm_rl.train import CONFIG_FILE as RUN_CONFIG_FILE

    for name in [*PLOTS, *TABLES, CONFIG_FILE, COMMAND_FILE]:
        if (out / name).exists():
            shutil.copyfile(out / name, dest / name)
    for _, _, run_dir in finished_runs(out, config):
        copy = dest / run_dir.relative_to(out)
        copy.mkdir(parents=True, exist_ok=True)
        for name in (RESULT_FILE, RUN_CONFIG_FILE):
            if (run_dir / name).exists():
                shutil.copyfile(run_dir / name, copy / name)


def write_page(folders: list[Path], page: Path) -> Path:
    """One markdown page covering several comparisons (rebuilt first), their plots, CSVs and run records copied
    beside it into ``<page stem>/<folder name>/``, from which the page can be rebuilt without the originals."""
    sections = []
    for out in folders:
        config, runs, summaries = _build_report(out)
        images = page.parent / page.stem / out.name
        images.mkdir(parents=True, exist_ok=True)
        if images.resolve() != out.resolve():  # a page rebuilt from its own copies has them already
            _copy_comparison(out, config, images)
        sections.append(summary_markdown(config, runs, summaries, images=f"{page.stem}/{out.name}/", heading="##",
                                         command=_command(out)))
    header = ["# Results: CTM vs LSTM", "",
              f"Generated on {datetime.date.today().isoformat()} by "
              f"`python -m ctm_rl.compare --report {' '.join(str(f) for f in folders)} --page {page}` "
              "from the comparison folders. Every number below comes from those runs. Each section's folder under "
              f"{page.stem}/ keeps its comparison's settings, commands and run records (no models), so that command "
              "rebuilds this page.", ""]
    page.write_text("\n".join(header + sections))
    return page
