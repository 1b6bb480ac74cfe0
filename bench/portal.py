"""The portal side of the load benchmarks: a throwaway PostgreSQL database, the real portal
under gunicorn on loopback, and the CPU each process used (read from ``/proc``).

Used by ``bench/scheduler.py`` and ``bench/load.py``; only loopback addresses are ever used.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG = "postgres://postgres@127.0.0.1:5432/postgres"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOG_DIR = ROOT / "var" / "bench"


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def admin_connection(url: str) -> Any:
    import psycopg

    parts = urlsplit(url)
    return psycopg.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 5432,
                           user=parts.username or "postgres", password=parts.password,
                           dbname=parts.path.lstrip("/") or "postgres", autocommit=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def portal_env(database_url: str, name: str, **extra: str) -> dict[str, str]:
    """The production settings (DEBUG off, secret key, allowed hosts) on loopback.

    Plain HTTP, as behind a proxy that terminates TLS: the HTTPS redirect is off.
    """
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings",
           "DATABASE_URL": database_url, "DJANGO_DEBUG": "0",
           "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
           "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
           "DJANGO_SECURE_SSL_REDIRECT": "0",
           "MEDIA_ROOT": str(LOG_DIR / f"{name}-media"), "PYTHONUNBUFFERED": "1", **extra}
    env.pop("PYTEST_VERSION", None)  # never the test settings
    return env


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL)


class ThrowawayDatabase:
    """``CREATE DATABASE`` on enter, ``DROP DATABASE … WITH (FORCE)`` on exit."""

    def __init__(self, server_url: str, prefix: str) -> None:
        if urlsplit(server_url).hostname not in LOOPBACK:
            raise SystemExit("the bench runs on loopback only: give a 127.0.0.1 PostgreSQL URL")
        self.server_url = server_url
        self.name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
        self.url = with_database(server_url, self.name)
        self.keep = False

    def __enter__(self) -> ThrowawayDatabase:
        self._admin = admin_connection(self.server_url)
        self._admin.execute(f'CREATE DATABASE "{self.name}"')
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.keep:
            self._admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            media = LOG_DIR / f"{self.name}-media"
            if media.exists():
                import shutil

                shutil.rmtree(media, ignore_errors=True)
        self._admin.close()


def start_gunicorn(env: dict[str, str], port: int, *, workers: int, threads: int = 1,
                   log_name: str = "gunicorn.log") -> subprocess.Popen[bytes]:
    """The portal as production runs it; ``threads`` > 1 selects the gthread worker (which
    keeps connections alive), else the sync worker."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    kind = ["-k", "gthread", "--threads", str(threads)] if threads > 1 else ["-k", "sync"]
    with open(LOG_DIR / log_name, "wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "portal.wsgi", "-w", str(workers), *kind,
             "-b", f"127.0.0.1:{port}", "--backlog", "4096", "--log-level", "warning"],
            env=env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited with {process.returncode}; see {LOG_DIR}")
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"the portal did not answer {url}healthz within {timeout:.0f} s")


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """One SIGTERM to the process (gunicorn and qcluster stop their children themselves);
    SIGKILL to its session only if it does not stop in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


# --- CPU accounting (Linux /proc) --------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants now alive."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """User + system CPU seconds of each process (processes that are gone are left out)."""
    seconds = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[pid] = (int(fields[11]) + int(fields[12])) / _TICKS
    return seconds


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return (total - idle) / _TICKS, total / _TICKS
