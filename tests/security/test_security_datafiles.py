"""Data files that lie about their contents are refused with one clear error, never used.

Two readers: the worker's ``worker_client.datafile.read_candles`` (the binary ``.sahc`` file it
downloads, checked against the sha256 the portal sent) and the operator's ``manage.py
import_candles`` (a CSV file, whose every row is checked). Each lie below is built by hand,
byte by byte, so that no writer's own checks stand between the lie and the reader.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from apps.workunits.models import Dataset
from worker_client.datafile import (
    COLUMNS,
    PREFIX,
    DataFileError,
    read_candles,
    read_header,
)

T0 = 1_704_067_200  # 2024-01-01T00:00:00Z
GOOD = {
    "timestamp": [T0, T0 + 300, T0 + 600, T0 + 900],
    "open": [100.0, 101.0, 102.0, 101.5],
    "high": [101.5, 102.5, 103.0, 102.0],
    "low": [99.5, 100.5, 101.0, 100.0],
    "close": [101.0, 102.0, 101.5, 100.5],
    "volume": [10.0, 12.0, 0.0, 7.5],
}


def sahc(arrays: dict[str, list[Any]] | None = None, **header: Any) -> bytes:
    """A candle file laid out by hand: any header, any arrays, no validation."""
    columns = {**GOOD, **(arrays or {})}
    fields = {"bar_seconds": 300, "columns": list(COLUMNS), "n_bars": len(columns["close"]),
              "symbol": "BTC-USD", "timeframe": "5m", **header}
    raw = PREFIX + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    raw += struct.pack(f"<{len(columns['timestamp'])}q", *columns["timestamp"])
    for name in COLUMNS[1:]:
        raw += struct.pack(f"<{len(columns[name])}d", *columns[name])
    return raw


def put(tmp_path: Path, raw: bytes) -> tuple[Path, str]:
    path = tmp_path / "lie.sahc"
    path.write_bytes(raw)
    return path, hashlib.sha256(raw).hexdigest()


def test_the_honest_file_reads(tmp_path):
    path, sha = put(tmp_path, sahc())
    assert read_candles(path, expected_sha256=sha).timestamp.tolist() == GOOD["timestamp"]


@pytest.mark.parametrize(("n_bars", "message"), [
    (5, "truncated"), (1_000, "truncated"), (10**15, "truncated"), (2**70, "truncated"),
    (3, "extra bytes"), (0, "extra bytes"), (-1, "bad bar count"), (4.0, "bad bar count"),
    (True, "bad bar count"), ("4", "bad bar count"), (None, "bad bar count"),
])
def test_a_header_announcing_another_bar_count_is_refused(tmp_path, n_bars, message):
    path, sha = put(tmp_path, sahc(n_bars=n_bars))
    for expected in (None, sha):  # even with the right checksum: the file itself is a lie
        with pytest.raises(DataFileError, match=message):
            read_candles(path, expected_sha256=expected)


def test_the_header_alone_is_checked_too(tmp_path):
    path, _ = put(tmp_path, sahc(n_bars=-5))
    with pytest.raises(DataFileError, match="bad bar count"):
        read_header(path)


@pytest.mark.parametrize("wrong", ["0" * 64, "A" * 64, "not a sha", ""])
def test_a_file_that_is_not_the_one_announced_is_refused(tmp_path, wrong):
    path, _ = put(tmp_path, sahc())
    with pytest.raises(DataFileError, match="sha256"):
        read_candles(path, expected_sha256=wrong)


def test_one_flipped_bit_is_caught_by_the_checksum(tmp_path):
    raw = sahc()
    path, sha = put(tmp_path, raw[:-1] + bytes([raw[-1] ^ 1]))
    with pytest.raises(DataFileError, match="sha256"):
        read_candles(path, expected_sha256=hashlib.sha256(raw).hexdigest())
    assert read_candles(path, expected_sha256=sha) is not None  # a different, honest file


@pytest.mark.parametrize(("column", "value", "message"), [
    ("close", float("nan"), "not finite"),
    ("open", float("inf"), "not finite"),
    ("low", float("-inf"), "not finite"),
    ("volume", float("nan"), "not finite"),
    ("high", 0.0, "positive"),
    ("low", -5.0, "positive"),
    ("high", 50.0, "inconsistent"),  # high below the body
    ("low", 1e308, "inconsistent"),  # low above the body
    ("volume", -1.0, "inconsistent"),
])
def test_impossible_prices_are_refused(tmp_path, column, value, message):
    values = list(GOOD[column])
    values[2] = value
    path, sha = put(tmp_path, sahc({column: values}))

    with pytest.raises(DataFileError, match=message):
        read_candles(path, expected_sha256=sha)


@pytest.mark.parametrize("timestamps", [
    [T0, T0 + 600, T0 + 300, T0 + 900],  # out of order
    [T0, T0 + 300, T0 + 300, T0 + 900],  # the same bar twice
    [T0 + 900, T0 + 600, T0 + 300, T0],  # newest first
    [T0, T0 + 300, -(2**63), T0 + 900],  # a wrapped-around int64
], ids=["swapped", "duplicate", "reversed", "wrapped"])
def test_timestamps_that_do_not_increase_are_refused(tmp_path, timestamps):
    path, sha = put(tmp_path, sahc({"timestamp": timestamps}))
    with pytest.raises(DataFileError, match="timestamps must increase"):
        read_candles(path, expected_sha256=sha)


@pytest.mark.parametrize(("raw", "message"), [
    (b"", "bad magic"),
    (b"SAHC", "truncated inside the header"),
    (PREFIX + b"{" + b" " * 5000, "truncated inside the header"),  # no end of header in sight
    (PREFIX + b'{"n_bars":4,"n_bars":4}\n', "canonical|unexpected fields"),
    (PREFIX + b"[1, 2]\n", "unexpected fields"),
    (PREFIX + '{"symbol":"é"}\n'.encode(), "not valid JSON"),
    (PREFIX + b"\xff\xfe\n", "not valid JSON"),
    (PREFIX + b'{"n_bars": NaN}\n', "unexpected fields|canonical"),
], ids=["empty", "magic-only", "endless", "duplicate-keys", "array", "non-ascii", "binary",
        "nan"])
def test_broken_headers_are_refused(tmp_path, raw, message):
    path, sha = put(tmp_path, raw)
    with pytest.raises(DataFileError, match=message):
        read_candles(path, expected_sha256=sha)


@pytest.mark.parametrize("header", [
    {"bar_seconds": 60}, {"timeframe": "1w"}, {"columns": list(reversed(COLUMNS))},
    {"symbol": 7}, {"extra": 1},
])
def test_headers_that_misdescribe_the_columns_are_refused(tmp_path, header):
    path, sha = put(tmp_path, sahc(**header))
    with pytest.raises(DataFileError):
        read_candles(path, expected_sha256=sha)


def test_a_lie_never_reaches_the_engine_as_arrays(tmp_path, monkeypatch):
    """Refused before any array is handed out: no NaN slips into a backtest."""
    from worker_client.engine import data as engine_data

    made = []
    real = engine_data.OHLCV.__init__

    def spy(self, *arrays):
        made.append(arrays)
        real(self, *arrays)

    monkeypatch.setattr(engine_data.OHLCV, "__init__", spy)
    path, sha = put(tmp_path, sahc({"close": [101.0, np.nan, 101.5, 100.5]}))
    with pytest.raises(DataFileError):
        read_candles(path, expected_sha256=sha)
    assert made == []


@pytest.mark.parametrize("sha256", ["../../outside", "/etc/passwd", "A" * 64 + "/../x", ""])
def test_the_worker_cache_refuses_a_sha256_that_is_not_one(tmp_path, sha256):
    from worker_client.datasets import DatasetCache
    from worker_client.exceptions import DataError

    cache = DatasetCache(tmp_path / "cache")
    with pytest.raises(DataError, match="not a sha256"):
        cache.path(sha256)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "outside").exists()


# --- import_candles: CSV files ----------------------------------------------------------------

HEADER = "timestamp,open,high,low,close,volume\n"


def csv_rows(rows: list[tuple]) -> str:
    return HEADER + "".join(",".join(str(v) for v in row) + "\n" for row in rows)


ROWS = [(t, o, h, lo, c, v) for t, o, h, lo, c, v in zip(*GOOD.values(), strict=True)]


def _with(row: int, **fields: Any) -> str:
    rows = [list(r) for r in ROWS]
    for name, value in fields.items():
        rows[row][list(GOOD).index(name)] = value
    return csv_rows([tuple(r) for r in rows])


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def import_candles(path: Path) -> str:
    call_command("import_candles", str(path), "--symbol", "BTC-USD", "--timeframe", "5m",
                 stdout=io.StringIO())
    return "ok"


def refused(path: Path, media: Path) -> str:
    with pytest.raises(CommandError) as caught:
        import_candles(path)
    message = str(caught.value)
    assert "\n" not in message and message, message  # one line
    assert not Dataset.objects.exists()
    stored = media / "datasets"
    assert not stored.exists() or not any(stored.iterdir()), "a refused file left a file"
    return message


@pytest.mark.django_db
def test_the_honest_csv_imports(tmp_path, media):
    path = tmp_path / "good.csv"
    path.write_text(csv_rows(ROWS))
    assert import_candles(path) == "ok"
    assert Dataset.objects.get().bar_count == 4


@pytest.mark.django_db
@pytest.mark.parametrize(("text", "expected"), [
    (_with(2, close="NaN"), "line 4: close is NaN"),
    (_with(2, close="nan"), "line 4: close is nan"),
    (_with(1, open="inf"), "line 3: open is infinite"),
    (_with(1, high="1e400"), "line 3: high is infinite"),
    (_with(1, volume="-Infinity"), "line 3: volume is infinite"),
    (_with(3, low=""), "line 5: low is empty or NaN"),
    (_with(1, close="1,5"), "line 3"),
    (_with(1, close="0x10"), "line 3: close '0x10' is not a number"),
    (_with(2, low=-1), "line 4: low -1"),
    (_with(2, high=1), "line 4: high 1"),
    (_with(2, timestamp="yesterday"), "line 4: timestamp 'yesterday' is neither"),
    (_with(2, timestamp=-300), "line 4: timestamp -300 is before 1970"),
    (_with(2, timestamp=T0 + 601), "line 4: open time"),
    (_with(2, timestamp="1e30"), "line 4: timestamp 1e+30 is not a whole number"),
    (_with(2, timestamp=2**70), "line 4"),
    (_with(1, timestamp=T0 + 600), "lines 3 and 4: two different candles"),
], ids=["NaN", "nan", "inf", "1e400", "-Infinity", "empty", "comma", "hex", "negative-price",
        "high-below-body", "text-time", "before-1970", "off-grid", "1e30-time", "2^70-time",
        "conflicting-duplicate"])
def test_a_csv_with_an_impossible_row_names_its_line(tmp_path, media, text, expected):
    path = tmp_path / "lie.csv"
    path.write_text(text)
    assert expected in refused(path, media)


@pytest.mark.django_db
def test_a_csv_whose_rows_are_out_of_order_is_sorted_not_trusted(tmp_path, media):
    """Exchanges export newest first: order is not a lie, and is put right; the stored bars
    increase (the binary file's reader would refuse them otherwise)."""
    path = tmp_path / "reversed.csv"
    path.write_text(csv_rows(list(reversed(ROWS))))
    import_candles(path)
    dataset = Dataset.objects.get()
    data = read_candles(dataset.file.path, expected_sha256=dataset.sha256)
    assert data.timestamp.tolist() == GOOD["timestamp"]


@pytest.mark.django_db
@pytest.mark.parametrize(("name", "content", "expected"), [
    ("empty.csv", b"", "empty"),
    ("header-only.csv", HEADER.encode(), "no candle rows"),
    ("one-bar.csv", csv_rows(ROWS[:1]).encode(), "at least 2"),
    ("binary.csv", bytes(range(256)) * 4, "UTF-8"),
    ("nul.csv", csv_rows(ROWS).replace("101.5", "101\x005", 1).encode(), "line"),
    ("latin1.csv", csv_rows(ROWS).replace("timestamp", "zeït").encode("latin-1"), "UTF-8"),
    ("fake.csv.gz", b"not gzip at all", "cannot read"),
    ("fake.zip", b"PK\x03\x04 not a zip", "cannot read"),
    ("semicolons.csv", csv_rows(ROWS).replace(",", ";").encode(), "only commas"),
    ("ragged.csv", (csv_rows(ROWS) + f"{T0 + 1200},1,2\n").encode(), "line 6"),
    ("wide.csv", (csv_rows(ROWS) + f"{T0 + 1200},1,2,1,1,1,9,9\n").encode(), "fields"),
    ("html.csv", b"<html><body>404 Not Found</body></html>", "layout"),
], ids=lambda value: value if isinstance(value, str) and len(value) < 30 else "")
def test_files_that_are_not_candle_csv_are_refused(tmp_path, media, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    assert expected in refused(path, media)


@pytest.mark.django_db
def test_an_archive_with_two_files_is_refused(tmp_path, media):
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.csv", csv_rows(ROWS))
        archive.writestr("b.csv", csv_rows(ROWS))
    assert "exactly one CSV file" in refused(path, media)


@pytest.mark.django_db
def test_a_compressed_lie_is_refused_like_a_plain_one(tmp_path, media):
    path = tmp_path / "lie.csv.gz"
    path.write_bytes(gzip.compress(_with(2, close="NaN").encode()))
    assert "line 4: close is NaN" in refused(path, media)


@pytest.mark.django_db
@pytest.mark.parametrize("symbol", ["", " ", "X" * 31, "BTC\x00USD", "BTC\u202eDSU", "B\nTC"])
def test_a_bad_symbol_is_refused(tmp_path, media, symbol):
    path = tmp_path / "good.csv"
    path.write_text(csv_rows(ROWS))
    with pytest.raises(CommandError):
        call_command("import_candles", str(path), "--symbol", symbol, "--timeframe", "5m",
                     stdout=io.StringIO())
    assert not Dataset.objects.exists()
