"""Most Autobahn cases, direct and through the proxy (`make conformance` runs them all)."""

from __future__ import annotations

import asyncio

from tests.conformance.run import Run, Verdict, compare, conformance, format_report

# Framing, pings, reserved bits and opcodes, fragmentation, UTF-8, close handling, a few large
# messages, and permessage-deflate negotiated end to end; the slow 9.x bulk cases are left out.
CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.1.1", "9.2.1", "10.*", "12.1.*"]


async def test_proxy_fails_no_case_the_backend_passes() -> None:
    report = await asyncio.wait_for(conformance(CASES, parallelism=2), timeout=600)
    print(format_report(report))
    assert len(report.direct.verdicts) > 250
    assert len(report.proxied.verdicts) == len(report.direct.verdicts)
    assert report.regressions == []
    # The backend is conformant: the comparison is against passing cases.
    assert len(report.direct.failed) <= 2


def test_compare_flags_only_new_failures() -> None:
    def run(*verdicts: tuple[str, bool]) -> Run:
        return Run("t", 0.0, [Verdict(c, "OK" if ok else "FAILED", "OK", ok) for c, ok in verdicts])

    report = compare(run(("1", True), ("2", False), ("3", True)), run(("1", False), ("2", False)))
    assert report.regressions == ["1", "3"]
