"""BIRD's control socket, spoken directly (no `birdc` process per command).

The protocol is line based: BIRD greets with `0001 BIRD <version> ready.`;
every reply line starts with a four-digit code, followed by `-` when more
lines follow or a space on the last one; a line starting with a space
continues the previous code. Codes 0xxx are done/status, 1xxx and 2xxx
tables, 8xxx run-time errors (a broken config on `configure`), 9xxx parse
errors of the command itself.

The parsers below turn `show static`, `show protocols` and `show bfd
sessions` into plain data (pure, never raise: a line they do not know is
skipped).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

LIMIT = 2.0  # seconds for BIRD to answer one command (it takes a few ms)


class BirdError(Exception):
    """BIRD refused a command or cannot be reached; the message says which and how."""


@dataclass(frozen=True)
class Reply:
    code: int  # the last line's code
    lines: tuple[str, ...]  # every line's text, codes and markers removed

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class BirdControl:
    """One connection to BIRD's control socket at `path`, opened on first use and reopened
    after any failure; one command at a time."""

    def __init__(self, path: str, limit: float = LIMIT) -> None:
        self.path = path
        self.limit = limit
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    async def command(self, line: str) -> Reply:
        """Send one command; raise BirdError on an error code, a timeout or a lost socket."""
        async with self._lock:
            try:
                return await asyncio.wait_for(self._exchange(line), self.limit)
            except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError) as exc:
                await self.close()
                raise BirdError(
                    f"BIRD's control socket {self.path}: {type(exc).__name__} {exc}; "
                    "is bird running with `-s` pointing there?"
                ) from None

    async def _exchange(self, line: str) -> Reply:
        if self._conn is None:
            reader, writer = await asyncio.open_unix_connection(self.path)
            self._conn = (reader, writer)
            await _read_reply(reader)  # the greeting
        reader, writer = self._conn
        writer.write(line.encode() + b"\n")
        await writer.drain()
        reply = await _read_reply(reader)
        if reply.code >= 8000:
            raise BirdError(f"BIRD refused `{line}`: {reply.text}")
        return reply

    async def close(self) -> None:
        if self._conn is not None:
            _, writer = self._conn
            self._conn = None
            writer.close()

    async def configure(self) -> str:
        """Re-read the configuration (sessions whose settings did not change stay up)."""
        return (await self.command("configure")).text


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    lines: list[str] = []
    code = 0
    while True:
        raw = await reader.readline()
        if not raw:
            raise EOFError("BIRD closed the control socket")
        text = raw.decode(errors="replace").rstrip("\n")
        if text[:4].isdigit() and text[4:5] in ("-", " "):
            code = int(text[:4])
            lines.append(text[5:])
            if text[4] == " ":
                return Reply(code, tuple(lines))
        else:
            lines.append(text[1:] if text.startswith(" ") else text)


def static_routes(reply: Reply) -> dict[str, bool]:
    """`show static`: each configured prefix and whether it is active (False: dormant)."""
    routes: dict[str, bool] = {}
    prefix = None
    for line in reply.lines:
        if line and not line[0].isspace() and "/" in line:
            prefix = line.split()[0]
            routes[prefix] = True
        elif prefix is not None and "(dormant)" in line:
            routes[prefix] = False
    return routes


@dataclass(frozen=True)
class Protocol:
    name: str
    kind: str
    state: str
    since: str  # when it last changed state: a session that flapped has a new one
    info: str


def protocols(reply: Reply) -> dict[str, Protocol]:
    """`show protocols`: name -> (kind, state, info such as `Established`)."""
    found = {}
    for line in reply.lines[1:]:
        parts = line.split(None, 5)
        if len(parts) >= 5:
            info = parts[5].strip() if len(parts) > 5 else ""
            found[parts[0]] = Protocol(parts[0], parts[1], parts[3], parts[4], info)
    return found


def bfd_sessions(reply: Reply) -> dict[str, str]:
    """`show bfd sessions`: peer address -> state (`Up`, `Down`, `Init`, `AdminDown`)."""
    found = {}
    for line in reply.lines:
        parts = line.split()
        if len(parts) >= 3 and parts[0][:1].isdigit() and parts[0].count(".") == 3:
            found[parts[0]] = parts[2]
    return found
