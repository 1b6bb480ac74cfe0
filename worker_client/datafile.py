"""The binary candle file (``.sahc``) that the portal stores and the worker downloads.

Layout, all of it deterministic so that the same candles give the same bytes, and therefore the
same sha256, on every platform (nothing in the file depends on when or where it was written)::

    b"SAHC\\x01"                                    magic and format version 1
    {"bar_seconds":300,"columns":[...],"n_bars":N,"symbol":"BTC-USD","timeframe":"5m"}\\n
                                                    canonical JSON: sorted keys, no spaces, ASCII
    N x int64   timestamp (UTC seconds, bar open time)
    N x float64 open, then high, low, close, volume (one column after the other)

All numbers are little-endian. A reader checks the magic, the version, the header and the exact
file length, and, given the expected sha256, the checksum: a truncated or corrupt file is never
used. Stdlib and NumPy only (the worker reads data sets with it); no POSIX-only calls.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .engine.data import OHLCV, DataError

MAGIC = b"SAHC"
VERSION = 1
PREFIX = MAGIC + bytes([VERSION])
COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")
BYTES_PER_BAR = 8 * len(COLUMNS)
MAX_HEADER_BYTES = 4096
_READ_CHUNK = 1 << 20
FILE_MODE = 0o644

# Fixed-length bars only, each a divisor of a UTC day, so that every bar opens on a multiple
# of its length (weekly bars open on Mondays, not on multiples of 7 days since the epoch).
TIMEFRAMES: dict[str, int] = {
    "1m": 60,
    "3m": 180,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "4h": 14400,
    "6h": 21600,
    "8h": 28800,
    "12h": 43200,
    "1d": 86400,
}


class DataFileError(ValueError):
    """A candle file is not what it should be: wrong magic or version, bad header, truncated,
    trailing bytes, or a sha256 that differs from the expected one."""


@dataclass(frozen=True)
class DataFileHeader:
    symbol: str
    timeframe: str
    bar_seconds: int
    n_bars: int


def timeframe_seconds(timeframe: str) -> int:
    """The bar length in seconds of a timeframe string such as ``"5m"`` or ``"1h"``."""
    try:
        return TIMEFRAMES[timeframe]
    except (KeyError, TypeError):
        known = ", ".join(TIMEFRAMES)
        raise DataFileError(f"unknown timeframe {timeframe!r}; use one of {known}") from None


def write_candles(path: str | os.PathLike[str], data: OHLCV, *, symbol: str,
                  timeframe: str) -> str:
    """Write ``data`` to ``path`` atomically and return the sha256 (hex) of the file's bytes.

    The bytes go to a temporary file in the same directory, which is flushed, fsynced and then
    renamed over ``path``: a reader sees either the old file or the complete new one, and a
    failure leaves no partial file behind.
    """
    if not isinstance(symbol, str) or not symbol.strip():
        raise DataFileError("symbol must be a non-empty string")
    bar_seconds = timeframe_seconds(timeframe)
    # Re-validate (lengths, finite, ordered ...) so that no file is written that read_candles
    # would refuse.
    data = OHLCV.from_arrays(data.timestamp, data.open, data.high, data.low, data.close,
                             data.volume)
    header = {
        "bar_seconds": bar_seconds,
        "columns": list(COLUMNS),
        "n_bars": len(data),
        "symbol": symbol,
        "timeframe": timeframe,
    }
    chunks = [PREFIX + _canonical_json(header) + b"\n",
              np.ascontiguousarray(data.timestamp, dtype="<i8").tobytes()]
    for column in (data.open, data.high, data.low, data.close, data.volume):
        # + 0.0 turns -0.0 into 0.0: equal candles must give equal bytes.
        chunks.append(np.ascontiguousarray(column + 0.0, dtype="<f8").tobytes())
    return _write_atomic(Path(path), chunks)


def read_candles(path: str | os.PathLike[str], *, expected_sha256: str | None = None) -> OHLCV:
    """Read a candle file; with ``expected_sha256``, refuse it unless its checksum matches.

    Raises :class:`DataFileError` for a missing, truncated, corrupt or mismatching file.
    """
    raw = _read_bytes(path)
    if expected_sha256 is not None:
        actual = hashlib.sha256(raw).hexdigest()
        if actual != expected_sha256.lower():
            raise DataFileError(f"{path}: sha256 is {actual}, expected {expected_sha256} "
                                f"(the file is corrupt or incomplete)")
    header, offset = _parse_header(raw, path)
    n = header.n_bars
    expected_size = offset + n * BYTES_PER_BAR
    if len(raw) != expected_size:
        state = "truncated" if len(raw) < expected_size else "followed by extra bytes"
        raise DataFileError(f"{path}: file is {state}: {len(raw)} bytes, the header "
                            f"announces {n} bars, i.e. {expected_size} bytes")
    arrays = []
    for i, dtype in enumerate(("<i8", "<f8", "<f8", "<f8", "<f8", "<f8")):
        column = np.frombuffer(raw, dtype=dtype, count=n, offset=offset + 8 * n * i)
        # A private, writable array in native byte order.
        arrays.append(column.astype(dtype[1:], copy=True))
    try:
        return OHLCV.from_arrays(*arrays)
    except DataError as exc:
        raise DataFileError(f"{path}: invalid candles: {exc}") from exc


def read_header(path: str | os.PathLike[str]) -> DataFileHeader:
    """Only the header of a candle file (symbol, timeframe, bar count), without the arrays."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(PREFIX) + MAX_HEADER_BYTES + 1)
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read: {exc}") from exc
    header, _ = _parse_header(head, path)
    return header


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read: {exc}") from exc


def _parse_header(raw: bytes, path: object) -> tuple[DataFileHeader, int]:
    """The header and the offset of the first array byte."""
    if raw[:len(MAGIC)] != MAGIC:
        raise DataFileError(f"{path}: not a candle file (bad magic)")
    if len(raw) <= len(MAGIC):
        raise DataFileError(f"{path}: file is truncated inside the header")
    if raw[len(MAGIC)] != VERSION:
        raise DataFileError(f"{path}: candle file version {raw[len(MAGIC)]} is not supported "
                            f"(this client reads version {VERSION}); upgrade the client")
    end = raw.find(b"\n", len(PREFIX), len(PREFIX) + MAX_HEADER_BYTES + 1)
    if end < 0:
        raise DataFileError(f"{path}: file is truncated inside the header")
    text = raw[len(PREFIX):end]
    try:
        fields = json.loads(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataFileError(f"{path}: header is not valid JSON: {exc}") from exc
    if not isinstance(fields, dict) or set(fields) != {"bar_seconds", "columns", "n_bars",
                                                       "symbol", "timeframe"}:
        raise DataFileError(f"{path}: header has unexpected fields")
    if _canonical_json(fields) != text:
        raise DataFileError(f"{path}: header is not in canonical form")
    if fields["columns"] != list(COLUMNS):
        raise DataFileError(f"{path}: unexpected columns {fields['columns']}")
    n_bars, symbol, timeframe = fields["n_bars"], fields["symbol"], fields["timeframe"]
    if not isinstance(n_bars, int) or isinstance(n_bars, bool) or n_bars < 0:
        raise DataFileError(f"{path}: bad bar count {n_bars!r}")
    if not isinstance(symbol, str) or not isinstance(timeframe, str):
        raise DataFileError(f"{path}: symbol and timeframe must be strings")
    try:
        bar_seconds = timeframe_seconds(timeframe)
    except DataFileError as exc:
        raise DataFileError(f"{path}: {exc}") from None
    if bar_seconds != fields["bar_seconds"]:
        raise DataFileError(f"{path}: bar_seconds {fields['bar_seconds']!r} does not match "
                            f"timeframe {timeframe}")
    header = DataFileHeader(symbol=symbol, timeframe=timeframe,
                            bar_seconds=bar_seconds, n_bars=n_bars)
    return header, end + 1


def _write_atomic(path: Path, chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file owner-only; a data set is public market data that a web
        # server may have to serve. (On Windows this only keeps the file writable.)
        os.chmod(tmp_name, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                digest.update(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_directory(path.parent)
    return digest.hexdigest()


def fsync_directory(directory: Path) -> None:
    """Make the rename itself durable where the OS allows it (POSIX); a no-op on Windows,
    where directories cannot be opened and NTFS journals the rename."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
