"""One fleet view for several worker processes: snapshots and in-flight counts in shared memory.

With ``serve --workers N`` a supervisor process runs the collector (discovery + scraping) once
and publishes every snapshot into a shared-memory block; each worker (its own gRPC server on
the same port, SO_REUSEPORT) reads the block and republishes it into its own FleetState, so
all workers pick from the same world and the fleet is scraped once, not N times.

In-flight counts: every worker owns one row of a shared (workers x endpoints) int64 array and
writes only that row; a worker's picks use the sum over all rows, so a burst spread over the
workers still spreads over the endpoints. One writer per cell: no locks, no atomics needed.

Layout of the snapshot block (a seqlock: the writer makes ``seq`` odd while it writes; a
reader retries until it sees the same even value before and after copying):
``[seq, version, synced, n, membership_bytes]`` int64, then the endpoint list as JSON, then
per-endpoint float64 arrays: waiting, running, kv_usage, scraped_at, ttft_mean_s, healthy and the
work counters speed estimates read.
Prefix-cache counters and LoRA adapters are not shared (their scorers see neutral values).
"""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import numpy.typing as npt

from extproc.fleet.state import (
    WORK_COUNTERS,
    Endpoint,
    EndpointMetrics,
    FleetSnapshot,
    FleetState,
    InFlight,
    build_snapshot,
)

_HEADER = 5
_FIELDS = ("waiting", "running", "kv_usage", "scraped_at", "ttft_mean_s", "healthy", *WORK_COUNTERS)
MEMBERSHIP_BYTES = 4 * 1024 * 1024


class Mapped:
    """A shared-memory file (/dev/shm when it exists) mapped into this process.

    Plain mmap instead of multiprocessing.shared_memory: the latter's resource tracker (3.11)
    unlinks a block when any attached process exits, which would pull it from under the others.
    """

    def __init__(self, name: str | None = None, size: int = 0) -> None:
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        self.created = name is None
        if name is None:
            fd, self.name = tempfile.mkstemp(prefix="llm-extproc-", dir=directory)
            os.ftruncate(fd, size)
        else:
            self.name = name
            fd = os.open(name, os.O_RDWR)
        try:
            self._mmap = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self.buf = memoryview(self._mmap)

    def close(self) -> None:
        """Callers must have dropped their numpy views of ``buf`` first."""
        self.buf.release()
        self._mmap.close()

    def unlink(self) -> None:
        os.unlink(self.name)


def _size(max_endpoints: int) -> int:
    return 8 * _HEADER + MEMBERSHIP_BYTES + 8 * len(_FIELDS) * max_endpoints


class _Block:
    def __init__(self, shm: Mapped, max_endpoints: int) -> None:
        self.max_endpoints = max_endpoints
        buf = shm.buf
        self.header: npt.NDArray[np.int64] = np.ndarray((_HEADER,), dtype=np.int64, buffer=buf)
        self.membership = buf[8 * _HEADER : 8 * _HEADER + MEMBERSHIP_BYTES]
        offset = 8 * _HEADER + MEMBERSHIP_BYTES
        self.arrays: npt.NDArray[np.float64] = np.ndarray(
            (len(_FIELDS), max_endpoints), dtype=np.float64, buffer=buf, offset=offset
        )


class SharedFleetWriter:
    """Supervisor side: owns the block; ``publish`` is subscribed to the collector's FleetState."""

    def __init__(self, max_endpoints: int = 16384) -> None:
        self.shm = Mapped(size=_size(max_endpoints))
        self.name = self.shm.name
        self.max_endpoints = max_endpoints
        self._block = _Block(self.shm, max_endpoints)
        self._block.header[:] = 0
        self._last_membership: tuple[str, ...] | None = None

    def publish(self, snapshot: FleetSnapshot, synced: bool) -> None:
        block = self._block
        n = min(snapshot.size, self.max_endpoints)
        block.header[0] += 1  # odd: writing
        if snapshot.membership != self._last_membership:
            raw = json.dumps([asdict(e) for e in snapshot.endpoints[:n]]).encode()
            if len(raw) > MEMBERSHIP_BYTES:
                raise ValueError(f"fleet of {n} endpoints does not fit the shared block")
            block.membership[: len(raw)] = raw
            block.header[4] = len(raw)
            self._last_membership = snapshot.membership
        for i, name in enumerate(_FIELDS):
            block.arrays[i, :n] = getattr(snapshot, name)[:n]
        block.header[1] = snapshot.version
        block.header[2] = 1 if synced else 0
        block.header[3] = n
        block.header[0] += 1  # even: done

    def close(self) -> None:
        self._block.membership.release()
        del self._block
        self.shm.close()
        self.shm.unlink()


class SharedFleetReader:
    """Worker side: a Collector (start/stop) that copies the shared block into a FleetState."""

    def __init__(self, name: str, max_endpoints: int, fleet: FleetState, interval_s: float = 0.02) -> None:
        self.shm = Mapped(name)
        self._block = _Block(self.shm, max_endpoints)
        self.fleet = fleet
        self.interval_s = interval_s
        self._version = -1
        self._seq = -1
        self._endpoints: list[Endpoint] = []
        self._membership_len = -1
        self._task: asyncio.Task[None] | None = None

    def poll(self) -> bool:
        """Copy the block if it changed since the last poll; True when a snapshot was published."""
        block = self._block
        for _ in range(100):
            before = int(block.header[0])
            if before == 0:
                return False  # nothing published yet
            if before % 2 or before == self._seq:
                if before == self._seq:
                    return False
                continue
            version, synced, n, length = (int(x) for x in block.header[1:5])
            arrays = block.arrays[:, :n].copy()
            membership = (
                bytes(block.membership[:length])
                if length != self._membership_len or n != len(self._endpoints)
                else None
            )
            if int(block.header[0]) != before:
                continue  # the writer went past us; read again
            self._seq = before
            if membership is not None:
                self._endpoints = [
                    Endpoint(**{**e, "models": tuple(e["models"])}) for e in json.loads(membership)
                ]
                self._membership_len = length
            now = time.monotonic()
            metrics = {
                e.address: EndpointMetrics(
                    waiting=float(arrays[0, row]),
                    running=float(arrays[1, row]),
                    kv_usage=float(arrays[2, row]),
                    scraped_at=float(arrays[3, row]),
                    ttft_mean_s=float(arrays[4, row]),
                    healthy=bool(arrays[5, row]),
                    prompt_tokens_total=float(arrays[6, row]),
                    prefill_seconds_total=float(arrays[7, row]),
                    decode_tokens_total=float(arrays[8, row]),
                    decode_seconds_total=float(arrays[9, row]),
                    requests_total=float(arrays[10, row]),
                )
                for row, e in enumerate(self._endpoints)
            }
            snapshot = build_snapshot(
                self._endpoints, metrics, version=version, previous=self.fleet.snapshot, now=now
            )
            self.fleet.publish(snapshot, synced=bool(synced))
            self._version = version
            return True
        return False

    async def _run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(self.interval_s)

    async def start(self) -> None:
        self.poll()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._block.membership.release()
        del self._block
        self.shm.close()


class SharedInFlight(InFlight):
    """In-flight counts summed over every worker; this worker writes only its own row."""

    def __init__(self, name: str, workers: int, index: int, max_endpoints: int) -> None:
        super().__init__()
        self.shm = Mapped(name)
        self._rows: npt.NDArray[np.int64] = np.ndarray(
            (workers, max_endpoints), dtype=np.int64, buffer=self.shm.buf
        )
        self.index = index
        self.max_endpoints = max_endpoints

    @staticmethod
    def create(workers: int, max_endpoints: int) -> Mapped:
        """The zeroed block the workers attach to (the supervisor closes and unlinks it)."""
        return Mapped(size=8 * workers * max_endpoints)

    def counts_for(self, snapshot: FleetSnapshot) -> npt.NDArray[np.int64]:
        own = self._local_counts(snapshot)
        n = snapshot.size
        if n > self.max_endpoints:
            return own
        # Our row always mirrors our own counts in this snapshot's row order (cheap: n int64s),
        # so a membership change never leaves stale counts behind.
        self._rows[self.index, :n] = own
        self._rows[self.index, n:] = 0
        total: npt.NDArray[np.int64] = self._rows[:, :n].sum(axis=0)
        return total

    def add(self, snapshot: FleetSnapshot, address: str, delta: int) -> None:
        super().add(snapshot, address, delta)
        row = snapshot.index.get(address)
        if row is not None and row < self.max_endpoints:
            self._rows[self.index, row] = self.get(address)

    def close(self) -> None:
        del self._rows
        self.shm.close()


CollectorFactory = Callable[[FleetState], SharedFleetReader]
