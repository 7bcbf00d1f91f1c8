"""Grid workers stop when the process that started them dies.

Why: `kill -9` of a `grid --jobs N` parent left its joblib workers training (and writing) on
their own. A daemon thread in each worker polls its parent; once the worker is orphaned it
exits at once. A cell it was computing is simply not finished (files are written atomically
and the claim of a dead process is taken over), so a rerun resumes it.
"""

from __future__ import annotations

import os
import threading
import time

POLL_S = 1.0


def parent_alive(parent: int) -> bool:
    """True while `parent` is still this process's parent (an orphan is re-parented)."""
    return os.getppid() == parent


def exit_when_orphaned(parent: int, poll_s: float = POLL_S) -> threading.Thread:
    """Start (once per process) a daemon thread that `os._exit`s when `parent` is gone."""
    for t in threading.enumerate():
        if t.name == "mer-bench-watchdog":
            return t

    def watch() -> None:
        while parent_alive(parent):
            time.sleep(poll_s)
        os._exit(3)

    t = threading.Thread(target=watch, name="mer-bench-watchdog", daemon=True)
    t.start()
    return t
