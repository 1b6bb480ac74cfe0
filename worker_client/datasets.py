"""The data set cache: each candle file downloaded once per machine, checked, kept within a size.

Files are named by their sha256 (``<sha256>.sahc``). Several workers on one machine may share
the cache directory (``STRATEGY_WORKER_CACHE``): a download holds an OS lock on
``<sha256>.lock`` so that one process fetches while the others wait and then use its file;
bytes go to a private temporary file, renamed into place only after their size and sha256
check out, so no process ever reads half a file. A cached file is checked again (sha256) every
time a task process reads it; a corrupt one is deleted and fetched again, never used.

When the cache grows past its limit, the least recently used files not needed by this worker's
tasks are deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from .client import PortalClient
from .exceptions import DataError, Interrupted
from .store import try_lock

log = logging.getLogger(__name__)

SUFFIX = ".sahc"
SHA256_NAME = re.compile(r"[0-9a-f]{64}")
DOWNLOAD_ATTEMPTS = 3
DEFAULT_LIMIT_BYTES = 2 * 2**30
LOCK_POLL_SECONDS = 0.2
STALE_PART_SECONDS = 3600.0
RECENTLY_USED_SECONDS = 600.0  # never evicted: another worker may be about to read it


class DatasetCache:
    def __init__(self, directory: Path, *, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> None:
        self.directory = directory
        self.limit_bytes = limit_bytes

    def path(self, sha256: str) -> Path:
        """The cache file of a data set; the name comes from the portal, so it is checked:
        64 hex digits and nothing else can ever name a file here."""
        if not SHA256_NAME.fullmatch(sha256.lower()):
            raise DataError(f"the portal named a data set {sha256[:80]!r}, which is not a "
                            "sha256 (64 hex digits)")
        return self.directory / f"{sha256.lower()}{SUFFIX}"

    def held(self) -> set[str]:
        """sha256 of the data sets in the cache (reported to the portal, which prefers work on
        data a host already holds)."""
        try:
            return {p.stem for p in self.directory.glob(f"*{SUFFIX}") if len(p.stem) == 64}
        except OSError:
            return set()

    def fetch(self, client: PortalClient, *, sha256: str, url: str, size: int | None,
              should_stop: Callable[[], bool] = lambda: False) -> Path:
        """The cached file for ``sha256``, downloaded first if it is not there.

        Raises DataError when ``DOWNLOAD_ATTEMPTS`` downloads in a row fail their checks,
        ServerUnavailable when the portal cannot be reached, Interrupted on ``should_stop``.
        """
        path = self.path(sha256)
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._locked(sha256, should_stop):  # another worker may be fetching it
            if path.exists():
                _touch(path)
                return path
            self._remove_stale_parts()
            problem = ""
            for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
                log.info("downloading data set %s… (%s bytes)", sha256[:12],
                         f"{size:,}" if size else "?")
                try:
                    client.download(url, path, expected_sha256=sha256.lower(),
                                    expected_size=size or None, should_stop=should_stop)
                except DataError as exc:
                    problem = str(exc)
                    log.warning("download attempt %d: %s", attempt, exc)
                    continue
                return path
        raise DataError(f"data set {sha256[:12]}… could not be fetched intact after "
                        f"{DOWNLOAD_ATTEMPTS} attempts: {problem}")

    def discard(self, sha256: str) -> None:
        """Delete a cached file that failed its checks (under the lock: never mid-download)."""
        path = self.path(sha256)
        with self._locked(sha256, lambda: False):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not delete %s: %s", path, exc)

    @contextlib.contextmanager
    def _locked(self, sha256: str, should_stop: Callable[[], bool]) -> Iterator[None]:
        with open(self.path(sha256).with_suffix(".lock"), "a+b") as lock:
            while not try_lock(lock):
                if should_stop():
                    raise Interrupted("stopped while another worker downloads the data set")
                time.sleep(LOCK_POLL_SECONDS)
            yield  # closing the file releases the lock

    def _remove_stale_parts(self) -> None:
        """Partial downloads a killed process left behind (a live one touches its file)."""
        for part in self.directory.glob(".*.part"):
            with contextlib.suppress(OSError):
                if time.time() - part.stat().st_mtime > STALE_PART_SECONDS:
                    part.unlink()

    def evict(self, *, keep: Collection[str] = ()) -> list[str]:
        """Delete least recently used files until the cache fits its limit; returns their sha."""
        keep = {k.lower() for k in keep}
        try:
            files = [(p.stat().st_mtime, p.stat().st_size, p)
                     for p in self.directory.glob(f"*{SUFFIX}")]
        except OSError:
            return []
        total = sum(size for _, size, _ in files)
        removed = []
        for mtime, size, path in sorted(files):
            if total <= self.limit_bytes:
                break
            if path.stem in keep or time.time() - mtime < RECENTLY_USED_SECONDS:
                continue  # ours, or just fetched or used by another worker sharing the cache
            try:
                path.unlink()  # a process reading it keeps its open copy (POSIX)
            except OSError:  # e.g. open on Windows: try again next time
                continue
            total -= size
            removed.append(path.stem)
            log.info("data set %s… removed from the cache (over %s MB)", path.stem[:12],
                     f"{self.limit_bytes // 2**20:,}")
        return removed


def _touch(path: Path) -> None:
    """Mark a file as used now: the eviction order is by modification time."""
    with contextlib.suppress(OSError):
        os.utime(path, (time.time(), time.time()))
