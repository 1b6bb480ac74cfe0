"""Container health checks (Dockerfile HEALTHCHECK, deploy/compose.yaml).

    python deploy/healthcheck.py portal     # /healthz answers 200 (the database answers)
    python deploy/healthcheck.py qcluster   # a cluster of this host reports to the broker

Exit status 0 when healthy, 1 otherwise, with one line saying why.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def portal() -> str | None:
    """None when healthy, else the reason."""
    bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000").split(",")[0].strip()
    host, _, port = bind.rpartition(":")
    if host in ("", "0.0.0.0", "[::]"):
        host = "127.0.0.1"
    # Django answers 400 to a Host it does not serve: send the first allowed one.
    allowed = [name.strip().lstrip(".") for name in
               os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",")
               if name.strip() and name.strip() != "*"]
    headers = {"Host": allowed[0]} if allowed else {}
    request = urllib.request.Request(f"http://{host}:{port}/healthz", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            if response.status != 200:
                return f"/healthz answered {response.status}"
    except urllib.error.HTTPError as exc:
        return f"/healthz answered {exc.code}"
    except OSError as exc:
        return f"/healthz unreachable: {exc}"
    return None


def qcluster() -> str | None:
    sys.path.insert(0, str(PROJECT_DIR))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from django_q.conf import Conf
    from django_q.status import Stat

    here = socket.gethostname()
    # A running cluster saves its status every few seconds, with a 3-second expiry.
    running = [stat for stat in Stat.get_all()
               if stat.host == here and stat.status != Conf.STOPPED]
    return None if running else f"no running cluster on {here} reports to the broker"


def main(argv: list[str]) -> int:
    checks = {"portal": portal, "qcluster": qcluster}
    if len(argv) != 1 or argv[0] not in checks:
        print(f"usage: healthcheck.py {'|'.join(checks)}", file=sys.stderr)
        return 2
    problem = checks[argv[0]]()
    if problem:
        print(f"unhealthy: {problem}")
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
