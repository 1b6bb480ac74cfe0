"""Market data import: CSV layouts, row checks naming the line, sorting, de-duplication, gaps,
the stored data set and the two management commands."""

import gzip
import io
import zipfile
from datetime import UTC, datetime

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from apps.workunits.marketdata import (
    MarketDataError,
    dataset_create_synthetic,
    dataset_import,
    parse_candles,
)
from apps.workunits.models import Dataset
from worker_client.datafile import read_candles, read_header
from worker_client.engine import synthetic_ohlcv

T0 = 1_704_067_200  # 2024-01-01T00:00:00Z
FIVE_MIN = 300
# Three good 5-minute candles: (open time, open, high, low, close, volume).
BARS = [
    (T0, 100.0, 102.0, 99.0, 101.0, 4.0),
    (T0 + 300, 101.0, 103.0, 100.0, 102.0, 5.0),
    (T0 + 600, 102.0, 104.0, 101.5, 103.0, 6.5),
]
GENERIC_HEADER = "timestamp,open,high,low,close,volume"


def write(tmp_path, text: str, name: str = "candles.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def generic_csv(rows) -> str:
    return GENERIC_HEADER + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows)


def assert_bars(parsed, bars=BARS):
    data = parsed.data
    assert data.timestamp.tolist() == [b[0] for b in bars]
    assert data.open.tolist() == [b[1] for b in bars]
    assert data.high.tolist() == [b[2] for b in bars]
    assert data.low.tolist() == [b[3] for b in bars]
    assert data.close.tolist() == [b[4] for b in bars]
    assert data.volume.tolist() == [b[5] for b in bars]


# --- layouts -----------------------------------------------------------------------------------


def test_coinbase_advanced_trade_export_newest_first(tmp_path):
    # The API answers newest first, with low and high before open.
    text = "start,low,high,open,close,volume\n" + "".join(
        f"{t},{lo},{h},{o},{c},{v}\n" for t, o, h, lo, c, v in reversed(BARS))
    parsed = parse_candles(write(tmp_path, text), timeframe="5m")
    assert parsed.layout == "coinbase"
    assert_bars(parsed)


def test_coinbase_legacy_order_with_and_without_header(tmp_path):
    rows = "".join(f"{t},{lo},{h},{o},{c},{v}\n" for t, o, h, lo, c, v in BARS)
    with_header = parse_candles(write(tmp_path, "time,low,high,open,close,volume\n" + rows),
                                timeframe="5m")
    assert with_header.layout == "coinbase (legacy order)"
    assert_bars(with_header)

    without = parse_candles(write(tmp_path, rows, "legacy.csv"), timeframe="5m")
    assert without.layout == "coinbase legacy order (no header)"
    assert_bars(without)


def test_six_columns_without_header_default_to_the_generic_order(tmp_path):
    parsed = parse_candles(write(tmp_path, generic_csv(BARS).split("\n", 1)[1]), timeframe="5m")
    assert parsed.layout == "generic (no header)"
    assert_bars(parsed)


def binance_row(open_time: int, unit: int, o, h, lo, c, v) -> str:
    raw = open_time * unit
    close_time = raw + FIVE_MIN * unit - 1
    return f"{raw},{o},{h},{lo},{c},{v},{close_time},{v * c},42,{v / 2},{v * c / 2},0\n"


def test_binance_klines_switch_from_ms_to_us_inside_one_file(tmp_path):
    new_year = 1_735_689_600  # 2025-01-01T00:00:00Z: Binance spot files move to microseconds
    bars = [(new_year - 600 + i * FIVE_MIN, *BARS[i % 3][1:]) for i in range(4)]
    text = "".join(binance_row(t, 1_000 if t < new_year else 1_000_000, *rest)
                   for t, *rest in bars)
    assert "1735689600000000," in text and "1735689300000," in text

    parsed = parse_candles(write(tmp_path, text), timeframe="5m")

    assert parsed.layout == "binance (no header)"
    assert parsed.data.timestamp.tolist() == [t for t, *_ in bars]
    assert parsed.data.close.tolist() == [b[4] for b in bars]


def test_the_same_bar_in_ms_and_us_is_one_bar(tmp_path):
    text = "".join(binance_row(t, 1_000, *rest) for t, *rest in BARS)
    text += binance_row(BARS[-1][0], 1_000_000, *BARS[-1][1:])
    parsed = parse_candles(write(tmp_path, text), timeframe="5m")
    assert parsed.rows_read == 4 and parsed.duplicates_dropped == 1
    assert_bars(parsed)


def test_binance_futures_header(tmp_path):
    header = ("open_time,open,high,low,close,volume,close_time,quote_volume,count,"
              "taker_buy_volume,taker_buy_quote_volume,ignore\n")
    text = header + "".join(binance_row(t, 1_000, *rest) for t, *rest in BARS)
    parsed = parse_candles(write(tmp_path, text), timeframe="5m")
    assert parsed.layout == "binance (futures header)"
    assert_bars(parsed)


def test_generic_header_any_case_with_iso_dates(tmp_path):
    text = ("Date,Open,High,LOW,Close,Volume\n"
            "2024-01-01T00:00:00Z,100,102,99,101,4\n"
            "2024-01-01 00:05:00,101,103,100,102,5\n"  # no offset: UTC
            "2024-01-01T01:10:00+01:00,102,104,101.5,103,6.5\n")
    parsed = parse_candles(write(tmp_path, text), timeframe="5m")
    assert parsed.layout == "generic"
    assert_bars(parsed)


@pytest.mark.parametrize("unit", [1, 1_000, 1_000_000])
def test_generic_numeric_timestamps_in_s_ms_or_us(tmp_path, unit):
    rows = [(t * unit, *rest) for t, *rest in BARS]
    parsed = parse_candles(write(tmp_path, generic_csv(rows)), timeframe="5m")
    assert_bars(parsed)


def test_cryptodatadownload_banner_newest_first_base_volume(tmp_path):
    text = ("https://www.CryptoDataDownload.com\n"
            "unix,date,symbol,open,high,low,close,Volume BTC,Volume USDT,tradecount\n"
            + "".join(f"{t},{datetime.fromtimestamp(t, tz=UTC):%Y-%m-%d %H:%M:%S},BTC/USDT,"
                      f"{o},{h},{lo},{c},{v},{v * c},17\n"
                      for t, o, h, lo, c, v in reversed(BARS)))
    parsed = parse_candles(write(tmp_path, text), timeframe="5m")
    assert parsed.layout == "cryptodatadownload"
    assert_bars(parsed)


def test_compressed_files_are_read_as_they_are(tmp_path):
    text = generic_csv(BARS)
    gz = tmp_path / "candles.csv.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    assert_bars(parse_candles(gz, timeframe="5m"))

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("BTCUSDT-5m-2024-01.csv", text)
    zipped = tmp_path / "BTCUSDT-5m-2024-01.zip"
    zipped.write_bytes(buffer.getvalue())
    assert_bars(parse_candles(zipped, timeframe="5m"))


def test_byte_order_mark_crlf_and_trailing_blank_lines_are_fine(tmp_path):
    text = "\ufeff" + generic_csv(BARS).replace("\n", "\r\n") + "\r\n\r\n"
    parsed = parse_candles(write(tmp_path, text), timeframe="5m")
    assert parsed.rows_read == 3
    assert_bars(parsed)


# --- bad rows ----------------------------------------------------------------------------------


GOOD_LINE_3 = generic_csv(BARS).splitlines()[2]  # line 3 of the file: the second candle


@pytest.mark.parametrize(("bad_line", "message"), [
    (f"{T0 + 300},NaN,103,100,102,5", "line 3: open is NaN"),
    (f"{T0 + 300},,103,100,102,5", "line 3: open is empty or NaN"),
    (f"{T0 + 300},101,abc,100,102,5", "line 3: high 'abc' is not a number"),
    (f"{T0 + 300},101,103,100,inf,5", "line 3: close is infinite"),
    (f"{T0 + 300},101,99,100,102,5", "line 3: high 99.0 is below low 100.0"),
    (f"{T0 + 300},101,103,101.5,102,5", "line 3: low 101.5 is above min(open, close) 101.0"),
    (f"{T0 + 300},101,101.5,100,102,5", "line 3: high 101.5 is below max(open, close) 102.0"),
    (f"{T0 + 300},101,103,100,102,-5", "line 3: volume -5.0 is negative"),
    (f"{T0 + 300},0,103,0,102,5", "line 3: open 0.0 is not positive"),
    (f"{T0 + 300},-1,103,-2,102,5", "line 3: open -1.0 is not positive"),
    (f"{T0 + 120},101,103,100,102,5", "line 3: open time 1704067320 (2024-01-01T00:02:00Z) "
                                      "is not on the 5m grid"),
    (f"{T0 + 300}.5,101,103,100,102,5", "line 3: timestamp 1704067500.5 is not a whole number"),
    ("yesterday,101,103,100,102,5", "line 3: timestamp 'yesterday' is neither a number nor "
                                     "an ISO 8601 date"),
    (",101,103,100,102,5", "line 3: timestamp is empty"),
    ("-300,101,103,100,102,5", "line 3: timestamp -300 is before 1970"),
    ("", "line 3: empty line"),
])
def test_a_bad_row_is_an_error_naming_its_line(tmp_path, bad_line, message):
    lines = generic_csv(BARS).splitlines()
    assert lines[2] == GOOD_LINE_3
    lines[2] = bad_line
    path = write(tmp_path, "\n".join(lines) + "\n", "bad.csv")

    with pytest.raises(MarketDataError) as caught:
        parse_candles(path, timeframe="5m")

    assert caught.value.message.startswith(f"bad.csv {message}"), caught.value.message
    assert caught.value.line == 3


def test_the_first_bad_line_is_named_and_the_others_counted(tmp_path):
    rows = [*BARS, (T0 + 900, 1, 0.5, 1, 1, 1), (T0 + 1200, 1, 2, 1, 1, -1)]
    rows[1] = (T0 + 300, 101, 103, 100, 102, -1)
    with pytest.raises(MarketDataError, match=r"line 3: volume -1\.0 is negative "
                                              r"\(and 2 more bad rows\)"):
        parse_candles(write(tmp_path, generic_csv(rows)), timeframe="5m")


def test_a_row_with_extra_fields_is_named(tmp_path):
    text = generic_csv(BARS).replace(GOOD_LINE_3, GOOD_LINE_3 + ",7")
    with pytest.raises(MarketDataError, match="line 3: 7 fields"):
        parse_candles(write(tmp_path, text), timeframe="5m")


@pytest.mark.parametrize(("text", "message"), [
    ("", "the file is empty"),
    (GENERIC_HEADER + "\n", "no candle rows"),
    ("timestamp,open,high,low,close\n1,2,3,4,5\n", "line 1: the header has no volume column"),
    ("1,2,3\n4,5,6\n", "line 1: cannot recognise the layout"),
    (generic_csv(BARS[:1]), "at least 2 distinct candles"),
])
def test_unusable_files(tmp_path, text, message):
    with pytest.raises(MarketDataError, match=message):
        parse_candles(write(tmp_path, text), timeframe="5m")


def test_unknown_timeframe_and_missing_file(tmp_path):
    with pytest.raises(MarketDataError, match="unknown timeframe '7m'"):
        parse_candles(write(tmp_path, generic_csv(BARS)), timeframe="7m")
    with pytest.raises(MarketDataError, match="no such file"):
        parse_candles(tmp_path / "missing.csv", timeframe="5m")


# --- sorting, duplicates, timeframe, gaps ------------------------------------------------------


def test_rows_are_sorted_and_identical_duplicates_dropped(tmp_path):
    rows = [BARS[2], BARS[0], BARS[1], BARS[0], BARS[2]]
    parsed = parse_candles(write(tmp_path, generic_csv(rows)), timeframe="5m")
    assert parsed.rows_read == 5
    assert parsed.duplicates_dropped == 2
    assert_bars(parsed)


def test_conflicting_duplicates_name_both_lines(tmp_path):
    rows = [BARS[0], BARS[1], BARS[2], (T0 + 300, 101, 103, 100, 102.5, 5)]
    with pytest.raises(MarketDataError, match=r"lines 3 and 5: two different candles for the "
                                              r"bar at 2024-01-01T00:05:00Z"):
        parse_candles(write(tmp_path, generic_csv(rows)), timeframe="5m")


def test_timeframe_must_match_the_data(tmp_path):
    path = write(tmp_path, generic_csv(BARS))
    with pytest.raises(MarketDataError, match=r"looks like 5m candles \(most bars are 300 s "
                                              r"apart\), not 1m"):
        parse_candles(path, timeframe="1m")
    with pytest.raises(MarketDataError, match=r"line 3: .* is not on the 15m grid"):
        parse_candles(path, timeframe="15m")


def test_gaps_are_reported_not_filled(tmp_path):
    offsets = [0, 1, 2, 5, 6, 8]  # bars 3 and 4 are missing, then bar 7
    rows = [(T0 + k * FIVE_MIN, 100, 101, 99, 100, 1) for k in offsets]
    parsed = parse_candles(write(tmp_path, generic_csv(rows)), timeframe="5m")

    assert len(parsed.data) == 6
    gaps = parsed.gaps
    assert (gaps.missing_bars, gaps.gap_count, gaps.largest_gap_bars) == (3, 2, 2)
    assert gaps.largest_gap_after == T0 + 2 * FIVE_MIN
    assert gaps.describe() == ("3 missing bars in 2 gaps; the largest is 2 bars after "
                               "2024-01-01T00:10:00Z")
    no_gaps = parse_candles(write(tmp_path, generic_csv(BARS), "full.csv"), timeframe="5m")
    assert no_gaps.gaps.describe() == "none"


# --- data sets ---------------------------------------------------------------------------------


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.mark.django_db
def test_dataset_import_stores_the_binary_file_and_is_idempotent(tmp_path, media):
    rows = [*BARS, (T0 + 1200, 103, 105, 102, 104, 1)]  # one bar missing before it
    path = write(tmp_path, generic_csv(rows))

    first = dataset_import(path=path, symbol="BTC-USD", timeframe="5m", exchange="coinbase")
    again = dataset_import(path=path, symbol="BTC-USD", timeframe="5m", exchange="coinbase")

    assert again.pk == first.pk
    assert Dataset.objects.count() == 1
    stored = media / "datasets" / f"{first.sha256}.sahc"
    assert sorted(p.name for p in (media / "datasets").iterdir()) == [stored.name]
    assert first.file.name == f"datasets/{first.sha256}.sahc"
    assert first.file.path == str(stored)
    assert (first.symbol, first.exchange, first.timeframe, first.bar_seconds) == (
        "BTC-USD", "coinbase", "5m", 300)
    assert (first.bar_count, first.gaps, first.size_bytes) == (4, 1, stored.stat().st_size)
    assert first.first_bar == datetime(2024, 1, 1, tzinfo=UTC)
    assert first.last_bar == datetime(2024, 1, 1, 0, 20, tzinfo=UTC)
    data = read_candles(stored, expected_sha256=first.sha256)
    assert data.timestamp.tolist() == [r[0] for r in rows]
    assert read_header(stored).symbol == "BTC-USD"


@pytest.mark.django_db
def test_the_same_candles_in_another_layout_are_the_same_data_set(tmp_path, media):
    generic = dataset_import(path=write(tmp_path, generic_csv(BARS)), symbol="BTC-USD",
                             timeframe="5m")
    coinbase_text = "start,low,high,open,close,volume\n" + "".join(
        f"{t},{lo},{h},{o},{c},{v}\n" for t, o, h, lo, c, v in BARS)
    coinbase = dataset_import(path=write(tmp_path, coinbase_text, "cb.csv"), symbol="BTC-USD",
                              timeframe="5m")
    assert coinbase.pk == generic.pk
    other_symbol = dataset_import(path=write(tmp_path, coinbase_text, "cb.csv"),
                                  symbol="BTC-USDT", timeframe="5m")
    assert other_symbol.pk != generic.pk


@pytest.mark.django_db
def test_a_bad_file_creates_nothing(tmp_path, media):
    text = generic_csv(BARS).replace(GOOD_LINE_3, f"{T0 + 300},101,99,100,102,5")
    with pytest.raises(MarketDataError, match="line 3"):
        dataset_import(path=write(tmp_path, text), symbol="BTC-USD", timeframe="5m")
    assert not Dataset.objects.exists()
    assert not (media / "datasets").exists() or not any((media / "datasets").iterdir())


@pytest.mark.django_db
def test_dataset_create_synthetic_is_seeded_and_idempotent(media):
    dataset = dataset_create_synthetic(bars=1_000, seed=11)
    assert dataset_create_synthetic(bars=1_000, seed=11).pk == dataset.pk
    assert dataset_create_synthetic(bars=1_000, seed=12).pk != dataset.pk

    assert (dataset.symbol, dataset.timeframe, dataset.exchange) == ("BTC-USD", "5m", "synthetic")
    assert (dataset.bar_count, dataset.gaps) == (1_000, 0)
    data = read_candles(dataset.file.path, expected_sha256=dataset.sha256)
    expected = synthetic_ohlcv(1_000, seed=11, bar_seconds=300)
    assert np.array_equal(data.close, expected.close)
    assert np.array_equal(data.timestamp, expected.timestamp)


@pytest.mark.django_db
def test_dataset_refuses_bad_symbols(media):
    with pytest.raises(MarketDataError, match="symbol"):
        dataset_create_synthetic(bars=100, seed=1, symbol="")
    with pytest.raises(MarketDataError, match="symbol"):
        dataset_create_synthetic(bars=100, seed=1, symbol="X" * 31)


# --- commands ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_import_candles_command_reports_and_is_idempotent(tmp_path, media):
    rows = [BARS[2], BARS[0], BARS[0], BARS[1], (T0 + 1500, 103, 105, 102, 104, 1)]
    path = write(tmp_path, generic_csv(rows), "BTC-USD-5m.csv")

    out = io.StringIO()
    call_command("import_candles", str(path), "--symbol", "BTC-USD", "--timeframe", "5m",
                 "--exchange", "coinbase", stdout=out)
    dataset = Dataset.objects.get()
    assert out.getvalue().splitlines() == [
        "Read 5 rows (layout: generic)",
        "Duplicates dropped: 1",
        "Gaps: 2 missing bars in 1 gap; the largest is 2 bars after 2024-01-01T00:10:00Z",
        f"Created data set #{dataset.pk}: BTC-USD 5m, 4 bars from 2024-01-01T00:00:00Z to "
        "2024-01-01T00:25:00Z",
        f"sha256 {dataset.sha256}",
    ]

    out = io.StringIO()
    call_command("import_candles", str(path), "--symbol", "BTC-USD", "--timeframe", "5m",
                 stdout=out)
    assert f"Already imported as data set #{dataset.pk}" in out.getvalue()
    assert Dataset.objects.count() == 1


@pytest.mark.django_db
def test_import_candles_command_fails_with_one_clear_line(tmp_path, media):
    text = generic_csv(BARS).replace(GOOD_LINE_3, f"{T0 + 300},101,103,100,102,-5")
    path = write(tmp_path, text, "bad.csv")
    with pytest.raises(CommandError) as caught:
        call_command("import_candles", str(path), "--symbol", "BTC-USD", "--timeframe", "5m",
                     stdout=io.StringIO())
    assert str(caught.value) == "bad.csv line 3: volume -5.0 is negative"
    assert not Dataset.objects.exists()


@pytest.mark.django_db
def test_make_demo_data_command(media):
    out = io.StringIO()
    call_command("make_demo_data", "--bars", "2000", "--seed", "5", stdout=out)
    dataset = Dataset.objects.get()
    assert out.getvalue().splitlines() == [
        f"Data set #{dataset.pk}: BTC-USD 5m (2,000 bars) synthetic, seed 5, "
        "2020-01-01T00:00:00Z to 2020-01-07T22:35:00Z",
        f"sha256 {dataset.sha256}",
    ]
    call_command("make_demo_data", "--bars", "2000", "--seed", "5", stdout=io.StringIO())
    assert Dataset.objects.count() == 1
