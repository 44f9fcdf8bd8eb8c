"""Agent presets: one YAML file per agent, one block per environment family, merged over ``default``."""

from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent


def preset_path(agent: str) -> Path:
    """Path of an agent's preset file (``agents/<agent>.yml``)."""
    return PRESET_DIR / f"{agent}.yml"


def available_agents() -> list[str]:
    """Names of the agents that have a preset file."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yml"))
