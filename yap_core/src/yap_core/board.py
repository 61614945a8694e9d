"""The workers' board: each worker's counts where every worker can read them.

With SERVER_WORKERS > 1 the kernel hands each /status request to one worker,
which alone knows its own sockets and turns. So the supervisor makes one
small shared memory file, a row per worker, and passes it to every worker
(an inherited file descriptor, like the listening socket). A worker writes
only its own row, when its counts change; /status reads every row and answers
for the whole deployment.

A row is six 64-bit integers written in one ``pack_into``. A reader on
another CPU could in principle see a row half-written; the numbers are
counts for a status page, read again at the next request, so no lock.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import tempfile

import msgspec

# pid, state (index in STATES + 1; 0: not written yet), connections, max_connections,
# active_turns, engine_requests
_ROW = struct.Struct("<6q")
STATES = ("starting", "ready", "draining", "unhealthy")


class WorkerRow(msgspec.Struct, frozen=True):
    """One worker's counts as it last wrote them."""

    index: int
    pid: int
    state: str  # one of STATES, or "unknown" before the worker wrote its row
    connections: int
    max_connections: int
    active_turns: int
    engine_requests: int  # running + waiting in its engine, as of its last stats() (at most ~1 s old)


class Board:
    """A row per worker in one shared mapping (see the module docstring)."""

    def __init__(self, fd: int, count: int) -> None:
        self.fd = fd
        self.count = count
        self._map = mmap.mmap(fd, _ROW.size * count)
        self._pid = os.getpid()  # the writer's (a worker's); read once, not a syscall a write

    @classmethod
    def create(cls, count: int) -> Board:
        """The supervisor's: a new, zeroed board whose descriptor the workers inherit."""
        if sys.platform.startswith("linux"):
            fd = os.memfd_create("yap-workers")
        else:
            fd, path = tempfile.mkstemp(prefix="yap-workers-")
            os.unlink(path)
        os.ftruncate(fd, _ROW.size * count)
        os.set_inheritable(fd, True)
        return cls(fd, count)

    def write(self, index: int, state: str, connections: int, max_connections: int, active_turns: int,
              engine_requests: int) -> None:
        _ROW.pack_into(self._map, index * _ROW.size, self._pid, STATES.index(state) + 1, connections,
                       max_connections, active_turns, engine_requests)

    def rows(self) -> list[WorkerRow]:
        out = []
        for index in range(self.count):
            pid, state, connections, max_connections, turns, requests = _ROW.unpack_from(self._map, index * _ROW.size)
            name = STATES[state - 1] if 0 < state <= len(STATES) else "unknown"
            out.append(WorkerRow(index, pid, name, connections, max_connections, turns, requests))
        return out

    def close(self) -> None:
        """Idempotent: the descriptor's number may belong to another file afterwards."""
        if self.fd >= 0:
            self._map.close()
            os.close(self.fd)
            self.fd = -1
