"""Where things live: the data root, the per-user cache and the project's committed splits."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """`--data-root`, else `$MER_BENCH_DATA`, else the per-user cache directory."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("MER_BENCH_DATA")
    if env:
        return Path(env).expanduser()
    return cache_dir()


def cache_dir() -> Path:
    """Per-user cache (`$MER_BENCH_CACHE`, else `$XDG_CACHE_HOME/mer-bench`, else ~/.cache)."""
    env = os.environ.get("MER_BENCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mer-bench"


def splits_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Committed split id lists and counterfactual vocabularies (`$MER_BENCH_SPLITS` overrides)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("MER_BENCH_SPLITS")
    return Path(env) if env else PROJECT_ROOT / "splits"
