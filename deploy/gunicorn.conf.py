"""gunicorn settings for the portal: ``gunicorn -c deploy/gunicorn.conf.py``.

Read by gunicorn at start (from any working directory); each value can be changed with the
environment variable named beside it, so the systemd unit, the container and a shell use the
same file. ``kill -HUP <master>`` reloads code gracefully (new workers start, old ones finish
their requests); ``kill -TERM <master>`` stops after at most ``graceful_timeout`` seconds.
"""

import os
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SystemExit(f"{name}={value} is too small: the minimum is {minimum}")
    return value


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what a container or CPUAffinity= leaves us
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


wsgi_app = "portal.wsgi:application"
chdir = str(PROJECT_DIR)
proc_name = "strategy-portal"

bind = [address.strip() for address in
        os.environ.get("GUNICORN_BIND", "127.0.0.1:8000").split(",") if address.strip()]
# Sync workers: one request at a time each, one database connection each (kept for
# DB_CONN_MAX_AGE seconds). gunicorn's rule of thumb, 2 per core + 1, keeps the cores busy
# while some workers wait on PostgreSQL. Mind PostgreSQL's max_connections when raising it:
# every worker of every portal process holds one.
workers = _int("GUNICORN_WORKERS", 2 * _cores() + 1)
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
threads = _int("GUNICORN_THREADS", 1)  # > 1 only with worker_class "gthread"

# A request that takes longer than this is killed with its worker (the scheduler answers in
# milliseconds; the slowest page is a leaderboard).
timeout = _int("GUNICORN_TIMEOUT", 30)
# On TERM or HUP, workers get this long to finish the requests in hand.
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
# Idle keep-alive connections from the proxy in front: above its own idle timeout is wasted.
keepalive = _int("GUNICORN_KEEPALIVE", 5)
# Recycle each worker after about this many requests (jittered so they do not all restart at
# once): bounds any slow leak. 0 turns it off.
max_requests = _int("GUNICORN_MAX_REQUESTS", 5000, minimum=0)
max_requests_jitter = max_requests // 10

# The proxy in front (nginx, a load balancer) may tell us the client's scheme with
# X-Forwarded-Proto; only trust it from these addresses. Django itself trusts it only when
# DJANGO_SECURE_PROXY_SSL_HEADER=1.
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Logs on stdout/stderr, for the journal or `docker compose logs`. The access line carries the
# worker's pid and the time taken in milliseconds.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-") or None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
access_log_format = ('%(h)s "%(r)s" %(s)s %(B)s %(M)sms pid=%(p)s '
                     'fwd="%({x-forwarded-for}i)s" ua="%(a)s"')

# Workers' heartbeat files: in memory, not on a container's overlay disk.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# gunicorn >= 25.1 opens a control socket under $HOME by default; several portals of one user
# would share its path, and a service's home may be read-only. On only when asked for.
_control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "").strip()
if _control_socket:
    control_socket = _control_socket
else:
    control_socket_disable = True
