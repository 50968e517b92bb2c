"""Connection counts that every worker process sees: one table of int64 in shared memory.

A row is one backend server, a column one worker. A worker writes only its own
cell of a row (one writer per cell: no lock, no atomic read-modify-write
across processes; an aligned 8-byte store is atomic on 64-bit machines), and
whoever needs the node's count (least_conn, max_conns, `/status`) sums the row.
The memory is a memfd the master creates and hands to each worker; when a
worker dies its column is zeroed before its replacement starts, so the
connections that died with it stop counting.
"""

from __future__ import annotations

import mmap
import os

CELL = 8  # bytes of one int64


class CountTable:
    """`rows` x `columns` int64 cells in a shared mapping of the memfd `fd`."""

    def __init__(self, fd: int, rows: int, columns: int) -> None:
        self.fd = fd
        self.rows = rows
        self.columns = columns
        self._map = mmap.mmap(fd, rows * columns * CELL)
        self.cells = memoryview(self._map).cast("q")

    @classmethod
    def create(cls, rows: int, columns: int) -> CountTable:
        fd = os.memfd_create("haproxy-py-counts", 0)  # zero-filled
        os.ftruncate(fd, rows * columns * CELL)
        return cls(fd, rows, columns)

    def row_total(self, row: int) -> int:
        start = row * self.columns
        return sum(self.cells[start : start + self.columns])

    def zero_column(self, column: int) -> None:
        for row in range(self.rows):
            self.cells[row * self.columns + column] = 0


class RowMap:
    """Stable rows for (backend, server address) keys: a server keeps its row across reloads."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.rows: dict[tuple[str, str], int] = {}

    def assign(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Rows for `keys`, new ones appended; ValueError past capacity."""
        for key in keys:
            if key not in self.rows:
                if len(self.rows) >= self.capacity:
                    raise ValueError(
                        f"more than {self.capacity} backend servers over this process's life"
                    )
                self.rows[key] = len(self.rows)
        return {key: self.rows[key] for key in keys}
