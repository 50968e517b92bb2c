"""hactl tests never pick up a lab that happens to run on this machine."""

from tests.support.hactl_env import _no_lab_context

__all__ = ["_no_lab_context"]
