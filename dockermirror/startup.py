"""What stops the mirror's start-up: one line, no traceback."""

from __future__ import annotations


class StartupError(SystemExit, Exception):
    """A problem that stops start-up: one line, no traceback, no usage text.

    (twistd answers a UsageError with its whole usage text before the line that matters.)
    An Exception too, so that twistd, daemonizing, reports it to the waiting parent.
    """

    def __init__(self, problem: str) -> None:
        super().__init__(f"dockermirror: {problem}")
