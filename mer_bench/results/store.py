"""The results store: one JSON record, one tidy per-rate CSV and one predictions file per run.

Why: every finished cell is written atomically (temp file + rename) and the JSON record is
written last, so its presence means "done"; an interrupted grid resumes by skipping recorded
runs, and tables, AUILC variants and plots are rebuilt from the store alone.

Layout under the store root (default `results/`):
  runs/<run_id>.json         provenance record (config, versions, timings, tau, AUILC)
  runs/<run_id>.csv          tidy rows: run_id, model, dataset, variant, task, scenario,
                             protocol, seed, rate, metric, value
  predictions/<run_id>.npz   per-rate test (and validation) scores, labels, ids
  checkpoints/<train_key>.pt trained weights shared by scenarios with the same training
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mer_bench.errors import UserError

TIDY_COLUMNS = [
    "run_id",
    "model",
    "dataset",
    "variant",
    "task",
    "scenario",
    "protocol",
    "seed",
    "rate",
    "metric",
    "value",
]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class Store:
    """A results directory. Only `write_run` creates run files, always JSON last."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def record_path(self, run_id: str) -> Path:
        return self.root / "runs" / f"{run_id}.json"

    def rows_path(self, run_id: str) -> Path:
        return self.root / "runs" / f"{run_id}.csv"

    def predictions_path(self, run_id: str) -> Path:
        return self.root / "predictions" / f"{run_id}.npz"

    def checkpoint_path(self, train_key: str) -> Path:
        return self.root / "checkpoints" / f"{train_key}.pt"

    def is_done(self, run_id: str) -> bool:
        return self.record_path(run_id).exists() and self.rows_path(run_id).exists()

    def write_run(
        self,
        run_id: str,
        record: dict[str, Any],
        rows: pd.DataFrame,
        predictions: dict[str, np.ndarray],
    ) -> None:
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **predictions)
        atomic_write_bytes(self.predictions_path(run_id), buf.getvalue())
        atomic_write_text(self.rows_path(run_id), rows[TIDY_COLUMNS].to_csv(index=False))
        atomic_write_text(
            self.record_path(run_id), json.dumps(record, indent=2, sort_keys=True, default=str)
        )

    def records(self) -> Iterator[dict[str, Any]]:
        for path in sorted((self.root / "runs").glob("*.json")):
            with open(path, encoding="utf-8") as f:
                yield json.load(f)

    def load_record(self, run_id: str) -> dict[str, Any]:
        with open(self.record_path(run_id), encoding="utf-8") as f:
            return json.load(f)

    def load_predictions(self, run_id: str) -> dict[str, np.ndarray]:
        with np.load(self.predictions_path(run_id), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def table(self) -> pd.DataFrame:
        """All finished runs' tidy rows (runs without a JSON record are unfinished: skipped)."""
        runs_dir = self.root / "runs"
        if not runs_dir.is_dir():
            raise UserError(f"no results store at {self.root}; run `mer-bench run ...` first")
        frames = [
            pd.read_csv(p, dtype={"rate": str})
            for p in sorted(runs_dir.glob("*.csv"))
            if p.with_suffix(".json").exists()
        ]
        if not frames:
            raise UserError(f"results store {self.root} has no finished runs")
        return pd.concat(frames, ignore_index=True)
