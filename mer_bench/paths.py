"""Where things live: the data root, the per-user cache and the default results store (splits:
`mer_bench.splits.files`)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCAL_RESULTS = "local-results"


def results_default() -> str:
    """`$MER_BENCH_RESULTS`, else `local-results`: a user's own runs never land in the committed
    board's store (`results/`, which is reached with `--results results`)."""
    return os.environ.get("MER_BENCH_RESULTS") or LOCAL_RESULTS


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
