"""The worker client wheels in ``settings.WORKER_WHEEL_DIR`` (built by ``make wheel``).

Only file names that match the wheel pattern *and* are listed in that directory are ever
served: a requested name is looked up among the directory's entries, never joined to a path.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from django.conf import settings

import worker_client

WHEEL_NAME = re.compile(r"^strategy_worker-(?P<version>[0-9][0-9A-Za-z.+!_]*)-py3-none-any\.whl$")


@dataclass(frozen=True)
class Wheel:
    path: Path
    version: str
    size_bytes: int
    sha256: str

    @property
    def filename(self) -> str:
        return self.path.name


@lru_cache(maxsize=16)
def _sha256(path: Path, size_bytes: int, mtime_ns: int) -> str:
    # Keyed by size and mtime as well: a rebuilt wheel of the same name is hashed again.
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _wheel(path: Path, version: str) -> Wheel:
    stat = path.stat()
    return Wheel(path=path, version=version, size_bytes=stat.st_size,
                 sha256=_sha256(path, stat.st_size, stat.st_mtime_ns))


def _wheel_files() -> dict[str, tuple[Path, str]]:
    directory = Path(settings.WORKER_WHEEL_DIR)
    if not directory.is_dir():
        return {}
    found = {}
    for entry in directory.iterdir():
        match = WHEEL_NAME.match(entry.name)
        if match and entry.is_file():
            found[entry.name] = (entry, match["version"])
    return found


def wheel_current() -> Wheel | None:
    """The wheel of this portal's own client version, or None (never an older or newer one:
    a client the portal might refuse, or that speaks another protocol)."""
    for path, version in _wheel_files().values():
        if version == worker_client.__version__:
            return _wheel(path, version)
    return None


def wheel_path(filename: str) -> Path | None:
    """The path of the wheel with exactly that file name in the wheel directory, or None."""
    if not WHEEL_NAME.match(filename):
        return None
    found = _wheel_files().get(filename)
    return found[0] if found else None
