"""Figures of what an agent does inside, drawn from :class:`~ctm_rl.dynamics.EpisodeRecord`s: the episode
animation (GIF, MP4), the neural-dynamics figure, the tick-probe figure, and a callback that logs the
dynamics figure to TensorBoard during training."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from ctm_rl.dynamics import EpisodeRecord, dynamics_measures, record_episode
from ctm_rl.errors import ConfigError

TRACED_UNITS = 6
"""Neurons (or LSTM units) whose traces scroll in the animation."""
WINDOW_TICKS = 40
"""Time points the scrolling trace panel shows."""
GRID_UNITS = 24
"""Neurons in the dynamics figure's grid."""


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _canvas_image(figure) -> np.ndarray:
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def _unit_labels(kind: str) -> tuple[str, str, str]:
    """Names of the solid and dashed traces and of the output, per agent kind."""
    if kind == "ctm":
        return "post-activation", "pre-activation", "synchronisation"
    return "hidden", "cell", "hidden state"


def _traced_units(episode: EpisodeRecord, count: int) -> np.ndarray:
    """The ``count`` units whose traces vary most over the episode."""
    spread = episode.unit_trace().std(axis=0)
    return np.sort(np.argsort(spread)[::-1][:count])


def _colour_range(values: np.ndarray) -> tuple[float, float]:
    """A colour scale symmetric about 0 that a few large entries do not wash out."""
    bound = float(np.percentile(np.abs(values), 98)) or 1.0
    return -bound, bound


def _padded_range(values: np.ndarray) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    pad = 0.05 * (high - low) or 1.0
    return low - pad, high + pad


def _entropy(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=-1)


def draw_frames(episode: EpisodeRecord, size: tuple[float, float] = (9.0, 4.5), dpi: int = 64) -> list[np.ndarray]:
    """The animation's frames, one per env step (see the module docstring for the panels). The artists are made
    once and updated per frame."""
    plt = _matplotlib()
    from matplotlib.collections import LineCollection

    figure = plt.figure(figsize=size, dpi=dpi)
    grid = figure.add_gridspec(2, 3, width_ratios=[1.1, 1, 1], height_ratios=[1, 1], wspace=0.35, hspace=0.5)
    env_axes, action_axes = figure.add_subplot(grid[:, 0]), figure.add_subplot(grid[0, 1])
    output_axes, trace_axes = figure.add_subplot(grid[0, 2]), figure.add_subplot(grid[1, 1:])
    inner_axes = trace_axes.twinx()  # pre-activations (cell units) live on another scale than post-activations
    solid, dashed, output_name = _unit_labels(episode.kind)
    units = _traced_units(episode, TRACED_UNITS)
    trace, inner = episode.unit_trace()[:, units], episode.unit_trace(inner=True)[:, units]
    ticks, returns = episode.ticks, np.cumsum([step.reward for step in episode.steps])
    first = episode.steps[0]

    # --- The environment, or its observation where it has no renderer ---
    if episode.frames:
        env_image = env_axes.imshow(episode.frames[0])
        env_axes.set_axis_off()
    else:
        observations = np.stack(episode.observations)
        env_bars = env_axes.bar(np.arange(observations.shape[1]), observations[0], color="grey")
        env_axes.set_ylim(*_padded_range(observations))
        env_axes.set_xlabel("observation", fontsize=8)
    env_title = env_axes.set_title("", fontsize=9)
    # --- The decision: action probabilities (or the action itself), value, reward ---
    discrete = first.probabilities is not None
    heights = first.probabilities if discrete else np.asarray(first.action, dtype=float).reshape(-1)
    action_bars = action_axes.bar(np.arange(len(heights)), heights, color="tab:blue")
    if discrete:
        action_axes.set_ylim(0, 1)
    else:
        actions = np.stack([np.asarray(step.action, dtype=float).reshape(-1) for step in episode.steps])
        action_axes.set_ylim(*_padded_range(actions))
    action_axes.set_xticks(np.arange(len(heights)))
    action_axes.tick_params(labelsize=7)
    action_title = action_axes.set_title("", fontsize=9)
    action_label = action_axes.set_xlabel("", fontsize=8)
    # --- What the heads read, as a heat strip ---
    low, high = _colour_range(np.stack([step.output for step in episode.steps]))
    output_image = output_axes.imshow(first.output[None], aspect="auto", cmap="coolwarm", vmin=low, vmax=high)
    output_axes.set_yticks([])
    output_axes.set_title(output_name, fontsize=9)
    output_axes.tick_params(labelsize=7)
    # --- A few units over the last WINDOW_TICKS time points, env steps marked ---
    colours = plt.get_cmap("tab10")(np.arange(len(units)) % 10)
    solid_lines = [trace_axes.plot([], [], color=c, linewidth=1.2)[0] for c in colours]
    dashed_lines = [inner_axes.plot([], [], color=c, linewidth=0.8, linestyle="--", alpha=0.6)[0] for c in colours]
    boundaries = trace_axes.add_collection(LineCollection([], colors="grey", linewidths=0.5, alpha=0.5))
    trace_range, inner_range = _padded_range(trace), _padded_range(inner)
    trace_axes.set_ylim(*trace_range)
    inner_axes.set_ylim(*inner_range)
    inner_axes.tick_params(labelsize=6, colors="grey")
    trace_axes.tick_params(labelsize=7)
    trace_axes.set_xlabel("internal tick (grey lines: env steps)" if episode.kind == "ctm" else "env step", fontsize=8)
    trace_axes.set_title(f"{len(units)} units: {solid} (solid, left), {dashed} (dashed, right)", fontsize=9)

    frames = []
    for t, step in enumerate(episode.steps):
        if episode.frames:
            env_image.set_data(episode.frames[t])
        else:
            for bar, value in zip(env_bars, episode.observations[t]):
                bar.set_height(value)
        env_title.set_text(f"step {t + 1}   return {returns[t]:.3g}")
        if discrete:
            chosen = int(np.asarray(step.action).reshape(-1)[0])
            for action, (bar, value) in enumerate(zip(action_bars, step.probabilities)):
                bar.set_height(value)
                bar.set_color("tab:orange" if action == chosen else "tab:blue")
            action_title.set_text(f"action {chosen} (orange)")
        else:
            for bar, value in zip(action_bars, np.asarray(step.action, dtype=float).reshape(-1)):
                bar.set_height(value)
            action_title.set_text("action")
        action_label.set_text(f"value {step.value:.3g}   reward {step.reward:.3g}")
        output_image.set_data(step.output[None])
        end = (t + 1) * ticks
        start = max(0, end - WINDOW_TICKS)
        time = np.arange(start, end)
        for i, (solid_line, dashed_line) in enumerate(zip(solid_lines, dashed_lines)):
            solid_line.set_data(time, trace[start:end, i])
            dashed_line.set_data(time, inner[start:end, i])
        if ticks > 1:
            boundaries.set_segments([[(b - 0.5, trace_range[0]), (b - 0.5, trace_range[1])]
                                     for b in range((start + ticks - 1) // ticks * ticks, end, ticks)])
        trace_axes.set_xlim(start - 0.5, max(end, WINDOW_TICKS) - 0.5)
        frames.append(_canvas_image(figure))
    plt.close(figure)
    return frames


def write_gif(frames: list[np.ndarray], path: Path, fps: int = 8) -> None:
    """An animated GIF, one frame per env step, looping."""
    from PIL import Image

    images = [Image.fromarray(frame).quantize(colors=64, method=Image.Quantize.MEDIANCUT) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0, optimize=True)


def write_mp4(frames: list[np.ndarray], path: Path, fps: int = 8) -> bool:
    """An MP4 when ``imageio-ffmpeg`` is installed (``ctm-rl[video]``); False without it."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return False
    height, width = frames[0].shape[:2]
    even = [frame[: height // 2 * 2, : width // 2 * 2] for frame in frames]  # H.264 needs even sides
    writer = imageio_ffmpeg.write_frames(str(path), (even[0].shape[1], even[0].shape[0]), fps=fps, quality=6,
                                         macro_block_size=1)
    writer.send(None)
    for frame in even:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return True


def dynamics_figure(episode: EpisodeRecord, path: Path | None = None, units: int = GRID_UNITS
                    ) -> list[str] | np.ndarray:
    """Many units' traces over the whole episode (a grid, one panel per unit, env steps marked) and the output
    over time, saved to ``path``. :return: the panels' titles, grid panels first; without ``path``, the figure
    as an ``(H, W, 3)`` image instead."""
    plt = _matplotlib()
    solid, dashed, output_name = _unit_labels(episode.kind)
    chosen = _traced_units(episode, units)
    trace, inner = episode.unit_trace(), episode.unit_trace(inner=True)
    columns = 6
    rows = -(-len(chosen) // columns)
    figure = plt.figure(figsize=(12, 1.3 * rows + 2.6), dpi=80)
    grid = figure.add_gridspec(rows + 1, columns, height_ratios=[1] * rows + [1.6], hspace=0.6)
    titles = []
    time = np.arange(len(trace))
    for i, unit in enumerate(chosen):
        axes = figure.add_subplot(grid[i // columns, i % columns])
        axes.plot(time, trace[:, unit], linewidth=0.9, color="tab:blue")
        axes.plot(time, inner[:, unit], linewidth=0.6, color="tab:grey", linestyle="--")
        if episode.ticks > 1 and len(episode.steps) <= 60:
            for boundary in range(episode.ticks, len(trace), episode.ticks):
                axes.axvline(boundary - 0.5, color="grey", linewidth=0.4, alpha=0.4)
        axes.set_title(f"unit {unit}", fontsize=7)
        axes.tick_params(labelsize=6)
        titles.append(f"unit {unit}")
    axes = figure.add_subplot(grid[rows, :])
    outputs = np.stack([step.output for step in episode.steps]).T  # (P, steps)
    low, high = _colour_range(outputs)
    image = axes.imshow(outputs, aspect="auto", cmap="coolwarm", interpolation="nearest", vmin=low, vmax=high)
    figure.colorbar(image, ax=axes, fraction=0.02)
    axes.set_xlabel("env step")
    axes.set_ylabel("pair" if episode.kind == "ctm" else "unit")
    title = f"{output_name} over the episode"
    axes.set_title(title, fontsize=9)
    titles.append(title)
    time_axis = "internal tick" if episode.kind == "ctm" else "env step"
    figure.suptitle(f"{episode.kind.upper()}: {solid} (solid) and {dashed} (dashed) per {time_axis}, return "
                    f"{episode.total_return:.3g}", fontsize=10)
    if path is None:
        image = _canvas_image(figure)
        plt.close(figure)
        return image
    figure.savefig(path)
    plt.close(figure)
    return titles


def tick_probe_figure(episode: EpisodeRecord, path: Path, max_steps: int = 12) -> None:
    """The action distribution and its entropy after every internal tick, for the episode's first steps."""
    if episode.ticks < 2 or episode.steps[0].tick_probabilities is None:
        raise ConfigError("Tick probes need a CTM with more than one tick and Discrete actions. Fix: --ticks 2 or more.")
    plt = _matplotlib()
    shown = episode.steps[:max_steps]
    probabilities = np.concatenate([step.tick_probabilities for step in shown])  # (steps * K, A)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 4.5), dpi=80, sharex=True)
    top.imshow(probabilities.T, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    top.set_ylabel("action")
    top.set_yticks(np.arange(probabilities.shape[1]))
    top.set_title("action probabilities after each internal tick (tick probes); white lines: env steps", fontsize=9)
    bottom.plot(_entropy(probabilities), color="tab:purple")
    bottom.set_ylabel("entropy")
    bottom.set_xlabel("internal tick")
    for axes in (top, bottom):
        for boundary in range(episode.ticks, len(probabilities), episode.ticks):
            axes.axvline(boundary - 0.5, color="white" if axes is top else "grey", linewidth=1)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


class DynamicsLogger(BaseCallback):
    """Run after each evaluation (as ``callback_after_eval``): records one deterministic episode on a fresh
    environment and logs its neural-dynamics figure as the TensorBoard image ``dynamics/figure`` and its
    dynamics measures as ``dynamics/frequency_spread`` and ``dynamics/mean_correlation``.

    :param make_env: builds a one-env VecEnv like the run's own (closed after each recording).
    :param max_steps: most steps recorded per episode.
    """

    def __init__(self, make_env: Callable[[], VecEnv], max_steps: int = 1_000) -> None:
        super().__init__()
        self.make_env, self.max_steps = make_env, max_steps

    def _on_step(self) -> bool:
        from stable_baselines3.common.logger import Image

        venv = self.make_env()
        try:
            episode = record_episode(self.model, venv, render=False, max_steps=self.max_steps)
        finally:
            venv.close()
        measures = dynamics_measures(episode.unit_trace())
        self.logger.record("dynamics/frequency_spread", measures.frequency_spread)
        self.logger.record("dynamics/mean_correlation", measures.mean_correlation)
        self.logger.record("dynamics/figure", Image(dynamics_figure(episode), "HWC"),
                           exclude=("stdout", "log", "json", "csv"))
        return True
