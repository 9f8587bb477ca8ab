"""A memory-limited cgroup (v1 memory controller) for processes a test starts, as a container
manager (YARN, Kubernetes) would give an executor: over the limit, the kernel's OOM killer ends a
process of the group and counts it in ``memory.oom_control``'s ``oom_kill``.

Needs root and the v1 controller mounted at ``/sys/fs/cgroup/memory`` (both true on these
machines; a test that uses it fails, never skips, where they are missing).
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/memory")


class MemoryCgroup:
    """One group: its limit, its counters, and a command prefix that starts a process in it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    @property
    def limit(self) -> int:
        return int(self._read("memory.limit_in_bytes"))

    @property
    def max_usage(self) -> int:
        """The group's peak charge: process memory plus the page cache it touched."""
        return int(self._read("memory.max_usage_in_bytes"))

    @property
    def oom_kills(self) -> int:
        """Processes of the group the OOM killer ended."""
        fields = dict(line.split() for line in self._read("memory.oom_control").splitlines())
        return int(fields["oom_kill"])

    def stat(self, name: str) -> int:
        """A counter of ``memory.stat`` (e.g. ``total_rss``, ``total_cache``)."""
        fields = dict(line.split() for line in self._read("memory.stat").splitlines())
        return int(fields[name])

    def pids(self) -> list[int]:
        return [int(p) for p in self._read("cgroup.procs").split()]

    def command(self, cmd: list[str]) -> list[str]:
        """``cmd`` run inside the group: a shell joins it, then becomes ``cmd`` (so ``cmd`` and
        every process it starts are charged to the group from their first byte)."""
        join = f"echo $$ > {shlex.quote(str(self.path / 'cgroup.procs'))} && exec "
        return ["/bin/sh", "-c", join + " ".join(shlex.quote(c) for c in cmd)]


@contextmanager
def memory_cgroup(name: str, limit_bytes: int) -> Iterator[MemoryCgroup]:
    """A new group limited to ``limit_bytes`` (no swap here); removed at exit once the
    processes started in it are gone (the caller stops them)."""
    path = ROOT / f"{name}-{os.getpid()}"
    path.mkdir()
    try:
        (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        yield MemoryCgroup(path)
    finally:
        deadline = time.monotonic() + 30
        while True:
            try:
                path.rmdir()
                break
            except OSError:  # still has processes (exiting) or charged pages being released
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
