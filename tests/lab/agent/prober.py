"""A client stand-in, run inside the client namespace: GET the VIP every 10 ms for a bounded time.

Writes one line per request, `<monotonic time> <1|0> <Via header> <status|->`, so the
test can see how long clients got no answer, which node answered (the proxy's `Via`),
and what it answered (`-`: no answer at all).
CLOCK_MONOTONIC is shared by every process on the host, so the times compare
with the test's own.

    python -m tests.lab.agent.prober HOST PORT SECONDS OUTFILE
"""

from __future__ import annotations

import http.client
import sys
import time


def main(host: str, port: int, seconds: float, out: str) -> None:
    deadline = time.monotonic() + seconds
    with open(out, "w", buffering=1) as log:
        while time.monotonic() < deadline:
            started = time.monotonic()
            via = status = "-"
            try:
                conn = http.client.HTTPConnection(host, port, timeout=0.2)
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
                status = str(response.status)
                via = (response.getheader("Via") or "-").split()[-1]
                conn.close()
            except (OSError, http.client.HTTPException):
                ok = False
            log.write(f"{started:.4f} {int(ok)} {via} {status}\n")
            time.sleep(max(0.0, 0.01 - (time.monotonic() - started)))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
