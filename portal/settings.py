"""Settings for the Strategy@Home portal, read from the environment (12-factor).

Every knob is an environment variable; a bad value stops the process at import with a message
naming the variable, rather than running with a surprise. Development needs nothing but
`DJANGO_DEBUG=1`; production needs at least `DJANGO_SECRET_KEY`, `DJANGO_ALLOWED_HOSTS` and
`DATABASE_URL`.
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
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns on every request without it
MEDIA_URL = "media/"
MEDIA_ROOT = BASE_DIR / (_env("MEDIA_ROOT") or VAR_DIR / "media")  # relative to the project
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "portal.staticfinders.PackageFileFinder",  # vendor/plotly.min.js from the plotly package
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "account"
LOGOUT_REDIRECT_URL = "home"

# The worker client wheel the download page serves (`make wheel` builds it there).
WORKER_WHEEL_DIR = BASE_DIR / (_env("WORKER_WHEEL_DIR") or VAR_DIR / "dist")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
                    if not (DEBUG or TESTING) else
                    "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG or TESTING  # serve app static files without collectstatic

# Request bodies: scheduler reports carry a few hundred genomes at most.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=2_000_000, minimum=1)

REDIS_URL = _env("REDIS_URL")
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    if REDIS_URL else
    # Throttle counts must be shared by every portal process: the database cache is.
    {"BACKEND": "portal.cache.DatabaseCache", "LOCATION": "cache_table"}
    if not TESTING else
    {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
}

REST_FRAMEWORK = {
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
    "name": "strategy",
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
MIN_CLIENT_VERSION = _env("MIN_CLIENT_VERSION") or "0.1.0"
