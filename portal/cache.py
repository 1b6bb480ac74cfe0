"""The database cache the portal uses when there is no Redis: throttle counts shared by every
portal process.

Django's ``DatabaseCache.set`` costs six statements and a transaction of its own on every call:
``SELECT COUNT(*)`` of the whole table (to decide whether to cull), ``BEGIN``, a ``SELECT`` of
the key, an ``UPDATE`` or ``INSERT``, ``COMMIT``. A throttle writes on every API call, so on
PostgreSQL this subclass writes with one ``INSERT … ON CONFLICT (cache_key) DO UPDATE`` (the
same last-writer-wins result, atomic by itself) and counts the table for culling only on one
``set`` in ``CULL_CHECK_EVERY`` per process, so the table may overshoot ``MAX_ENTRIES`` by that
many rows per process before it is culled. Other databases, and every other method, are
Django's.
"""

from __future__ import annotations

import base64
import pickle
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.db import DatabaseCache as DjangoDatabaseCache
from django.db import DatabaseError, connections, router, transaction
from django.utils.timezone import now as tz_now

CULL_CHECK_EVERY = 100


class DatabaseCache(DjangoDatabaseCache):
    _sets_since_cull_check = 0

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: int | None = None) -> None:
        db = router.db_for_write(self.cache_model_class)
        connection = connections[db]
        if connection.vendor != "postgresql":
            super().set(key, value, timeout, version)
            return
        key = self.make_and_validate_key(key, version=version)
        backend_timeout = self.get_backend_timeout(timeout)
        tz = UTC if settings.USE_TZ else None
        if backend_timeout is None:
            expires = datetime.max.replace(tzinfo=tz)
        else:
            expires = datetime.fromtimestamp(backend_timeout, tz=tz)
        expires = expires.replace(microsecond=0)
        encoded = base64.b64encode(pickle.dumps(value, self.pickle_protocol)).decode("latin1")
        quote = connection.ops.quote_name
        table = quote(self._table)
        sql = (f"INSERT INTO {table} ({quote('cache_key')}, {quote('value')}, {quote('expires')})"
               f" VALUES (%s, %s, %s) ON CONFLICT ({quote('cache_key')}) DO UPDATE SET "
               f"{quote('value')} = EXCLUDED.{quote('value')}, "
               f"{quote('expires')} = EXCLUDED.{quote('expires')}")
        params = [key, encoded, connection.ops.adapt_datetimefield_value(expires)]
        try:
            # Inside a caller's transaction, a savepoint keeps a failure from breaking it.
            with (transaction.atomic(using=db) if connection.in_atomic_block
                  else nullcontext()), connection.cursor() as cursor:
                self._maybe_cull(db, cursor)
                cursor.execute(sql, params)
        except DatabaseError:
            pass  # as Django's: a cache write may fail silently

    def _maybe_cull(self, db: str, cursor: Any) -> None:
        type(self)._sets_since_cull_check += 1
        if type(self)._sets_since_cull_check < CULL_CHECK_EVERY:
            return
        type(self)._sets_since_cull_check = 0
        cursor.execute(f"SELECT COUNT(*) FROM {connections[db].ops.quote_name(self._table)}")
        count = cursor.fetchone()[0]
        if count > self._max_entries:
            self._cull(db, cursor, tz_now().replace(microsecond=0), count)

