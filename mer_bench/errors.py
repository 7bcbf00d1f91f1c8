"""User-facing errors: the CLI prints their message on one line and exits with code 2."""

import sys


class UserError(Exception):
    """Bad input from the user (names, paths, shapes, files); never shown as a traceback."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class DataError(UserError):
    """A data file is malformed: wrong schema, shapes, counts or values."""


def warn(message: str) -> None:
    """One line on stderr for something skipped or repaired (a bad store file, a stale cache)."""
    print(f"mer-bench: warning: {' '.join(str(message).split())}", file=sys.stderr)
