"""The portal's database cache (throttle counts without Redis): Django's, with a one-statement
``set`` on PostgreSQL."""

from __future__ import annotations

import pytest
from django.core.cache import caches
from django.core.management import call_command
from django.db import connection, transaction

from portal import cache as cache_module

pytestmark = pytest.mark.django_db

DB_CACHE = {"BACKEND": "portal.cache.DatabaseCache", "LOCATION": "cache_table",
            "OPTIONS": {"MAX_ENTRIES": 5, "CULL_FREQUENCY": 2}}


@pytest.fixture
def db_cache(settings):
    settings.CACHES = {**settings.CACHES, "db": DB_CACHE}
    call_command("createcachetable", verbosity=0)
    cache = caches["db"]
    cache.clear()
    yield cache
    cache.clear()


def test_set_get_overwrite_expire_and_delete(db_cache):
    db_cache.set("k", [1.5, 2.5], 60)
    assert db_cache.get("k") == [1.5, 2.5]
    db_cache.set("k", {"a": 1}, 60)  # an existing key is overwritten
    assert db_cache.get("k") == {"a": 1}
    db_cache.set("forever", "x", None)
    assert db_cache.get("forever") == "x"
    db_cache.set("gone", 1, -1)  # already expired
    assert db_cache.get("gone") is None
    assert db_cache.add("k", "other") is False and db_cache.get("k") == {"a": 1}
    db_cache.delete("k")
    assert db_cache.get("k") is None


def test_a_set_inside_a_transaction_commits_with_it(db_cache):
    with transaction.atomic():
        db_cache.set("k", 1, 60)
    assert db_cache.get("k") == 1


@pytest.mark.django_db(transaction=True)  # outside a transaction: no savepoint around the set
@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement set is "
                    "PostgreSQL's; other databases use Django's")
def test_on_postgresql_a_set_is_one_statement_and_the_table_is_culled(
        db_cache, monkeypatch, django_assert_num_queries):
    monkeypatch.setattr(cache_module.DatabaseCache, "_sets_since_cull_check", 0)
    with django_assert_num_queries(1):
        db_cache.set("one", 1, 60)
    monkeypatch.setattr(cache_module, "CULL_CHECK_EVERY", 1)
    for i in range(12):
        db_cache.set(f"key{i}", i, 60)
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM cache_table")
        assert cursor.fetchone()[0] <= 6  # culled whenever it went over MAX_ENTRIES
    assert db_cache.get("key11") == 11
