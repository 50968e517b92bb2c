"""Liveness verdicts with hysteresis: one bad sample is no failure, one good one no recovery."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Hysteresis:
    """Healthy after `rise` good samples in a row, unhealthy after `fall` bad ones.

    A node starts unhealthy: it must prove its proxy works before it gets a VIP.
    """

    rise: int
    fall: int
    healthy: bool = False
    streak: int = 0

    def sample(self, ok: bool, fast: bool = False) -> bool:
        """Record one sample; True when the verdict changed.

        `fast`: a failure that needs no confirmation (the admin API refused the
        connection: the process is gone, not slow).
        """
        if ok == self.healthy:
            self.streak = 0
            return False
        self.streak += 1
        if fast or self.streak >= (self.rise if ok else self.fall):
            self.healthy = ok
            self.streak = 0
            return True
        return False
