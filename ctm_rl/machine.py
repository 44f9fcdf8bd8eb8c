"""A description of the machine that produced a set of numbers, stored with them."""

from __future__ import annotations

import os
import platform
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
