"""Where the worker keeps its state, and the attached host's configuration.

Three directories, at each platform's standard place (what ``platformdirs`` would pick):

* Windows: config (the host token) in ``%APPDATA%\\strategy-worker``; data (tasks, results
  waiting to be reported) in ``%LOCALAPPDATA%\\strategy-worker``; cache (data sets) in
  ``%LOCALAPPDATA%\\strategy-worker\\Cache``.
* macOS: config and data in ``~/Library/Application Support/strategy-worker``; cache in
  ``~/Library/Caches/strategy-worker``.
* elsewhere (XDG): ``$XDG_CONFIG_HOME`` (``~/.config``), ``$XDG_DATA_HOME``
  (``~/.local/share``) and ``$XDG_CACHE_HOME`` (``~/.cache``), each ``/strategy-worker``.

``STRATEGY_WORKER_HOME`` puts all three under one directory (``config.json``, ``data/``,
``cache/``): one per test or per worker process on a shared machine. ``STRATEGY_WORKER_CACHE``
then names a data set cache they share (safe: downloads are locked and atomic).

The configuration file holds the server URL and the host token, never the account key; it is
written atomically (a crash leaves the old file or the new one, never half of one) and
readable by its owner only where the platform supports permissions.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .datafile import fsync_directory
from .exceptions import ConfigError, NotAttachedError

APP_NAME = "strategy-worker"
HOME_ENV = "STRATEGY_WORKER_HOME"
CACHE_ENV = "STRATEGY_WORKER_CACHE"
CONFIG_FILE = "config.json"
CONFIG_FORMAT = 1


@dataclass(frozen=True)
class WorkerPaths:
    config_dir: Path
    data_dir: Path  # tasks received and results waiting for the server's acknowledgement
    cache_dir: Path  # downloaded data sets

    @property
    def config_file(self) -> Path:
        return self.config_dir / CONFIG_FILE

    @property
    def tasks_dir(self) -> Path:
        return self.data_dir / "tasks"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def datasets_dir(self) -> Path:
        return self.cache_dir / "datasets"

    @classmethod
    def default(cls, environ: Mapping[str, str] | None = None,
                platform: str | None = None) -> WorkerPaths:
        """The standard places for this platform, or under ``$STRATEGY_WORKER_HOME``."""
        env = os.environ if environ is None else environ
        platform = sys.platform if platform is None else platform
        paths = cls._platform_default(env, platform)
        cache_override = env.get(CACHE_ENV, "").strip()
        if cache_override:
            paths = replace(paths, cache_dir=Path(cache_override).expanduser())
        return paths

    @classmethod
    def _platform_default(cls, env: Mapping[str, str], platform: str) -> WorkerPaths:
        home_override = env.get(HOME_ENV, "").strip()
        if home_override:
            root = Path(home_override).expanduser()
            return cls(config_dir=root, data_dir=root / "data", cache_dir=root / "cache")
        home = Path(env.get("USERPROFILE" if platform == "win32" else "HOME", "")
                    or Path.home())
        if platform == "win32":
            roaming = Path(env.get("APPDATA") or home / "AppData" / "Roaming")
            local = Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local")
            return cls(config_dir=roaming / APP_NAME, data_dir=local / APP_NAME,
                       cache_dir=local / APP_NAME / "Cache")
        if platform == "darwin":
            support = home / "Library" / "Application Support" / APP_NAME
            return cls(config_dir=support, data_dir=support,
                       cache_dir=home / "Library" / "Caches" / APP_NAME)

        def xdg(name: str, fallback: Path) -> Path:
            value = env.get(name, "").strip()
            # The XDG spec says relative paths are invalid and must be ignored.
            return Path(value) if value and Path(value).is_absolute() else fallback

        return cls(config_dir=xdg("XDG_CONFIG_HOME", home / ".config") / APP_NAME,
                   data_dir=xdg("XDG_DATA_HOME", home / ".local" / "share") / APP_NAME,
                   cache_dir=xdg("XDG_CACHE_HOME", home / ".cache") / APP_NAME)

    def ensure(self) -> None:
        """Create the directories (owner-only where permissions exist)."""
        for directory in (self.config_dir, self.tasks_dir, self.results_dir, self.datasets_dir):
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise ConfigError(f"cannot create {directory}: {exc.strerror}; set "
                                  f"{HOME_ENV} to a writable directory") from None


@dataclass(frozen=True)
class HostConfig:
    """What ``attach`` stores: enough to talk to the portal as this host."""

    server: str
    host_id: int
    token: str
    name: str

    def to_dict(self) -> dict[str, Any]:
        return {"format": CONFIG_FORMAT, **asdict(self)}


def write_atomic(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole.

    The bytes go to a temporary file in the same directory, are flushed to disk, and the file
    is renamed over ``path`` (atomic on POSIX and Windows). ``private`` restricts it to its
    owner (a no-op where chmod is, e.g. Windows).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if private:
                os.chmod(tmp_name, 0o600)  # mkstemp already uses 0600; say so explicitly
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _replace(tmp_name, path)
        fsync_directory(path.parent)  # the rename too must survive a power cut
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _replace(source: str, target: Path, attempts: int = 5) -> None:
    """``os.replace``, retried briefly: on Windows it fails while another process (a virus
    scanner, an indexer) holds the target open for a moment."""
    for attempt in range(attempts):
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if os.name != "nt" or attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt)


def write_json_atomic(path: Path, value: Any, *, private: bool = False) -> None:
    text = json.dumps(value, indent=1, sort_keys=True, allow_nan=False)
    write_atomic(path, text.encode(), private=private)


def save_host_config(paths: WorkerPaths, config: HostConfig) -> Path:
    paths.ensure()
    try:
        write_json_atomic(paths.config_file, config.to_dict(), private=True)
    except OSError as exc:
        raise ConfigError(f"cannot write {paths.config_file}: {exc.strerror}") from None
    return paths.config_file


def load_host_config(paths: WorkerPaths) -> HostConfig:
    path = paths.config_file
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotAttachedError(
            f"this computer is not attached yet ({path} does not exist): run "
            "`strategy-worker attach --server URL --account-key KEY` first") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path} ({exc}); attach again to rewrite it") from None
    try:
        if raw.get("format") != CONFIG_FORMAT:
            raise ValueError(f"format {raw.get('format')!r}")
        return HostConfig(server=str(raw["server"]), host_id=int(raw["host_id"]),
                          token=str(raw["token"]), name=str(raw["name"]))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path} is not a configuration this client understands ({exc}); "
                          "attach again to rewrite it") from None
