"""Session-wide test setup shared by every suite."""

import pytest


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory):
    """On SQLite, test against a database file rather than Django's shared-cache in-memory one.

    ``live_server`` tests run the portal in a server thread, daemons in the test thread and
    worker processes beside them. An in-memory database is one connection shared across
    threads (or a shared cache that raises "database table is locked"); a file gets the
    settings' WAL mode and busy timeout, like the real deployment.
    """
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        path = tmp_path_factory.mktemp("sqlite") / "test.sqlite3"
        database.setdefault("TEST", {})["NAME"] = str(path)


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Throttle counts live in the cache, which outlives a test in this process."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()
