"""The binary candle file: exact round trip, byte-for-byte determinism, refusal of bad files."""

import hashlib
import os
import stat
import struct

import numpy as np
import pytest

from worker_client import datafile
from worker_client.datafile import (
    DataFileError,
    DataFileHeader,
    file_sha256,
    read_candles,
    read_header,
    timeframe_seconds,
    write_candles,
)
from worker_client.engine import OHLCV, synthetic_ohlcv

COLUMNS = ("timestamp", "open", "high", "low", "close", "volume")


def three_bars() -> OHLCV:
    return OHLCV.from_arrays(
        [1_704_067_200, 1_704_067_500, 1_704_067_800],
        [100.0, 101.5, 101.0],
        [102.0, 103.0, 101.25],
        [99.5, 101.0, 99.0],
        [101.5, 101.0, 100.0],
        [12.5, 0.0, 3.25],
    )


def assert_same_candles(a: OHLCV, b: OHLCV) -> None:
    for name in COLUMNS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), name  # bit for bit


def test_round_trip_is_exact(tmp_path):
    data = synthetic_ohlcv(5_000, seed=7)
    path = tmp_path / "btc.sahc"
    sha = write_candles(path, data, symbol="BTC-USD", timeframe="5m")

    back = read_candles(path, expected_sha256=sha)

    assert_same_candles(data, back)
    assert back.timestamp.dtype == np.int64 and back.close.dtype == np.float64
    assert all(getattr(back, name).flags.writeable for name in COLUMNS)
    assert read_header(path) == DataFileHeader(symbol="BTC-USD", timeframe="5m",
                                               bar_seconds=300, n_bars=5_000)


def test_same_candles_give_the_same_bytes_and_sha256(tmp_path):
    a, b = tmp_path / "a.sahc", tmp_path / "b.sahc"
    sha_a = write_candles(a, synthetic_ohlcv(2_000, seed=3), symbol="ETH-USD", timeframe="1h")
    sha_b = write_candles(b, synthetic_ohlcv(2_000, seed=3), symbol="ETH-USD", timeframe="1h")

    assert a.read_bytes() == b.read_bytes()
    assert sha_a == sha_b == file_sha256(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    other = write_candles(tmp_path / "c.sahc", synthetic_ohlcv(2_000, seed=4),
                          symbol="ETH-USD", timeframe="1h")
    assert other != sha_a


def test_known_file_has_a_known_sha256(tmp_path):
    # Pinned: a change here changes every stored data set's name and every cached download.
    path = tmp_path / "x.sahc"
    sha = write_candles(path, three_bars(), symbol="BTC-USD", timeframe="5m")

    by_hand = (b"SAHC\x01" + b'{"bar_seconds":300,"columns":["timestamp","open","high","low",'
               b'"close","volume"],"n_bars":3,"symbol":"BTC-USD","timeframe":"5m"}\n'
               + struct.pack("<3q", 1_704_067_200, 1_704_067_500, 1_704_067_800)
               + struct.pack("<15d", 100.0, 101.5, 101.0, 102.0, 103.0, 101.25, 99.5, 101.0,
                             99.0, 101.5, 101.0, 100.0, 12.5, 0.0, 3.25))
    assert path.read_bytes() == by_hand
    assert sha == "a9c35389201f0b6f9e857cb9f0c3d799b8c70ad822a1679310bd21d409fe61d1"


def test_negative_zero_is_written_as_zero(tmp_path):
    base = three_bars()
    minus = OHLCV.from_arrays(base.timestamp, base.open, base.high, base.low, base.close,
                              [12.5, -0.0, 3.25])
    sha_plus = write_candles(tmp_path / "p.sahc", base, symbol="BTC-USD", timeframe="5m")
    sha_minus = write_candles(tmp_path / "m.sahc", minus, symbol="BTC-USD", timeframe="5m")
    assert sha_plus == sha_minus


def test_sha256_mismatch_is_refused(tmp_path):
    path = tmp_path / "x.sahc"
    sha = write_candles(path, three_bars(), symbol="BTC-USD", timeframe="5m")
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # one bit of the last volume
    path.write_bytes(bytes(raw))

    with pytest.raises(DataFileError, match="sha256"):
        read_candles(path, expected_sha256=sha)
    with pytest.raises(DataFileError, match="sha256"):
        read_candles(path, expected_sha256="0" * 64)


@pytest.mark.parametrize("keep", [0, 3, 5, 40, 150, -1])
def test_truncated_file_is_refused_even_without_a_checksum(tmp_path, keep):
    path = tmp_path / "x.sahc"
    sha = write_candles(path, three_bars(), symbol="BTC-USD", timeframe="5m")
    raw = path.read_bytes()
    path.write_bytes(raw[:keep] if keep >= 0 else raw[:-8])

    with pytest.raises(DataFileError):
        read_candles(path)
    with pytest.raises(DataFileError):
        read_candles(path, expected_sha256=sha)


def test_trailing_bytes_are_refused(tmp_path):
    path = tmp_path / "x.sahc"
    write_candles(path, three_bars(), symbol="BTC-USD", timeframe="5m")
    path.write_bytes(path.read_bytes() + b"\0" * 8)
    with pytest.raises(DataFileError, match="extra bytes"):
        read_candles(path)


@pytest.mark.parametrize(("old", "new", "message"), [
    (b"SAHC\x01", b"SAHX\x01", "bad magic"),
    (b"SAHC\x01", b"SAHC\x02", "version 2"),
    (b'"n_bars":3', b'"n_bars":4', "truncated"),
    (b'"n_bars":3', b'"n_bars":2', "extra bytes"),
    (b'"bar_seconds":300', b'"bar_seconds":600', "does not match"),
    (b'"timeframe":"5m"', b'"timeframe":"7m"', "unknown timeframe"),
    (b'"n_bars":3,', b'"n_bars": 3,', "canonical"),
    (b'"columns":["timestamp",', b'"columns":["time",', "columns"),
])
def test_bad_headers_are_refused(tmp_path, old, new, message):
    path = tmp_path / "x.sahc"
    write_candles(path, three_bars(), symbol="BTC-USD", timeframe="5m")
    path.write_bytes(path.read_bytes().replace(old, new, 1))
    with pytest.raises(DataFileError, match=message):
        read_candles(path)


def test_missing_file_is_a_data_file_error(tmp_path):
    with pytest.raises(DataFileError, match="cannot read"):
        read_candles(tmp_path / "nope.sahc")


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "x.sahc"

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(datafile.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_candles(path, three_bars(), symbol="BTC-USD", timeframe="5m")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "x.sahc"
    sha = write_candles(path, three_bars(), symbol="BTC-USD", timeframe="5m")

    def crash(src, dst):
        raise OSError("crash before the rename")

    monkeypatch.setattr(datafile.os, "replace", crash)
    with pytest.raises(OSError, match="crash"):
        write_candles(path, synthetic_ohlcv(100, seed=1), symbol="BTC-USD", timeframe="5m")
    assert [p.name for p in tmp_path.iterdir()] == ["x.sahc"]
    assert_same_candles(read_candles(path, expected_sha256=sha), three_bars())


def test_invalid_candles_are_not_written(tmp_path):
    good = three_bars()
    bad = OHLCV(good.timestamp, good.open, good.low, good.high, good.close, good.volume)
    with pytest.raises(ValueError, match="inconsistent"):
        write_candles(tmp_path / "x.sahc", bad, symbol="BTC-USD", timeframe="5m")
    with pytest.raises(DataFileError, match="symbol"):
        write_candles(tmp_path / "x.sahc", good, symbol=" ", timeframe="5m")
    assert list(tmp_path.iterdir()) == []


def test_timeframes():
    assert [timeframe_seconds(t) for t in ("1m", "5m", "15m", "1h", "4h", "1d")] == [
        60, 300, 900, 3600, 14400, 86400]
    for bad in ("5", "1w", "1M", "", "5 m"):
        with pytest.raises(DataFileError, match="unknown timeframe"):
            timeframe_seconds(bad)



@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_written_file_is_world_readable(tmp_path):
    path = tmp_path / "x.sahc"
    write_candles(path, three_bars(), symbol="BTC-USD", timeframe="5m")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
