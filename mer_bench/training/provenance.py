"""What a run records about where it ran: git commit, package versions, threads, memory."""

from __future__ import annotations

import hashlib
import json
import platform
import resource
import subprocess
import sys
from importlib import metadata
from typing import Any

import torch

from mer_bench.paths import PROJECT_ROOT

PACKAGES = ("mer-bench", "torch", "numpy", "pandas", "transformers", "joblib", "ray", "optuna")


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def environment(device: str) -> dict[str, Any]:
    env = {
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def peak_memory_mb(device: str) -> float:
    """CUDA peak allocation on GPU; the process's peak RSS on CPU (Linux reports KiB)."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def config_hash(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]
