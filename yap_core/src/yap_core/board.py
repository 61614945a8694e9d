"""The workers' board: each worker's counts where every worker can read them.

With SERVER_WORKERS > 1 the kernel hands each /status request to one worker,
which alone knows its own sockets and turns. So the supervisor makes one
small shared memory file, a row per worker, and passes it to every worker
(an inherited file descriptor, like the listening socket). A worker writes
only its own row, when its counts change; /status reads every row and answers
for the whole deployment.

A row is six 64-bit integers written in one ``pack_into``. The connection
counts also enforce MAX_CONCURRENT_CONNECTIONS across the deployment, so a
worker changes its count only under ``locked()`` (a POSIX record lock on the
file: owned per process, so it excludes workers that share the inherited
descriptor, where flock would not); it is held for a few microseconds, once
when a socket is admitted and once when it closes, never during a turn. The
other fields are counts for a status page, written without the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import sys
import tempfile
from collections.abc import Iterator

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
    max_connections: int  # the deployment's limit, which every worker enforces on the total
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

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Every worker's connection count held still (see the module docstring)."""
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def connections(self) -> int:
        """The deployment's open sockets: every row's count."""
        return sum(_ROW.unpack_from(self._map, i * _ROW.size)[2] for i in range(self.count))

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
