"""What the upstream client reports about each request it sends, for metrics and health."""

from __future__ import annotations

from typing import Protocol


class UpstreamEvents(Protocol):
    def answered(self, registry: str, status: int, seconds: float) -> None:
        """The upstream answered (``seconds`` until its response head)."""

    def failed(self, registry: str, problem: str, seconds: float) -> None:
        """No usable answer: unreachable, too slow, a broken response head."""


class NoEvents:
    def answered(self, registry: str, status: int, seconds: float) -> None:
        pass

    def failed(self, registry: str, problem: str, seconds: float) -> None:
        pass
