"""A description of the machine that produced a set of numbers, stored with them."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def machine_description(device: str) -> dict[str, Any]:
    """Platform, processor, core count, torch version and threads, and the GPU when ``device`` is CUDA.

    :param device: the torch device the numbers were taken on (``cpu``, ``cuda``, ``cuda:1``).
    """
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": device}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def code_version() -> str:
    """``ctm-rl <version>``, with the git commit (and ``+changes`` if the tree has uncommitted changes) when the
    package runs from a git checkout."""
    from ctm_rl import __version__

    package = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(package), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(package), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"ctm-rl {__version__}"
    return f"ctm-rl {__version__} (git {commit}{'+changes' if dirty else ''})"
