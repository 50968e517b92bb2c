"""A clock a test moves by hand, for code that takes `clock: Callable[[], float]`."""

from __future__ import annotations


class ManualClock:
    """Reads `now` until `advance()` moves it: leases, hold-downs and deadlines without sleeping."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
