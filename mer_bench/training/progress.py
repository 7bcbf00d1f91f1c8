"""Progress bars that tell the truth about early stopping and about a grid.

Why: a bar over the epoch budget (`0/200 ... 53 min remaining`) is wrong whenever early
stopping ends the run, which is almost always. The training bar's total is the epoch by which
the run stops unless validation improves again (best epoch + patience, capped by the budget),
and it grows when validation does improve; the grid bar counts finished cells, so tqdm's rate
gives the grid's ETA.
"""

from __future__ import annotations

from typing import Any


def stop_horizon(best_epoch: int, patience: int, epochs: int, start: int = 0) -> int:
    """Number of epochs the run has if validation never improves again (epochs are 0-based;
    `best_epoch` -1 before the first validation, which is at epoch `start`, after a model's
    warm-up)."""
    return min(epochs, max(best_epoch, start) + patience + 1)


class EpochBar:
    """A tqdm bar over epochs whose total follows `stop_horizon`."""

    def __init__(self, epochs: int, patience: int, desc: str, enabled: bool,
                 start: int = 0) -> None:
        from tqdm.auto import tqdm

        self.epochs, self.patience, self.start = epochs, patience, start
        self.bar = tqdm(total=stop_horizon(-1, patience, epochs, start), desc=desc,
                        disable=not enabled, leave=False, unit="epoch")

    def update(self, best_epoch: int, wait: int, **postfix: Any) -> None:
        """One epoch done; `wait` epochs since the best one."""
        self.bar.total = stop_horizon(best_epoch, self.patience, self.epochs, self.start)
        self.bar.set_postfix(patience=f"{wait}/{self.patience}", **postfix, refresh=False)
        self.bar.update(1)

    def skip(self, n: int, **postfix: Any) -> None:
        """`n` epochs not run here (a stored warm-up)."""
        self.bar.set_postfix(**postfix, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def grid_bar(total: int, enabled: bool):
    """A bar over a grid's trainings (groups of cells sharing one training): its rate is the ETA."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="grid", unit="training", disable=not enabled or total <= 1)
