import sys
from pathlib import Path

import pytest
import torch

# Make the tests' own modules (toy_envs) importable by name, as a user's package would be.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield
