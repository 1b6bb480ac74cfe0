"""The production setup, run for real: ``scripts/prod_smoke.py`` as a test.

gunicorn with ``deploy/gunicorn.conf.py`` (three worker processes) and two ``manage.py qcluster``
processes on one Redis queue, against a throwaway PostgreSQL database; two hosts running the
real worker client mine a tiny campaign to the end; then the books are checked (every work unit
validated and assimilated once, one credit grant per valid result, no failed or left-over task,
both clusters and several portal processes at work). About 40 s.

PostgreSQL: ``SMOKE_DATABASE_URL`` or postgres://postgres@127.0.0.1:5432/postgres (a role that
may create databases), whatever ``DATABASE_URL`` the rest of the suite uses. Redis:
``SMOKE_REDIS_URL`` or redis://127.0.0.1:6379/5; when nothing answers there and ``redis-server``
is installed, the test starts a private one on a free port and stops it afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[2]
DEFAULT_DATABASE = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/5"
pytestmark = pytest.mark.slow


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0),
                                      timeout=2):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:
    url = os.environ.get("SMOKE_REDIS_URL", DEFAULT_REDIS)
    if _answers(url):
        yield url
        return
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip(f"Redis is not reachable at {url} and redis-server is not installed "
                    "(apt-get install redis-server)")
    port = _free_port()
    process = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"could not start a private redis-server on port {port}")
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def test_gunicorn_and_two_clusters_mine_a_campaign_and_count_everything_once(redis_url):
    database = os.environ.get("SMOKE_DATABASE_URL", DEFAULT_DATABASE)
    if not _answers(database):
        pytest.skip(f"PostgreSQL is not reachable at {database}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run(
        [sys.executable, "scripts/prod_smoke.py", "--database", database, "--redis", redis_url],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=420)
    output = done.stdout + done.stderr
    if done.returncode == 2:
        pytest.skip(output.strip().splitlines()[-1])
    assert done.returncode == 0, output
    assert "FAIL" not in output, output
    assert ", 0 failed in" in output, output
