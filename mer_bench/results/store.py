"""The results store: one JSON record, one tidy per-rate CSV and one predictions file per run.

Why: every finished cell is written atomically (temp file + rename) and the JSON record is
written last, so its presence means "done"; an interrupted grid resumes by skipping recorded
runs, and tables, AUILC variants and plots are rebuilt from the store alone. The store also
defends itself: a corrupt or foreign file is reported by name and skipped (never a traceback,
never silently used), a run's CSV must agree with its JSON record, and claim files keep two
processes from computing one cell, or one training, at once.

Layout under the store root (default `results/`):
  runs/<run_id>.json         provenance record (config, versions, timings, tau, AUILC)
  runs/<run_id>.csv          tidy rows: run_id, model, dataset, variant, task, scenario,
                             protocol, seed, rate, metric, value
  predictions/<run_id>.npz   per-rate test (and validation) scores, labels, ids
  checkpoints/<train_key>.pt trained weights shared by scenarios with the same training
  runs/<run_id>.claim        held while a process computes the cell (pid, host)
  checkpoints/<train_key>.claim  held while a process trains that checkpoint
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mer_bench.errors import UserError, warn

JOINT_SCENARIO_FAMILY = "rmfm"  # Fig. 8's joint representations: RMFM curves only


def keeps_joint(scenario: str) -> bool:
    """Whether a run of `scenario` stores joint representations: only RMFM's are plotted, and
    they are nine tenths of a predictions file, so other scenarios do not keep them."""
    return scenario.split("-")[0] == JOINT_SCENARIO_FAMILY


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


MIN_FREE_BYTES = 64 * 2**20  # refuse to start a cell with less free space in the store


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Temp file + fsync + rename; the file gets the process's umask (mkstemp makes 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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
        """Record and rows exist and the record is this run's finished record (a corrupt or
        foreign record means "not done": the cell is recomputed and the file replaced)."""
        if not (self.record_path(run_id).is_file() and self.rows_path(run_id).is_file()):
            return False
        return self._read_record(self.record_path(run_id), quiet=True) is not None

    def check_writable(self) -> None:
        """Fail before any training when results could not be written: the root or one of its
        folders is a file, not writable, or the disk is (nearly) full."""
        for sub in ("", "runs", "predictions", "checkpoints"):
            d = self.root / sub
            if d.exists() and not d.is_dir():
                raise UserError(f"results location {d} is a file, not a directory; choose another --results")
            try:
                d.mkdir(parents=True, exist_ok=True)
                fd, probe = tempfile.mkstemp(dir=d, prefix=".probe.")
                os.close(fd)
                os.unlink(probe)
            except OSError as e:
                raise UserError(f"results location {d} is not writable ({e.strerror}); choose another --results") from None
        free = shutil.disk_usage(self.root).free
        if free < MIN_FREE_BYTES:
            raise UserError(
                f"results location {self.root} has only {free // 2**20} MiB free; "
                f"at least {MIN_FREE_BYTES // 2**20} MiB are needed"
            )

    def claim_path(self, run_id: str) -> Path:
        return self.root / "runs" / f"{run_id}.claim"

    def training_claim_path(self, train_key: str) -> Path:
        return self.root / "checkpoints" / f"{train_key}.claim"

    def claim(self, run_id: str) -> AbstractContextManager[None]:
        """Hold `runs/<run_id>.claim` (atomic create) while computing a cell; a claim left by a
        dead process on this host is taken over, a live one is a one-line error."""
        return _hold(self.claim_path(run_id), f"cell {run_id} is being computed")

    def claim_training(self, train_key: str) -> AbstractContextManager[None]:
        """Hold `checkpoints/<train_key>.claim` while training: cells of other scenarios share
        one training, so two grids side by side would otherwise train it twice at once."""
        return _hold(self.training_claim_path(train_key), f"training {train_key} is running")

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

    def _read_record(self, path: Path, quiet: bool = False) -> dict[str, Any] | None:
        """The record at `path`, or None (with a warning naming the file) when it is not
        valid JSON or not a run record for its own file name."""
        try:
            with open(path, encoding="utf-8") as f:
                rec = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            reason = f"unreadable JSON ({str(e).splitlines()[0][:80]})"
        else:
            reason = _record_problem(rec, path.stem)
            if reason is None:
                return rec
        if not quiet:
            warn(f"skipping {path}: {reason}; delete it or rerun the cell with --force")
        return None

    def records(self) -> Iterator[dict[str, Any]]:
        for path in sorted((self.root / "runs").glob("*.json")):
            rec = self._read_record(path)
            if rec is not None:
                yield rec

    def load_record(self, run_id: str) -> dict[str, Any]:
        rec = self._read_record(self.record_path(run_id), quiet=True)
        if rec is None:
            raise UserError(
                f"{self.record_path(run_id)} is not a valid run record; rerun with --force"
            )
        return rec

    def load_predictions(self, run_id: str) -> dict[str, np.ndarray]:
        path = self.predictions_path(run_id)
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            msg = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
            raise UserError(f"{path}: unreadable predictions ({msg}); rerun the cell with --force") from None

    def _rows(self, path: Path, rec: dict[str, Any]) -> pd.DataFrame | None:
        """The run's tidy rows, or None (warned) when the CSV is unreadable or disagrees with
        its JSON record (run id, seed, grid or metric values)."""
        try:
            df = pd.read_csv(path, dtype={"rate": str})
        except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as e:
            warn(f"skipping {path}: unreadable CSV ({str(e).splitlines()[0][:80]})")
            return None
        problem = _rows_problem(df, rec)
        if problem:
            warn(f"skipping {path}: {problem}; rerun the cell with --force")
            return None
        return df

    def table(self) -> pd.DataFrame:
        """All finished runs' tidy rows (runs without a JSON record are unfinished: skipped)."""
        runs_dir = self.root / "runs"
        if not runs_dir.is_dir():
            raise UserError(f"no results store at {self.root}; run `mer-bench run ...` first")
        frames = []
        for p in sorted(runs_dir.glob("*.csv")):
            if not p.with_suffix(".json").exists():
                continue
            rec = self._read_record(p.with_suffix(".json"))
            df = None if rec is None else self._rows(p, rec)
            if df is not None:
                frames.append(df)
        if not frames:
            raise UserError(f"results store {self.root} has no finished runs")
        return pd.concat(frames, ignore_index=True)


class CellBusy(UserError):
    """Another live process holds the cell's (or its training's) claim file."""


@contextmanager
def _hold(path: Path, busy: str) -> Iterator[None]:
    """Create `path` atomically holding 'pid host' for the duration; a stale claim (its
    process gone, same host) is taken over, a live one raises CellBusy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _claim_holder(path)
            if holder is None:  # stale: its process is gone
                path.unlink(missing_ok=True)
                continue
            raise CellBusy(
                f"{busy} in process {holder} (claim file {path}); "
                "wait for it, or delete the claim file if that process is gone"
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    else:
        raise CellBusy(f"could not claim {path}")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _claim_holder(path: Path) -> str | None:
    """'pid host' of a live claim, or None when the claiming process is gone (same host)."""
    try:
        pid_s, _, host = path.read_text().partition(" ")
        pid = int(pid_s)
    except (OSError, ValueError):
        return None
    if host.strip() != socket.gethostname():
        return f"{pid} on {host.strip()}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return str(pid)


def _record_problem(rec: Any, stem: str) -> str | None:
    if not isinstance(rec, dict):
        return "not a run record (expected a JSON object)"
    if rec.get("run_id") != stem:
        return f"its run_id {str(rec.get('run_id'))[:60]!r} does not match the file name"
    for key, kind in (("grid", list), ("metrics", dict), ("model", str), ("scenario", str)):
        if key in rec and not isinstance(rec[key], kind):
            return f"field {key!r} is not a {kind.__name__}"
    return None


def _rows_problem(df: pd.DataFrame, rec: dict[str, Any]) -> str | None:
    missing = [c for c in TIDY_COLUMNS if c not in df.columns]
    if missing:
        return f"missing column(s) {', '.join(missing)}"
    if set(df["run_id"].astype(str)) != {rec["run_id"]}:
        return "its run_id column does not match its JSON record"
    if "seed" in rec and set(df["seed"].tolist()) != {rec["seed"]}:
        return "its seed does not match its JSON record"
    if isinstance(rec.get("grid"), list) and set(df["rate"]) != {str(g) for g in rec["grid"]}:
        return "its rates do not match the JSON record's grid"
    metrics = rec.get("metrics")
    if isinstance(metrics, dict):
        values = pd.to_numeric(df["value"], errors="coerce")
        for rate, metric, value in zip(df["rate"], df["metric"], values):
            want = metrics.get(rate, {}).get(metric) if isinstance(metrics.get(rate), dict) else None
            if not isinstance(want, int | float) or not _close(float(value), float(want)):
                return f"value of {metric} at {rate} does not match its JSON record"
    return None


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
