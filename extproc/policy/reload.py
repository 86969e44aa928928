"""Hot reload: watch the policy path, build a new compiled policy, swap one reference.

In-flight requests keep the policy object they started with (they hold a reference); a bad
file keeps the last good policy and records why, for logs, metrics and the health endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from extproc.policy.compile import CompiledPolicy, PolicyError, load_policy, policy_files

log = logging.getLogger(__name__)


def _signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a file (or a ConfigMap symlink swap) changes: names, mtimes, sizes."""
    found = []
    for file in policy_files(path) if path.exists() else []:
        try:
            stat = file.stat()  # follows ConfigMap's ..data symlinks
        except OSError:
            continue
        found.append((str(file), stat.st_mtime_ns, stat.st_size))
    return tuple(found)


class PolicyReloader:
    def __init__(self, path: str | Path, interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.current: CompiledPolicy = load_policy(self.path)  # a bad file at start-up is fatal
        self.last_error: str | None = None
        self.reloads_ok = 0
        self.reloads_failed = 0
        self._signature = _signature(self.path)
        self._task: asyncio.Task[None] | None = None
        self.on_change: list[Callable[[CompiledPolicy], None]] = []
        self.on_error: list[Callable[[str], None]] = []

    def get(self) -> CompiledPolicy:
        return self.current

    async def check_once(self) -> bool:
        """Reload if the files changed. True when a new policy was swapped in."""
        signature = await asyncio.to_thread(_signature, self.path)
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            policy = await asyncio.to_thread(load_policy, self.path)
        except PolicyError as error:
            self.reloads_failed += 1
            self.last_error = str(error)
            log.error("policy reload failed; keeping version %s:\n%s", self.current.version, error)
            for report in self.on_error:
                report(self.last_error)
            return False
        self.current = policy
        self.reloads_ok += 1
        self.last_error = None
        log.warning("policy reloaded: version %s", policy.version)
        for listener in self.on_change:
            listener(policy)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_once()
            except Exception:  # a watcher bug must never take the server down
                log.exception("policy watcher failed")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
