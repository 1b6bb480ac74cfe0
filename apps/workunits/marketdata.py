"""Market data: the OHLCV CSV layouts users bring, turned into checked candles and data sets.

Layouts recognised from the file's first lines (``shared/reference/strategy_mining.md`` §5):

- Coinbase Advanced Trade candles exported as CSV: ``start,low,high,open,close,volume`` (UNIX
  seconds), and the legacy Exchange API order ``time,low,high,open,close,volume``;
- Binance kline files: 12 columns without a header (spot), or with the futures header
  ``open_time,open,high,low,close,volume,close_time,…``;
- generic ``timestamp,open,high,low,close,volume`` (header names in any case; also ``date``,
  ``time``, ``Volume BTC`` …), and the same six columns without a header;
- CryptoDataDownload: a URL banner line, then ``unix,date,symbol,open,high,low,close,Volume X,
  Volume Y[,tradecount]``, newest row first.

Numeric timestamps may be seconds, milliseconds, microseconds or nanoseconds; the unit is
inferred per row from the magnitude, because Binance switched from ms to µs on 2025-01-01 and a
file spanning the switch has both. Text timestamps are ISO 8601 (UTC unless they carry an
offset). ``.gz`` and single-file ``.zip`` archives are read as they are.

Rows are checked (a bad row is an error naming its line, never silently dropped), sorted and
de-duplicated; gaps are reported, never filled with invented candles.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
from django.conf import settings
from django.db import IntegrityError, transaction

from apps.common.errors import ApplicationError
from worker_client.datafile import TIMEFRAMES, DataFileError, timeframe_seconds, write_candles
from worker_client.engine import OHLCV, DataError, synthetic_ohlcv

from .models import Dataset

DATASET_DIR = "datasets"  # under MEDIA_ROOT; files are named <sha256>.sahc
PRICE_COLUMNS = ("open", "high", "low", "close")
VALUE_COLUMNS = (*PRICE_COLUMNS, "volume")

# Header names (lower case, runs of other characters as "_") that may hold the bar open time,
# in order of preference: CryptoDataDownload has both "unix" and "date".
_TIMESTAMP_NAMES = ("timestamp", "open_time", "start", "time", "unix", "unix_timestamp",
                    "ts", "datetime", "date")
_MIN_FIELDS = 6
# Numeric timestamps: below 1e11 are seconds (until the year 5138), below 1e14 milliseconds,
# below 1e17 microseconds, above nanoseconds; each unit's range starts in 1973.
_UNIT_LIMITS = (10**11, 10**14, 10**17)
_UNITS = (1, 1_000, 1_000_000, 1_000_000_000)
_NS_PER_S = 1_000_000_000

_GENERIC_SIX = {"timestamp": 0, "open": 1, "high": 2, "low": 3, "close": 4, "volume": 5}
_COINBASE_LEGACY_SIX = {"timestamp": 0, "low": 1, "high": 2, "open": 3, "close": 4, "volume": 5}

# A check over all rows: the mask of bad rows and what to say about row i.
_Check = tuple[np.ndarray, Callable[[int], str]]


class MarketDataError(ApplicationError):
    """Candles that cannot be imported; ``line`` is the file line at fault, if there is one."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message, extra={"line": line} if line is not None else None)
        self.line = line


@dataclass(frozen=True)
class GapReport:
    """Missing bars inside the range (bars that would open between two present bars)."""

    missing_bars: int
    gap_count: int
    largest_gap_bars: int
    largest_gap_after: int | None  # open time (UTC s) of the bar before the largest gap

    @classmethod
    def from_timestamps(cls, timestamp: np.ndarray, bar_seconds: int) -> GapReport:
        missing = np.diff(timestamp) // bar_seconds - 1
        if not missing.size or missing.max() <= 0:
            return cls(missing_bars=0, gap_count=0, largest_gap_bars=0, largest_gap_after=None)
        largest = int(np.argmax(missing))
        return cls(missing_bars=int(missing.sum()), gap_count=int(np.count_nonzero(missing)),
                   largest_gap_bars=int(missing[largest]),
                   largest_gap_after=int(timestamp[largest]))

    def describe(self) -> str:
        if not self.missing_bars:
            return "none"
        return (f"{self.missing_bars:,} missing bar{_s(self.missing_bars)} in "
                f"{self.gap_count:,} gap{_s(self.gap_count)}; the largest is "
                f"{self.largest_gap_bars:,} bar{_s(self.largest_gap_bars)} after "
                f"{format_timestamp(self.largest_gap_after)}")


@dataclass(frozen=True, eq=False)
class ParsedCandles:
    data: OHLCV
    layout: str
    timeframe: str
    rows_read: int
    duplicates_dropped: int
    gaps: GapReport


@dataclass(frozen=True)
class _Layout:
    name: str
    skip_lines: int  # banner and header lines before the first row
    columns: dict[str, int] | None  # role -> column index; None: six columns, order to infer
    width: int | None  # the header's column count, if there is a header


def format_timestamp(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(int(seconds), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def bar_seconds_of(timeframe: str) -> int:
    """``"5m"`` → 300; a clear error for anything that is not a supported timeframe."""
    try:
        return timeframe_seconds(timeframe)
    except DataFileError as exc:
        raise MarketDataError(str(exc)) from None


# --------------------------------------------------------------------------------------------
# Parsing


def parse_candles(path: str | os.PathLike[str], *, timeframe: str) -> ParsedCandles:
    """Read a CSV file of candles into checked, sorted, de-duplicated engine arrays.

    Raises :class:`MarketDataError` with a message naming the file and line for the first bad
    row (NaN or empty field, non-numeric value, non-positive price, high < low, low above the
    body, high below the body, negative volume, an open time off the timeframe's grid), for
    two different candles with the same open time, and when the timeframe does not match the
    data.
    """
    path = Path(path)
    bar_seconds = bar_seconds_of(timeframe)
    if not path.is_file():
        raise MarketDataError(f"{path}: no such file")
    where = path.name
    layout = _sniff_layout(path)
    frame = _read_frame(path, layout)
    first_line = layout.skip_lines + 1
    if layout.width is not None and frame.shape[1] != layout.width:
        raise MarketDataError(f"{where} line {first_line}: the header has {layout.width} "
                              f"columns but the rows have {frame.shape[1]}", line=first_line)
    # Blank lines at the very end are harmless; anywhere else they are reported as bad rows.
    blank = frame.isna().all(axis=1).to_numpy()
    n = len(blank) - int(np.argmin(blank[::-1])) if not blank.all() else 0
    if n == 0:
        raise MarketDataError(f"{where}: no candle rows")
    frame = frame.iloc[:n]
    blank = blank[:n]

    if layout.columns is None:
        layout = _resolve_six_columns(layout, frame)
    raw, unit, ts_checks = _timestamps(frame[_column_index(layout, "timestamp")])
    values: dict[str, np.ndarray] = {}
    value_checks: list[_Check] = []
    for role in VALUE_COLUMNS:
        values[role], column_checks = _numbers(frame[_column_index(layout, role)], role)
        value_checks += column_checks

    o, h, lo, c, v = (values[role] for role in VALUE_COLUMNS)
    with np.errstate(invalid="ignore"):
        aligned = raw % (unit * bar_seconds) == 0
        body_low, body_high = np.minimum(o, c), np.maximum(o, c)
        seconds = raw // unit
        checks: list[_Check] = [(blank, lambda i: "empty line"), *ts_checks, *value_checks]
        for role in PRICE_COLUMNS:
            arr = values[role]
            checks.append((arr <= 0, lambda i, r=role, a=arr: f"{r} {a[i]} is not positive"))
        checks += [
            (h < lo, lambda i: f"high {h[i]} is below low {lo[i]}"),
            (lo > body_low,
             lambda i: f"low {lo[i]} is above min(open, close) {body_low[i]}"),
            (h < body_high,
             lambda i: f"high {h[i]} is below max(open, close) {body_high[i]}"),
            (v < 0, lambda i: f"volume {v[i]} is negative"),
            (~aligned, lambda i: f"open time {raw[i]} ({format_timestamp(seconds[i])}) is not "
                                 f"on the {timeframe} grid (a multiple of {bar_seconds} s)"),
        ]
    _raise_first_bad_row(checks, where=where, first_line=first_line)

    # Sort (stable: the first of equal open times in file order is kept) and de-duplicate.
    order = np.argsort(seconds, kind="stable")
    ts = seconds[order]
    columns = [arr[order] for arr in (o, h, lo, c, v)]
    same = ts[1:] == ts[:-1]
    if same.any():
        differ = same.copy()
        differ &= ~np.logical_and.reduce([col[1:] == col[:-1] for col in columns])
        if differ.any():
            j = int(np.flatnonzero(differ)[0])
            a, b = sorted((int(order[j]) + first_line, int(order[j + 1]) + first_line))
            raise MarketDataError(f"{where} lines {a} and {b}: two different candles for the "
                                  f"bar at {format_timestamp(ts[j])}", line=a)
        keep = np.concatenate(([True], ~same))
        ts = ts[keep]
        columns = [col[keep] for col in columns]
    _check_timeframe(ts, bar_seconds, timeframe, where=where)
    try:
        data = OHLCV.from_arrays(ts, *columns)
    except DataError as exc:  # already checked row by row; kept as a safety net
        raise MarketDataError(f"{where}: {exc}") from exc
    return ParsedCandles(data=data, layout=layout.name, timeframe=timeframe, rows_read=n,
                         duplicates_dropped=n - len(ts),
                         gaps=GapReport.from_timestamps(ts, bar_seconds))


@contextmanager
def _open_text(path: Path) -> Iterator[IO[str]]:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8-sig", newline="") as f:
            yield f
    elif suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if not m.endswith("/")]
            if len(members) != 1:
                raise MarketDataError(f"{path.name}: a .zip must hold exactly one CSV file, "
                                      f"this one holds {len(members)}")
            with archive.open(members[0]) as binary:
                yield io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
    else:
        with open(path, encoding="utf-8-sig", newline="") as f:
            yield f


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def _sniff_layout(path: Path) -> _Layout:
    """Recognise the layout from the first two lines: banner, header and column count."""
    where = path.name
    try:
        with _open_text(path) as f:
            head = list(csv.reader(islice(f, 2)))
    except (UnicodeDecodeError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise MarketDataError(f"{where}: cannot read it as UTF-8 CSV text ({exc})") from None
    if not head:
        raise MarketDataError(f"{where}: the file is empty")
    skip, first = 0, head[0]
    banner = len(first) < _MIN_FIELDS and len(head) > 1 and len(head[1]) >= _MIN_FIELDS
    if banner:  # CryptoDataDownload's URL line, or a title
        skip, first = 1, head[1]
    names = [_normalise(field) for field in first]
    if set(names) & set(VALUE_COLUMNS):
        columns = _header_columns(names, where=where, line=skip + 1)
        return _Layout(_layout_name(names, columns, banner), skip + 1, columns, len(names))
    if banner:
        raise MarketDataError(f"{where} line 2: expected a header after the banner line "
                              f"(e.g. unix,date,symbol,open,high,low,close,...)", line=2)
    if len(first) == 12:
        return _Layout("binance (no header)", 0, {"timestamp": 0, "open": 1, "high": 2,
                                                  "low": 3, "close": 4, "volume": 5}, None)
    if len(first) == _MIN_FIELDS:
        return _Layout("six columns (no header)", 0, None, None)
    separator = next((s for s in (";", "\t", "|") if s in ",".join(first)), None)
    hint = f" (fields separated by {separator!r}: only commas are supported)" if separator else ""
    raise MarketDataError(
        f"{where} line 1: cannot recognise the layout{hint}: {len(first)} field{_s(len(first))} "
        f"and no header; expected a header with timestamp,open,high,low,close,volume, a Binance "
        f"kline file (12 columns) or six columns timestamp,open,high,low,close,volume", line=1)


def _header_columns(names: list[str], *, where: str, line: int) -> dict[str, int]:
    columns: dict[str, int] = {}
    for alias in _TIMESTAMP_NAMES:
        if alias in names:
            columns["timestamp"] = names.index(alias)
            break
    for role in VALUE_COLUMNS:
        if role in names:
            columns[role] = names.index(role)
    if "volume" not in columns:  # "Volume BTC", "Volume_(BTC)": the first is the base asset
        base = [i for i, name in enumerate(names) if name.startswith("volume_")]
        if base:
            columns["volume"] = base[0]
    missing = [role for role in ("timestamp", *VALUE_COLUMNS) if role not in columns]
    if missing:
        raise MarketDataError(f"{where} line {line}: the header has no {', '.join(missing)} "
                              f"column (found: {', '.join(names)})", line=line)
    return columns


def _layout_name(names: list[str], columns: dict[str, int], banner: bool) -> str:
    if banner:
        return "cryptodatadownload"
    if "open_time" in names and "close_time" in names:
        return "binance (futures header)"
    ts_name = names[columns["timestamp"]]
    if ts_name in ("start", "time") and columns == _COINBASE_LEGACY_SIX:
        return "coinbase" if ts_name == "start" else "coinbase (legacy order)"
    return "generic"


def _read_frame(path: Path, layout: _Layout) -> pd.DataFrame:
    where = path.name
    try:
        return pd.read_csv(
            path, header=None, skiprows=layout.skip_lines, index_col=False,
            skip_blank_lines=False,  # keep row i on file line skip_lines + 1 + i
            keep_default_na=False, na_values=[""], skipinitialspace=True,
            low_memory=False, encoding="utf-8-sig", compression="infer",
        )
    except pd.errors.EmptyDataError:
        raise MarketDataError(f"{where}: no candle rows") from None
    except pd.errors.ParserError as exc:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if found:
            expected, line, saw = (int(g) for g in found.groups())
            raise MarketDataError(f"{where} line {line}: {saw} fields, the rows before have "
                                  f"{expected}", line=line) from None
        raise MarketDataError(f"{where}: not a readable CSV file ({exc})") from None
    except UnicodeDecodeError as exc:
        raise MarketDataError(f"{where}: not UTF-8 text ({exc})") from None


def _column_index(layout: _Layout, role: str) -> int:
    assert layout.columns is not None, "six headerless columns are resolved first"
    return layout.columns[role]


def _numbers(column: pd.Series, role: str) -> tuple[np.ndarray, list[_Check]]:
    """A column as float64 (NaN where unusable) and the checks that name its bad rows."""
    if column.dtype.kind in "iuf":
        values = column.to_numpy(dtype=np.float64)
        text_bad = np.zeros(len(values), dtype=bool)
    else:  # some field is not a number: find which
        parsed = pd.to_numeric(column, errors="coerce")
        values = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
        text_bad = (parsed.isna() & column.notna()).to_numpy()
    missing = np.isnan(values) & ~text_bad
    infinite = np.isinf(values)

    def not_a_number(i: int) -> str:
        text = str(column.iloc[i])
        if text.strip().lower() in ("nan", "null", "none", "n/a", "na"):
            return f"{role} is {text}"
        return f"{role} {text!r} is not a number"

    return values, [
        (text_bad, not_a_number),
        (missing, lambda i: f"{role} is empty or NaN"),
        (infinite, lambda i: f"{role} is infinite"),
    ]


def _timestamps(column: pd.Series) -> tuple[np.ndarray, np.ndarray, list[_Check]]:
    """Open times as raw integers and their unit per row (``raw // unit`` = UTC seconds)."""
    n = len(column)
    missing = column.isna().to_numpy()
    raw = np.zeros(n, dtype=np.int64)
    is_date = np.zeros(n, dtype=bool)
    not_a_time = np.zeros(n, dtype=bool)
    not_whole = np.zeros(n, dtype=bool)
    if column.dtype.kind in "iu":
        raw = column.to_numpy(dtype=np.int64)
    else:
        number_rows = np.flatnonzero(~missing)
        if column.dtype.kind == "f":  # integers and an empty field, or decimals
            numbers = column.to_numpy(dtype=np.float64)[number_rows]
        else:  # text: ISO 8601 dates, possibly mixed with numbers (Kaggle's updater does it)
            text = column.iloc[number_rows].astype(str).to_numpy()
            dates = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
            ok = ~np.asarray(dates.isna())
            raw[number_rows[ok]] = dates[ok].as_unit("ns").asi8
            is_date[number_rows[ok]] = True
            number_rows = number_rows[~ok]
            numbers = np.asarray(pd.to_numeric(text[~ok], errors="coerce"), dtype=np.float64)
            not_a_time[number_rows[np.isnan(numbers)]] = True
        whole = np.isfinite(numbers) & (numbers == np.floor(numbers)) & (np.abs(numbers) < 2**62)
        raw[number_rows[whole]] = numbers[whole].astype(np.int64)
        not_whole[number_rows[~whole & ~np.isnan(numbers)]] = True
    unit = np.asarray(_UNITS, dtype=np.int64)[np.searchsorted(_UNIT_LIMITS, raw, side="right")]
    unit[is_date] = _NS_PER_S
    return raw, unit, [
        (missing, lambda i: "timestamp is empty"),
        (not_a_time, lambda i: f"timestamp {_shown(column.iloc[i])} is neither a number nor "
                               f"an ISO 8601 date"),
        (not_whole, lambda i: f"timestamp {_shown(column.iloc[i])} is not a whole number"),
        (raw < 0, lambda i: f"timestamp {_shown(column.iloc[i])} is before 1970"),
    ]


def _resolve_six_columns(layout: _Layout, frame: pd.DataFrame) -> _Layout:
    """Six columns and no header: ``time,open,high,low,close,volume`` (Kaiko, freqtrade) or
    Coinbase's legacy ``time,low,high,open,close,volume``; the order the rows obey wins."""
    a, b, c, d = (pd.to_numeric(frame[i], errors="coerce").to_numpy(np.float64, na_value=np.nan)
                  for i in range(1, 5))
    with np.errstate(invalid="ignore"):
        generic_bad = np.count_nonzero((b < np.maximum(a, d)) | (c > np.minimum(a, d)))
        legacy_bad = np.count_nonzero((b < np.maximum(c, d)) | (a > np.minimum(c, d)))
    if legacy_bad < generic_bad:
        return _Layout("coinbase legacy order (no header)", 0, _COINBASE_LEGACY_SIX, None)
    return _Layout("generic (no header)", 0, _GENERIC_SIX, None)


def _raise_first_bad_row(checks: list[_Check], *, where: str, first_line: int) -> None:
    """Raise for the earliest bad row (its first failed check), counting the other bad rows."""
    first: tuple[int, Callable[[int], str]] | None = None
    any_bad: np.ndarray | None = None
    for mask, describe in checks:
        bad = np.flatnonzero(mask)
        if not bad.size:
            continue
        any_bad = mask.copy() if any_bad is None else any_bad | mask
        if first is None or bad[0] < first[0]:
            first = (int(bad[0]), describe)
    if first is None or any_bad is None:
        return
    row, describe = first
    line = first_line + row
    others = int(np.count_nonzero(any_bad)) - 1
    more = f" (and {others:,} more bad row{_s(others)})" if others else ""
    raise MarketDataError(f"{where} line {line}: {describe(row)}{more}", line=line)


def _check_timeframe(timestamp: np.ndarray, bar_seconds: int, timeframe: str, *,
                     where: str) -> None:
    """The declared timeframe must be the data's: every open time on its grid, and the most
    common spacing one bar (the engine annualises with that spacing, see OHLCV.bar_seconds)."""
    if len(timestamp) < 2:
        raise MarketDataError(f"{where}: at least 2 distinct candles are needed, "
                              f"found {len(timestamp)}")
    off_grid = np.flatnonzero(timestamp % bar_seconds)
    if off_grid.size:
        raise MarketDataError(f"{where}: bar {off_grid[0]} opens at "
                              f"{format_timestamp(timestamp[off_grid[0]])}, not on the "
                              f"{timeframe} grid")
    spacings, counts = np.unique(np.diff(timestamp), return_counts=True)
    usual = int(spacings[np.argmax(counts)])
    if usual != bar_seconds:
        names = {seconds: name for name, seconds in TIMEFRAMES.items()}
        looks = f"{names[usual]} candles" if usual in names else "candles"
        raise MarketDataError(f"{where}: the data looks like {looks} (most bars are {usual:,} s "
                              f"apart), not {timeframe} ({bar_seconds:,} s): check the "
                              f"timeframe")


def _shown(value: object) -> str:
    """A field as the user wrote it: text quoted, numbers plain (no ``np.float64(…)``)."""
    return repr(value) if isinstance(value, str) else str(value)


def _s(count: int) -> str:
    return "" if count == 1 else "s"


# --------------------------------------------------------------------------------------------
# Services


def dataset_import(*, path: str | os.PathLike[str], symbol: str, timeframe: str,
                   exchange: str = "") -> Dataset:
    """Import a CSV file of candles; importing the same content again returns the same row."""
    candles = parse_candles(path, timeframe=timeframe)
    dataset, _ = dataset_get_or_create(data=candles.data, symbol=symbol, timeframe=timeframe,
                                       exchange=exchange)
    return dataset


def dataset_create_synthetic(*, bars: int, seed: int, symbol: str = "BTC-USD",
                             timeframe: str = "5m") -> Dataset:
    """A seeded synthetic series (``worker_client.engine.synthetic_ohlcv``) as a data set."""
    if bars < 2:
        raise MarketDataError(f"at least 2 bars are needed, got {bars}")
    if seed < 0:
        raise MarketDataError(f"the seed must not be negative, got {seed}")
    data = synthetic_ohlcv(bars, seed=seed, bar_seconds=bar_seconds_of(timeframe))
    dataset, _ = dataset_get_or_create(data=data, symbol=symbol, timeframe=timeframe,
                                       exchange="synthetic")
    return dataset


def dataset_get_or_create(*, data: OHLCV, symbol: str, timeframe: str,
                          exchange: str = "") -> tuple[Dataset, bool]:
    """Store candles as ``MEDIA_ROOT/datasets/<sha256>.sahc`` and its row; ``(dataset, created)``.

    The file is named by its content, so writing it is idempotent and two imports of the same
    candles (even concurrent ones) end with one file and one row. The file is in place before
    the row commits; a row therefore never points at a missing file, while a failure after the
    rename leaves at worst an unreferenced file that a re-import reuses.
    """
    symbol, exchange = symbol.strip(), exchange.strip()
    for field, value in (("symbol", symbol), ("exchange", exchange)):
        limit = Dataset._meta.get_field(field).max_length
        if (field == "symbol" and not value) or len(value) > limit:
            raise MarketDataError(f"{field} must be 1 to {limit} characters, got {value!r}")
        if not value.isprintable():  # NUL (which PostgreSQL refuses), newlines, bidi controls
            raise MarketDataError(f"{field} {value!r} holds a control or formatting character")
    bar_seconds = bar_seconds_of(timeframe)
    _check_timeframe(data.timestamp, bar_seconds, timeframe, where="candles")

    directory = Path(settings.MEDIA_ROOT) / DATASET_DIR
    directory.mkdir(parents=True, exist_ok=True)
    incoming = directory / f".incoming-{uuid.uuid4().hex}.sahc"
    try:
        sha256 = write_candles(incoming, data, symbol=symbol, timeframe=timeframe)
        final = directory / f"{sha256}.sahc"
        if not final.exists():  # same bytes whoever writes them: a race here is harmless
            os.replace(incoming, final)
        existing = Dataset.objects.filter(sha256=sha256).first()
        if existing is not None:
            return existing, False
        timestamp = data.timestamp
        try:
            with transaction.atomic():
                dataset = Dataset.objects.create(
                    symbol=symbol, exchange=exchange, timeframe=timeframe,
                    bar_seconds=bar_seconds,
                    first_bar=datetime.fromtimestamp(int(timestamp[0]), tz=UTC),
                    last_bar=datetime.fromtimestamp(int(timestamp[-1]), tz=UTC),
                    bar_count=len(data), sha256=sha256, size_bytes=final.stat().st_size,
                    file=f"{DATASET_DIR}/{final.name}",
                    gaps=GapReport.from_timestamps(timestamp, bar_seconds).missing_bars,
                )
        except IntegrityError:  # a concurrent import of the same candles committed first
            return Dataset.objects.get(sha256=sha256), False
        return dataset, True
    finally:
        incoming.unlink(missing_ok=True)
