"""Observation encoders (SB3 features extractors), chosen from the observation space.

- flat vectors (Box, Discrete, MultiDiscrete, MultiBinary): two ``Linear -> GLU -> LayerNorm`` blocks;
- MiniGrid's symbolic ``(view, view, 3)`` grid of (object, colour, state) indices: an embedding per index
  plus a learned embedding per cell, projected per cell and flattened (``cells * d_input`` features);
- RGB images: SB3's ``NatureCNN``;
- Dict: one of the above per key, concatenated.
"""

from __future__ import annotations

from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_flattened_obs_dim, is_image_space, preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN
from torch import nn

from ctm_rl.envs.wrappers import MINIGRID_COLOURS, MINIGRID_OBJECTS, MINIGRID_STATES
from ctm_rl.errors import UnsupportedSpaceError

# NatureCNN's kernels need at least this many pixels per side.
_MIN_CNN_SIDE = 36
_FLAT_SPACES = (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def _projection(in_features: int, d_input: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, 2 * d_input), nn.GLU(dim=-1), nn.LayerNorm(d_input),
        nn.Linear(d_input, 2 * d_input), nn.GLU(dim=-1), nn.LayerNorm(d_input),
    )


def is_symbolic_grid(space: gym.Space) -> bool:
    """True for MiniGrid-style symbolic grids: an integer ``(H, W, 3)`` Box of (object, colour, state) indices,
    with bounds inside MiniGrid's index ranges or too small to be an RGB image a CNN could read."""
    if not (isinstance(space, spaces.Box) and len(space.shape) == 3 and space.shape[-1] == 3):
        return False
    if not np.issubdtype(space.dtype, np.integer):
        return False
    within_index_ranges = bool(np.all(space.high.reshape(-1, 3) < [MINIGRID_OBJECTS, MINIGRID_COLOURS, MINIGRID_STATES]))
    return within_index_ranges or min(space.shape[:2]) < _MIN_CNN_SIDE


class VectorEncoder(BaseFeaturesExtractor):
    """Flattened observation -> ``d_input`` features.

    :param observation_space: a Box, Discrete, MultiDiscrete or MultiBinary space.
    :param d_input: output width.
    """

    def __init__(self, observation_space: gym.Space, d_input: int = 64) -> None:
        super().__init__(observation_space, d_input)
        self.net = nn.Sequential(nn.Flatten(), _projection(get_flattened_obs_dim(observation_space), d_input))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.net(observations)


class DistinctCells(NamedTuple):
    """A batch of grids as its distinct cells."""

    values: torch.Tensor
    """``(U, d_input)``, the encoding of each distinct (position, object, colour, state)."""
    cell: torch.Tensor
    """``(U,)``, the grid position (row-major) of each, in ascending order."""
    index: torch.Tensor
    """``(B, H * W)``, the row of ``values`` for every cell of every grid."""


class GridEncoder(BaseFeaturesExtractor):
    """MiniGrid symbolic grid ``(B, H, W, 3)`` -> ``H * W * d_input`` features.

    :param observation_space: an integer ``(H, W, 3)`` Box.
    :param d_input: per-cell output width.
    :param embedding_dim: width of each index embedding.
    """

    def __init__(self, observation_space: spaces.Box, d_input: int = 64, embedding_dim: int = 8) -> None:
        height, width, _ = observation_space.shape
        super().__init__(observation_space, height * width * d_input)
        self.objects = nn.Embedding(MINIGRID_OBJECTS, embedding_dim)
        self.colours = nn.Embedding(MINIGRID_COLOURS, embedding_dim)
        self.states = nn.Embedding(MINIGRID_STATES, embedding_dim)
        self.cells = nn.Parameter(torch.randn(height, width, embedding_dim))
        self.project = _projection(4 * embedding_dim, d_input)
        self.register_buffer("index_max", torch.tensor([MINIGRID_OBJECTS - 1, MINIGRID_COLOURS - 1, MINIGRID_STATES - 1]))

    def encode_distinct(self, observations: torch.Tensor) -> DistinctCells:
        """Encode each distinct (position, object, colour, state) of the batch once.

        A cell's features depend only on these, and most combinations repeat across a batch (walls, floor,
        unseen cells).
        """
        # SB3 hands observations over as floats; the grid holds small integer indices.
        grid = torch.minimum(observations.long().clamp(min=0), self.index_max)  # (B, H, W, 3)
        height, width = grid.shape[1:3]
        position = torch.arange(height * width, device=grid.device).view(1, height, width)
        codes = ((position * MINIGRID_OBJECTS + grid[..., 0]) * MINIGRID_COLOURS + grid[..., 1]) * MINIGRID_STATES \
            + grid[..., 2]  # (B, H, W), ordered by position first
        distinct, inverse = torch.unique(codes, return_inverse=True)  # (U,), (B, H, W)
        state, rest = distinct % MINIGRID_STATES, distinct // MINIGRID_STATES
        colour, rest = rest % MINIGRID_COLOURS, rest // MINIGRID_COLOURS
        kind, cell = rest % MINIGRID_OBJECTS, rest // MINIGRID_OBJECTS
        embedded = torch.cat(
            (self.objects(kind), self.colours(colour), self.states(state), self.cells.flatten(0, 1)[cell]), dim=-1
        )  # (U, 4 * E)
        return DistinctCells(self.project(embedded), cell, inverse.flatten(1))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        cells = self.encode_distinct(observations)
        return cells.values[cells.index].flatten(1)  # (B, H * W * d_input)

    def linear(self, observations: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``F.linear(self(observations), weight, bias)``, computed without the ``(B, H * W * d_input)`` features:
        each distinct cell's encoding meets its position's block of the weight once, and every observation
        sums its cells' products. For the CTM's synapses this is most of the work of a MiniGrid step.

        :param weight: ``(out, H * W * d_input)``.
        :return: ``(B, out)``.
        """
        cells = self.encode_distinct(observations)
        n_cells = cells.index.shape[1]
        blocks = weight.view(weight.shape[0], n_cells, -1).permute(1, 2, 0)  # (H * W, d_input, out)
        # Lay the distinct values out per position, padded to the most any position has, for one batched product.
        counts = torch.bincount(cells.cell, minlength=n_cells)
        slot = torch.arange(len(cells.cell), device=cells.cell.device) - (torch.cumsum(counts, 0) - counts)[cells.cell]
        per_cell = cells.values.new_zeros(n_cells, int(counts.max()), cells.values.shape[1]).index_put(
            (cells.cell, slot), cells.values)  # (H * W, most, d_input)
        products = torch.bmm(per_cell, blocks)[cells.cell, slot]  # (U, out)
        summed = F.embedding_bag(cells.index, products, mode="sum")  # (B, out)
        return summed if bias is None else summed + bias


def _encoder_for(space: gym.Space, d_input: int, key: str | None = None) -> BaseFeaturesExtractor:
    where = f" (key {key!r} of the Dict observation)" if key else ""
    if is_symbolic_grid(space):
        return GridEncoder(space, d_input)
    if isinstance(space, spaces.Box) and is_image_space(space, check_channels=False):
        channels_first = space.shape[0] in (1, 3, 4)
        height, width = space.shape[1:] if channels_first else space.shape[:2]
        if min(height, width) < _MIN_CNN_SIDE:
            raise UnsupportedSpaceError(
                f"Image observation{where} of {height}x{width} pixels ({space}, channels first as SB3 hands it over) "
                f"is smaller than the {_MIN_CNN_SIDE}x{_MIN_CNN_SIDE} pixels the CNN reads. Fix: if it is MiniGrid's "
                "symbolic grid (ImgObsWrapper declares its object, colour and state indices as 0-255 pixels), wrap "
                "the env in ctm_rl.envs.SymbolicGridBounds after ImgObsWrapper, or train it by name (--env "
                "MiniGrid-...); for a real image, resize it (gymnasium.wrappers.ResizeObservation) or pass your own "
                "features_extractor_class in policy_kwargs.")
        return NatureCNN(space, features_dim=d_input)
    if isinstance(space, spaces.Box) or isinstance(space, _FLAT_SPACES):
        return VectorEncoder(space, d_input)
    raise UnsupportedSpaceError(
        f"Unsupported observation space{where}: {space}. ctm-rl encodes Box, Discrete, MultiDiscrete, MultiBinary, "
        "MiniGrid symbolic grids and Dicts of these. Fix: wrap the env so it observes one of these (for example "
        "gymnasium.wrappers.FlattenObservation), or pass your own features_extractor_class in policy_kwargs."
    )


class ObservationEncoder(BaseFeaturesExtractor):
    """Picks the encoder that suits the observation space; a Dict gets one encoder per key, concatenated.

    :param observation_space: the environment's observation space.
    :param d_input: output width of vector and image encoders, per-cell width of grid encoders.
    """

    def __init__(self, observation_space: gym.Space, d_input: int = 64) -> None:
        if isinstance(observation_space, spaces.Dict):
            encoders = {key: _encoder_for(space, d_input, key) for key, space in observation_space.spaces.items()}
        else:
            encoders = {"obs": _encoder_for(observation_space, d_input)}
        super().__init__(observation_space, sum(e.features_dim for e in encoders.values()))
        self.encoders = nn.ModuleDict(encoders)
        self.is_dict = isinstance(observation_space, spaces.Dict)

    @property
    def grid(self) -> GridEncoder | None:
        """The grid encoder when the whole observation is one MiniGrid grid (see :meth:`GridEncoder.linear`)."""
        encoder = None if self.is_dict else self.encoders["obs"]
        return encoder if isinstance(encoder, GridEncoder) else None

    def forward(self, observations: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.is_dict:
            return self.encoders["obs"](observations)
        return torch.cat([encoder(observations[key]) for key, encoder in self.encoders.items()], dim=-1)


def flat_observations(obs, space) -> np.ndarray:
    """Observations as the encoders read them, flattened: Discrete and MultiDiscrete parts one-hot (a suit index
    is a category, not a number to regress), Dict parts concatenated in key order. :return: ``(N, O)``."""

    def flat(values, part) -> np.ndarray:
        tensor = preprocess_obs(torch.as_tensor(np.asarray(values)), part, normalize_images=False)
        return tensor.reshape(tensor.shape[0], -1).double().numpy()

    if isinstance(space, spaces.Dict):
        return np.concatenate([flat(obs[key], part) for key, part in space.spaces.items()], axis=1)
    return flat(obs, space)
