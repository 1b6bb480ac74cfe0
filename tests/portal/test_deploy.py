"""Production configuration: the documented environment passes `check --deploy`, the settings
are HTTPS-only by default, and the deploy files agree with the code.

The settings are read in fresh processes (as gunicorn and qcluster read them): under pytest
they are the test settings, which speak plain HTTP.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.urls import reverse

PROJECT_DIR = Path(__file__).resolve().parents[2]
DEPLOY_DIR = PROJECT_DIR / "deploy"
ENV_EXAMPLE = DEPLOY_DIR / "strategy.env.example"
LOCAL_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"


def documented_environment() -> dict[str, str]:
    """deploy/strategy.env.example as systemd's EnvironmentFile= reads it."""
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


def _postgres_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return True
    except OSError:
        return False


def production_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The documented environment, with a real secret and paths of this test's own."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("DJANGO_", "PYTEST_", "DATABASE_URL", "REDIS_URL"))}
    env = {**base, **documented_environment()}
    env.update({
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DATABASE_URL": LOCAL_POSTGRES if _postgres_answers()
        else f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "STATIC_ROOT": str(tmp_path / "static"),
    })
    env.update(overrides)
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "manage.py", *args], env)


SETTINGS_PROBE = """
import json
from django.conf import settings as s
print(json.dumps({name: getattr(s, name, None) for name in (
    "DEBUG", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE",
    "SECURE_PROXY_SSL_HEADER", "CSRF_TRUSTED_ORIGINS", "X_FRAME_OPTIONS",
    "SECURE_CONTENT_TYPE_NOSNIFF", "SECURE_REFERRER_POLICY", "SECURE_REDIRECT_EXEMPT",
    "SILENCED_SYSTEM_CHECKS")} | {
    "static_storage": s.STORAGES["staticfiles"]["BACKEND"],
    "use_finders": s.WHITENOISE_USE_FINDERS,
    "cache": s.CACHES["default"]["BACKEND"],
    "broker": "redis" if "redis" in s.Q_CLUSTER else "orm",
}))
"""


def read_settings(env: dict[str, str]) -> dict:
    done = manage("shell", "-c", SETTINGS_PROBE, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- check --deploy ------------------------------------------------------------------------------


def test_check_deploy_is_clean_with_the_documented_environment(tmp_path):
    env = production_env(tmp_path)

    done = manage("check", "--deploy", "--database", "default", "--fail-level", "WARNING",
                  env=env)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues (0 silenced)." in done.stdout


def test_check_deploy_is_clean_with_the_bare_minimum_too(tmp_path):
    """Secret, hosts, database: the HTTPS-only defaults need no variable of their own."""
    env = {k: v for k, v in production_env(tmp_path).items()
           if not k.startswith(("DJANGO_SECURE_", "DJANGO_CSRF_", "REDIS_URL"))}

    done = manage("check", "--deploy", "--fail-level", "WARNING", env=env)

    assert done.returncode == 0, done.stdout + done.stderr


def test_turning_https_off_is_reported_by_check_deploy(tmp_path):
    """The switches work, and nothing silences the warnings they cause."""
    env = production_env(tmp_path, DJANGO_SECURE_SSL_REDIRECT="0", DJANGO_SECURE_COOKIES="0",
                         DJANGO_SECURE_HSTS_SECONDS="0")

    done = manage("check", "--deploy", env=env)

    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in done.stderr + done.stdout, warning


def test_debug_mode_still_starts_without_a_secret(tmp_path):
    """`make demo` and development: DEBUG on, nothing else needed, plain HTTP."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJANGO_", "PYTEST_", "DATABASE_URL", "REDIS_URL"))}
    env.update(DJANGO_DEBUG="1", DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")

    values = read_settings(env)

    assert values["DEBUG"] is True
    assert values["SECURE_SSL_REDIRECT"] is False and values["SECURE_HSTS_SECONDS"] == 0
    assert values["SESSION_COOKIE_SECURE"] is False
    assert values["static_storage"].endswith(".StaticFilesStorage") and values["use_finders"]


# --- the production settings -------------------------------------------------------------------


def test_production_defaults_are_https_only_and_static_files_hashed(tmp_path):
    values = read_settings(production_env(tmp_path))

    assert values["DEBUG"] is False
    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SECURE_HSTS_SECONDS"] == 31_536_000
    assert values["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert values["SECURE_HSTS_PRELOAD"] is True
    assert values["SESSION_COOKIE_SECURE"] is True and values["CSRF_COOKIE_SECURE"] is True
    assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert values["CSRF_TRUSTED_ORIGINS"] == ["https://strategy.example.org"]
    assert values["X_FRAME_OPTIONS"] == "DENY"
    assert values["SECURE_CONTENT_TYPE_NOSNIFF"] is True
    assert values["SECURE_REFERRER_POLICY"] == "same-origin"
    assert values["SILENCED_SYSTEM_CHECKS"] == []
    assert values["static_storage"] == "whitenoise.storage.CompressedManifestStaticFilesStorage"
    assert values["use_finders"] is False
    # REDIS_URL is set in the documented environment: Redis is cache and broker.
    assert values["cache"] == "django.core.cache.backends.redis.RedisCache"
    assert values["broker"] == "redis"


def test_the_proxy_header_is_trusted_only_when_asked(tmp_path):
    env = production_env(tmp_path, DJANGO_SECURE_PROXY_SSL_HEADER="0")

    assert read_settings(env)["SECURE_PROXY_SSL_HEADER"] is None


@pytest.mark.parametrize(("name", "value", "message"), [
    ("DJANGO_CSRF_TRUSTED_ORIGINS", "strategy.example.org", "needs its scheme"),
    ("DJANGO_SECURE_HSTS_SECONDS", "a year", "not an integer"),
    ("DJANGO_SECURE_SSL_REDIRECT", "sometimes", "not a boolean"),
    ("DJANGO_LOG_LEVEL", "LOUD", "DJANGO_LOG_LEVEL='LOUD'"),
    ("DAEMON_RUNNER", "cron", "DAEMON_RUNNER='cron'"),
])
def test_a_bad_value_stops_the_process_naming_the_variable(tmp_path, name, value, message):
    done = manage("check", env=production_env(tmp_path, **{name: value}))

    assert done.returncode != 0
    assert name in done.stderr and message in done.stderr


def test_logs_go_to_stdout_one_line_each_with_level_process_and_logger(tmp_path):
    code = ("import logging; logging.getLogger('apps.workunits.validator')"
            ".warning('result 7 rejected')")

    done = manage("shell", "-c", code, env=production_env(tmp_path))

    assert done.returncode == 0, done.stderr
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING \[\d+\] "
                     r"apps\.workunits\.validator: result 7 rejected$", done.stdout, re.M), \
        done.stdout


def test_collectstatic_writes_hashed_compressed_files_and_a_manifest(tmp_path):
    env = production_env(tmp_path)

    done = manage("collectstatic", "--noinput", env=env)

    assert done.returncode == 0, done.stderr
    static = tmp_path / "static"
    manifest = json.loads((static / "staticfiles.json").read_text())["paths"]
    hashed = manifest["css/site.css"]
    assert re.fullmatch(r"css/site\.[0-9a-f]{12}\.css", hashed)
    assert (static / hashed).is_file() and (static / f"{hashed}.gz").is_file()


# --- HTTPS behaviour (in this process, the production values switched on) ---------------------


@pytest.fixture
def https_only(settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 31_536_000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = True


@pytest.mark.django_db
def test_plain_http_is_redirected_to_https_but_not_the_health_check(client, https_only):
    page = client.get(reverse("home"))
    health = client.get(reverse("healthz"))

    assert page.status_code == 301 and page["Location"].startswith("https://")
    assert health.status_code == 200  # a container runtime or load balancer speaks plain HTTP


@pytest.mark.django_db
def test_behind_the_tls_proxy_pages_carry_hsts_and_the_other_headers(client, https_only):
    response = client.get(reverse("home"), headers={"X-Forwarded-Proto": "https"})

    assert response.status_code == 200
    assert response["Strict-Transport-Security"] == (
        "max-age=31536000; includeSubDomains; preload")
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"


# --- the deploy files ----------------------------------------------------------------------------


def test_every_documented_variable_is_read_somewhere():
    readers = "\n".join(path.read_text() for path in (
        PROJECT_DIR / "portal" / "settings.py", DEPLOY_DIR / "gunicorn.conf.py",
        DEPLOY_DIR / "compose.yaml"))

    unread = [name for name in documented_environment() if name not in readers]

    assert not unread


def test_gunicorn_config_sizes_workers_by_cpu_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv("GUNICORN_WORKERS", raising=False)
    config = runpy.run_path(str(DEPLOY_DIR / "gunicorn.conf.py"))
    assert config["workers"] == 2 * len(os.sched_getaffinity(0)) + 1
    assert config["wsgi_app"] == "portal.wsgi:application"
    assert config["timeout"] == 30 and config["accesslog"] == "-"
    assert config["control_socket_disable"] is True

    monkeypatch.setenv("GUNICORN_WORKERS", "7")
    monkeypatch.setenv("GUNICORN_BIND", "0.0.0.0:9000,unix:/run/strategy.sock")
    config = runpy.run_path(str(DEPLOY_DIR / "gunicorn.conf.py"))
    assert config["workers"] == 7
    assert config["bind"] == ["0.0.0.0:9000", "unix:/run/strategy.sock"]


def test_gunicorn_accepts_the_config_and_loads_the_app(tmp_path):
    env = production_env(tmp_path, GUNICORN_BIND="127.0.0.1:0")

    done = run([sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py",
                "--check-config"], env)

    assert done.returncode == 0, done.stdout + done.stderr


def test_the_compose_file_runs_migrate_once_then_portal_and_scalable_clusters():
    compose = yaml.safe_load((DEPLOY_DIR / "compose.yaml").read_text())
    services = compose["services"]

    assert set(services) == {"postgres", "redis", "migrate", "portal", "qcluster"}
    for name in ("portal", "qcluster"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully")
        assert services[name]["healthcheck"]["test"] == [
            "CMD", "python", "deploy/healthcheck.py", name]
    assert services["qcluster"]["deploy"]["replicas"] >= 2
    assert "container_name" not in services["qcluster"]  # --scale needs unnamed containers
    assert services["portal"]["command"] == ["gunicorn", "-c", "deploy/gunicorn.conf.py"]
    assert services["migrate"]["restart"] == "no"


def test_docker_compose_validates_the_file(tmp_path):
    tool = ([shutil.which("docker"), "compose"] if shutil.which("docker") and run(
        ["docker", "compose", "version"], dict(os.environ)).returncode == 0
        else [shutil.which("docker-compose")] if shutil.which("docker-compose") else None)
    if tool is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    shutil.copy(DEPLOY_DIR / "compose.yaml", deploy)
    shutil.copy(PROJECT_DIR / "Dockerfile", tmp_path)
    (deploy / ".env").write_text(ENV_EXAMPLE.read_text().replace(
        "DJANGO_SECRET_KEY=\n", f"DJANGO_SECRET_KEY={secrets.token_urlsafe(50)}\n"))

    done = subprocess.run([*tool, "-f", "compose.yaml", "config", "--quiet"], cwd=deploy,
                          capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 0, done.stdout + done.stderr
