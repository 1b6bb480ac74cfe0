"""Settings for the Strategy@Home portal, read from the environment (12-factor).

Every knob is an environment variable; a bad value stops the process at import with a message
naming the variable, rather than running with a surprise. Development needs nothing but
`DJANGO_DEBUG=1`; production needs at least `DJANGO_SECRET_KEY`, `DJANGO_ALLOWED_HOSTS` and
`DATABASE_URL`, and then serves HTTPS only (redirect, HSTS, secure cookies) unless told
otherwise; `deploy/strategy.env.example` is the documented production environment, and
`manage.py check --deploy` is clean with it.
"""

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"  # local state (SQLite file, media, collected static); not in git

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _env(name: str) -> str | None:
    """The variable's value, or None when it is unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def env_bool(name: str, default: bool) -> bool:
    value = _env(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name}={value!r} is not a boolean: use one of 1/0, true/false, yes/no, on/off."
    )


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = _env(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is too small: the minimum is {minimum}.")
    return number


def env_list(name: str, default: Sequence[str] = ()) -> list[str]:
    """A comma-separated list; blanks around items and empty items are dropped."""
    value = _env(name)
    if value is None:
        return list(default)
    items = [item.strip() for item in value.split(",") if item.strip()]
    for item in items:
        if any(char.isspace() for char in item):
            raise ImproperlyConfigured(
                f"{name}={value!r}: item {item!r} contains whitespace; separate items with commas."
            )
    return items


DEBUG = env_bool("DJANGO_DEBUG", default=False)
# pytest sets PYTEST_VERSION for the length of its session; `manage.py test` is the other runner.
TESTING = "PYTEST_VERSION" in os.environ or sys.argv[1:2] == ["test"]

SECRET_KEY = _env("DJANGO_SECRET_KEY")
if SECRET_KEY is None:
    if not (DEBUG or TESTING):
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it to a long random string, e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`, "
            "or set DJANGO_DEBUG=1 for local development."
        )
    # The "django-insecure-" prefix makes `manage.py check --deploy` flag it.
    SECRET_KEY = "django-insecure-strategy-at-home-development-only"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS")

# --- HTTPS and browser security -----------------------------------------------------------------
# In production (DEBUG off, not under a test runner) the site is HTTPS only by default; tests and
# `make demo` speak plain HTTP on loopback. Each default can be overridden by its variable.
_HTTPS_ONLY = not (DEBUG or TESTING)
# Behind a proxy that terminates TLS (nginx, a load balancer, Caddy): trust its
# X-Forwarded-Proto header, which the proxy must set and must strip from clients' requests.
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", default=_HTTPS_ONLY)
# Health checks from a container runtime or a load balancer come in over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
# HSTS: once a browser has seen it, it refuses plain HTTP to this host for that many seconds.
# Start low (e.g. 3600) on a new domain and raise it once HTTPS is known to work everywhere.
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS",
                              default=31_536_000 if _HTTPS_ONLY else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS",
                                          default=_HTTPS_ONLY)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", default=_HTTPS_ONLY)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES",
                                                      default=_HTTPS_ONLY)
SESSION_COOKIE_HTTPONLY = True
# The origins (scheme and host) that may POST forms, when they differ from the Host header,
# e.g. https://strategy.example.org behind a proxy that rewrites Host.
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")
for _origin in CSRF_TRUSTED_ORIGINS:
    if "://" not in _origin:
        raise ImproperlyConfigured(
            f"DJANGO_CSRF_TRUSTED_ORIGINS: {_origin!r} needs its scheme, "
            f"e.g. https://{_origin}."
        )
X_FRAME_OPTIONS = "DENY"  # no page of ours is meant to be framed
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_q",
    "apps.common",
    "apps.accounts",
    "apps.workunits",
    "apps.credit",
    "apps.web",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: SQLite under var/ unless DATABASE_URL says otherwise
# (e.g. postgres://user:password@127.0.0.1:5432/strategy).
_database_url = _env("DATABASE_URL")
if _database_url is None:
    VAR_DIR.mkdir(exist_ok=True)
    _database_url = f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
try:
    _database = dj_database_url.parse(
        _database_url,
        conn_max_age=env_int("DB_CONN_MAX_AGE", default=60, minimum=0),  # seconds; 0 = per request
        conn_health_checks=True,
    )
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a usable database URL: {exc}") from None
if _database["ENGINE"] == "django.db.backends.sqlite3":
    # Without these, concurrent writers (web + background cluster) hit "database is locked":
    # IMMEDIATE takes the write lock at BEGIN instead of failing on upgrade, WAL lets readers
    # run beside the writer, and the timeout waits for the lock instead of erroring.
    _database.setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
USE_I18N = True
USE_TZ = True
TIME_ZONE = "UTC"

STATIC_URL = "static/"
# `manage.py collectstatic` writes here; whitenoise serves it. Relative to the project.
STATIC_ROOT = BASE_DIR / (_env("STATIC_ROOT") or VAR_DIR / "static")
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns on every request without it
MEDIA_URL = "media/"
MEDIA_ROOT = BASE_DIR / (_env("MEDIA_ROOT") or VAR_DIR / "media")  # relative to the project
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "portal.staticfinders.PackageFileFinder",  # vendor/plotly.min.js from the plotly package
]
# Failed logins are counted and limited, on the site's login and on the admin's.
AUTHENTICATION_BACKENDS = ["apps.web.login_limit.LoginLimitBackend",
                           "django.contrib.auth.backends.ModelBackend"]
# apps/web/login_limit.py: failed logins (and wrong old passwords) per window, sign-ups per
# address per window.
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", default=5, minimum=1)
LOGIN_FAILURE_WINDOW = env_int("LOGIN_FAILURE_WINDOW", default=15 * 60, minimum=1)
JOIN_LIMIT = env_int("JOIN_LIMIT", default=10, minimum=1)  # also password-reset requests
JOIN_WINDOW = env_int("JOIN_WINDOW", default=60 * 60, minimum=1)

# Mail, for password resets only. Without EMAIL_HOST the reset page says it is not set up,
# except with DEBUG, where the message (and its link) is printed to the console.
EMAIL_HOST = _env("EMAIL_HOST") or ""
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = env_int("EMAIL_PORT", default=587, minimum=1)
    EMAIL_HOST_USER = _env("EMAIL_HOST_USER") or ""
    EMAIL_HOST_PASSWORD = _env("EMAIL_HOST_PASSWORD") or ""
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", default=True)
    EMAIL_TIMEOUT = 10
elif DEBUG:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = _env("DEFAULT_FROM_EMAIL") or "Strategy@Home <noreply@localhost>"
PASSWORD_RESET_ENABLED = bool(EMAIL_HOST) or DEBUG
PASSWORD_RESET_TIMEOUT = 24 * 60 * 60  # a reset link works for a day, once
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "account"
LOGOUT_REDIRECT_URL = "home"

# The worker client wheel the download page serves (`make wheel` builds it there).
WORKER_WHEEL_DIR = BASE_DIR / (_env("WORKER_WHEEL_DIR") or VAR_DIR / "dist")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Production: `collectstatic` writes content-hashed, pre-compressed copies and a manifest;
    # pages link the hashed names, which whitenoise serves with a far-future cache header. A
    # page that names a file missing from the manifest fails loudly: run collectstatic on
    # every deploy (the migrate step in deploy/ does).
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
                    if not (DEBUG or TESTING) else
                    "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG or TESTING  # serve app static files without collectstatic

# Request bodies: scheduler reports carry a few hundred genomes at most.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=2_000_000, minimum=1)

REDIS_URL = _env("REDIS_URL")
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                # Several deployments (or test runs) can share one Redis database.
                "KEY_PREFIX": _env("CACHE_KEY_PREFIX") or ""}
    if REDIS_URL else
    # Throttle counts must be shared by every portal process: the database cache is.
    {"BACKEND": "portal.cache.DatabaseCache", "LOCATION": "cache_table"}
    if not TESTING else
    {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}

REST_FRAMEWORK = {
    # Proxies in front whose X-Forwarded-For is trusted for throttles (0: the socket address;
    # otherwise anyone could reset their attach throttle with a made-up header).
    "NUM_PROXIES": env_int("NUM_PROXIES", default=0, minimum=0),
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer",
                                 "rest_framework.renderers.BrowsableAPIRenderer"],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "EXCEPTION_HANDLER": "portal.api.exception_handler",
    "DEFAULT_THROTTLE_RATES": {
        "attach": _env("THROTTLE_ATTACH") or "20/hour",
        "scheduler": _env("THROTTLE_SCHEDULER") or "600/minute",
        "download": _env("THROTTLE_DOWNLOAD") or "120/hour",
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Strategy@Home worker API",
    "DESCRIPTION": "What the worker client speaks: attach a host, ask for work, report results.",
    "VERSION": "1",
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_INCLUDE_SCHEMA": False,
}

# django-q2: the BOINC daemons (transitioner, validator, assimilator, file deleter) run as its
# tasks. ORM broker by default; Redis when REDIS_URL is set. retry must exceed timeout.
Q_CLUSTER = {
    # Also the Redis queue's name: every cluster process of one deployment must share it.
    "name": _env("Q_CLUSTER_NAME") or "strategy",
    "workers": env_int("Q_WORKERS", default=2, minimum=1),
    "timeout": 120,
    "retry": 180,
    "max_attempts": 3,
    "queue_limit": 50,
    "bulk": 1,
    "poll": 0.2,
    "catch_up": False,
    "save_limit": 500,
    "label": "Background jobs",
    "sync": env_bool("Q_SYNC", default=False),
    **({"redis": REDIS_URL} if REDIS_URL else {"orm": "default"}),
}

# Who runs the daemons: "qcluster" (`manage.py qcluster`; a report enqueues the transitioner at
# once) or "loop" (`manage.py run_daemons --loop`, one process polling; nothing is enqueued).
DAEMON_RUNNER = _env("DAEMON_RUNNER") or "qcluster"
if DAEMON_RUNNER not in {"qcluster", "loop"}:
    raise ImproperlyConfigured(f"DAEMON_RUNNER={DAEMON_RUNNER!r}: use qcluster or loop.")

# Portal behaviour.
RESULT_GRACE_SECONDS = env_int("RESULT_GRACE_SECONDS", default=300, minimum=0)
# A task sent but never acknowledged (the reply was lost) is re-sent after this long.
GHOST_TIMEOUT_SECONDS = env_int("GHOST_TIMEOUT_SECONDS", default=600, minimum=1)
# Seconds a host waits before its next scheduler call (request_delay): after tasks were sent,
# and when there was no work. The demo shortens them; at scale they bound the request rate.
SCHEDULER_REQUEST_DELAY = env_int("SCHEDULER_REQUEST_DELAY", default=5, minimum=0)
SCHEDULER_NO_WORK_DELAY = env_int("SCHEDULER_NO_WORK_DELAY", default=60, minimum=0)
DAILY_RESULT_QUOTA = env_int("DAILY_RESULT_QUOTA", default=100, minimum=1)  # cap per host
FILE_DELETE_DELAY_SECONDS = env_int("FILE_DELETE_DELAY_SECONDS", default=86_400, minimum=0)
MIN_CLIENT_VERSION = _env("MIN_CLIENT_VERSION") or "0.2.0"  # engine format 2

# --- logging -----------------------------------------------------------------------------------
# One line per record on stdout (systemd's journal, `docker compose logs`): time, level, process
# id (which gunicorn worker or cluster process), logger, message. DJANGO_LOG_LEVEL sets our apps'
# and django-q2's level; Django's own request errors (5xx) are always logged.
LOG_LEVEL = (_env("DJANGO_LOG_LEVEL") or "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(
        f"DJANGO_LOG_LEVEL={LOG_LEVEL!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL."
    )
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "line": {
            "format": "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
        },
    },
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout",
                   "formatter": "line"},
    },
    "root": {"handlers": ["stdout"], "level": "WARNING"},
    "loggers": {
        "django": {"level": "INFO"},
        "django.server": {"level": "WARNING"},  # runserver's access lines: gunicorn logs those
        "apps": {"level": LOG_LEVEL},
        "portal": {"level": LOG_LEVEL},
        # django-q2 adds its own stderr handler only when no handler is reachable; ours is.
        "django-q": {"level": LOG_LEVEL},
    },
}
