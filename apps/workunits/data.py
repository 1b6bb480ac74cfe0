"""The server's view of market data: a data set's candles as engine arrays, cached per sha256.

The validator re-checks claimed metrics and the assimilator computes out-of-sample figures on
the very file the volunteers downloaded, read with the worker's own reader (which verifies the
checksum). A data set's file never changes (it is named by its content), so the cache key is
its sha256 and entries never go stale.
"""

from __future__ import annotations

from functools import lru_cache

from worker_client.engine import OHLCV

from .models import Dataset

_CACHE_SIZE = 4  # a few data sets of a few hundred thousand bars each: tens of MB


def load_dataset(dataset: Dataset) -> OHLCV:
    """The candles of ``dataset`` (read once per process, sha256-verified)."""
    return _load(dataset.sha256, dataset.file.path)


@lru_cache(maxsize=_CACHE_SIZE)
def _load(sha256: str, path: str) -> OHLCV:
    from worker_client.datafile import read_candles

    return read_candles(path, expected_sha256=sha256)


def clear_cache() -> None:
    _load.cache_clear()
