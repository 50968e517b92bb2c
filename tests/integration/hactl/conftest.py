"""hactl tests never pick up a lab that happens to run on this machine, and read stdout
as a user's terminal or pipe gets it: log lines (an etcd endpoint switch, say) go to
stderr, as `hactl`'s own `main()` sends them."""

import sys
from collections.abc import Iterator

import pytest
import structlog

from tests.support.hactl_env import _no_lab_context

__all__ = ["_no_lab_context"]


@pytest.fixture(autouse=True)
def _logs_to_stderr() -> Iterator[None]:
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    yield
    structlog.configure(**saved)
