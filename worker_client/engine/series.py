"""The series a genome can refer to, by canonical key, and the shared table they are computed into.

A key names one output of one indicator with its parameters: ``close``, ``sma(20)``,
``macd.signal(12,26,9)``, ``bb.pctb(20,2)``. Keys are canonical (one spelling per series) so that
a population's distinct series can be found by comparing strings, and each is computed once.

Series that share a *scale* can be compared with each other (``close > ema(200)``,
``macd.line crosses above macd.signal``); scales with a threshold range can also be compared
with a number (``rsi(14) < 30``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import indicators as ind
from .data import OHLCV

# Scales: which series are comparable, and the threshold range when a number is allowed.
PRICE = "price"  # close and price-level indicators; compared with each other only
OSCILLATOR = "oscillator"  # 0..100 (RSI, stochastic %K)
PERCENT_B = "percent_b"  # Bollinger %B, about 0..1
ROC = "roc"  # percent change over n bars
VOLATILITY = "volatility"  # percent per bar
NATR = "natr"  # ATR as percent of close
MACD = "macd"  # price units around zero: compared with each other and with 0
ATR = "atr"  # a price distance

THRESHOLD_RANGES: dict[str, tuple[float, float, float]] = {
    # scale: (lowest, highest, step) of the thresholds the search may use
    OSCILLATOR: (5.0, 95.0, 1.0),
    PERCENT_B: (-0.2, 1.2, 0.05),
    ROC: (-5.0, 5.0, 0.1),
    VOLATILITY: (0.02, 1.0, 0.02),
    NATR: (0.02, 2.0, 0.02),
    MACD: (0.0, 0.0, 1.0),
}


class SeriesKeyError(ValueError):
    """A series key that does not name a known indicator output with valid parameters."""


@dataclass(frozen=True)
class IndicatorDef:
    name: str
    label: str  # plain-words name, e.g. "RSI"
    params: tuple[tuple[str, type, float, float], ...]  # (name, int|float, min, max)
    outputs: dict[str, str]  # output name ("" when single) -> scale
    compute: Callable[..., np.ndarray | tuple[np.ndarray, ...]]


def _macd(d: OHLCV, fast: int, slow: int, signal: int) -> tuple[np.ndarray, ...]:
    return ind.macd(d.close, fast, slow, signal)


INDICATORS: dict[str, IndicatorDef] = {
    d.name: d
    for d in (
        IndicatorDef("sma", "SMA", (("period", int, 1, 5000),), {"": PRICE},
                     lambda d, n: ind.sma(d.close, n)),
        IndicatorDef("ema", "EMA", (("period", int, 1, 5000),), {"": PRICE},
                     lambda d, n: ind.ema(d.close, n)),
        IndicatorDef("rsi", "RSI", (("period", int, 2, 1000),), {"": OSCILLATOR},
                     lambda d, n: ind.rsi(d.close, n)),
        IndicatorDef("macd", "MACD",
                     (("fast", int, 1, 1000), ("slow", int, 2, 2000), ("signal", int, 1, 1000)),
                     {"line": MACD, "signal": MACD, "hist": MACD}, _macd),
        IndicatorDef("bb", "Bollinger",
                     (("period", int, 2, 2000), ("k", float, 0.1, 10.0)),
                     {"mid": PRICE, "upper": PRICE, "lower": PRICE, "pctb": PERCENT_B},
                     lambda d, n, k: ind.bollinger(d.close, n, k)),
        # ATR is a distance in price units, not a level: it is comparable only with itself.
        IndicatorDef("atr", "ATR", (("period", int, 1, 1000),), {"": ATR},
                     lambda d, n: ind.atr(d.high, d.low, d.close, n)),
        IndicatorDef("natr", "ATR%", (("period", int, 1, 1000),), {"": NATR},
                     lambda d, n: ind.natr(d.high, d.low, d.close, n)),
        IndicatorDef("roc", "ROC", (("period", int, 1, 5000),), {"": ROC},
                     lambda d, n: ind.roc(d.close, n)),
        IndicatorDef("stoch_k", "Stochastic %K", (("period", int, 1, 1000),), {"": OSCILLATOR},
                     lambda d, n: ind.stoch_k(d.high, d.low, d.close, n)),
        IndicatorDef("volatility", "volatility", (("period", int, 2, 5000),), {"": VOLATILITY},
                     lambda d, n: ind.volatility(d.close, n)),
        IndicatorDef("highest", "high", (("period", int, 1, 5000),), {"": PRICE},
                     lambda d, n: ind.highest(d.high, n)),
        IndicatorDef("lowest", "low", (("period", int, 1, 5000),), {"": PRICE},
                     lambda d, n: ind.lowest(d.low, n)),
    )
}

PRICE_KEYS = ("close",)  # raw price a rule may use ("close > EMA(200)")

_KEY = re.compile(r"^([a-z_]+)(?:\.([a-z]+))?(?:\(([^()]*)\))?$")


def format_number(x: float) -> str:
    """One spelling per number: ``2`` for 2.0, ``2.5`` for 2.5 (shortest round-trip repr)."""
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


@dataclass(frozen=True)
class SeriesKey:
    """A parsed key: indicator name, output ("" for single-output) and parameters."""

    name: str
    output: str
    params: tuple[float, ...]

    @property
    def indicator(self) -> IndicatorDef | None:
        return INDICATORS.get(self.name)

    @property
    def scale(self) -> str:
        if self.name in PRICE_KEYS:
            return PRICE
        definition = self.indicator
        assert definition is not None
        return definition.outputs[self.output]

    def __str__(self) -> str:
        if self.name in PRICE_KEYS:
            return self.name
        out = f".{self.output}" if self.output else ""
        return f"{self.name}{out}({','.join(format_number(p) for p in self.params)})"

    def label(self) -> str:
        """Plain words: ``RSI(14)``, ``MACD signal(12,26,9)``, ``20-bar high``."""
        if self.name in PRICE_KEYS:
            return self.name
        definition = self.indicator
        assert definition is not None
        args = ", ".join(format_number(p) for p in self.params)
        if self.name in ("highest", "lowest"):
            return f"{args}-bar {definition.label}"
        if self.name == "bb":
            return {"pctb": f"Bollinger %B({args})", "mid": f"Bollinger middle({args})"}.get(
                self.output, f"{self.output} Bollinger band({args})")
        if self.name == "macd":
            suffix = {"line": "", "signal": " signal", "hist": " histogram"}[self.output]
            return f"MACD{suffix}({args})"
        return f"{definition.label}({args})"


@lru_cache(maxsize=4096)
def parse_key(key: str) -> SeriesKey:
    """Parse and validate a series key; raises :class:`SeriesKeyError` saying what is wrong."""
    if not isinstance(key, str):
        raise SeriesKeyError(f"a series key must be a string, got {type(key).__name__}")
    match = _KEY.match(key)
    if not match:
        raise SeriesKeyError(f"{key!r} is not a series key like 'rsi(14)' or "
                             "'macd.signal(12,26,9)'")
    name, output, raw_params = match.group(1), match.group(2) or "", match.group(3)
    if name in PRICE_KEYS:
        if output or raw_params is not None:
            raise SeriesKeyError(f"{key!r}: '{name}' takes no output or parameters")
        return SeriesKey(name, "", ())
    definition = INDICATORS.get(name)
    if definition is None:
        known = ", ".join(sorted([*PRICE_KEYS, *INDICATORS]))
        raise SeriesKeyError(f"{key!r}: unknown indicator '{name}' (known: {known})")
    if output not in definition.outputs:
        choices = ", ".join(repr(o) for o in definition.outputs if o) or "none"
        raise SeriesKeyError(f"{key!r}: '{name}' has no output {output!r} (outputs: {choices})")
    texts = [] if not raw_params else [p.strip() for p in raw_params.split(",")]
    if len(texts) != len(definition.params):
        names = ", ".join(p[0] for p in definition.params)
        raise SeriesKeyError(f"{key!r}: '{name}' takes {len(definition.params)} parameters "
                             f"({names})")
    params = []
    for text, (pname, kind, lo, hi) in zip(texts, definition.params, strict=True):
        try:
            value = float(text)
        except ValueError:
            raise SeriesKeyError(f"{key!r}: {pname} must be a number, got {text!r}") from None
        if kind is int and not value.is_integer():
            raise SeriesKeyError(f"{key!r}: {pname} must be a whole number, got {text}")
        if not lo <= value <= hi:
            raise SeriesKeyError(f"{key!r}: {pname} must be in [{format_number(lo)}, "
                                 f"{format_number(hi)}], got {text}")
        params.append(value)
    if name == "macd" and not params[0] < params[1]:
        raise SeriesKeyError(f"{key!r}: the fast period must be shorter than the slow one")
    parsed = SeriesKey(name, output, tuple(params))
    if str(parsed) != key:
        raise SeriesKeyError(f"{key!r} is not in canonical form; write {str(parsed)!r}")
    return parsed


def compute(data: OHLCV, key: str) -> np.ndarray:
    """One series over the whole data set (NaN during its warm-up)."""
    parsed = parse_key(key)
    return _compute_group(data, parsed)[parsed.output]


def _compute_group(data: OHLCV, k: SeriesKey) -> dict[str, np.ndarray]:
    if k.name == "close":
        return {"": data.close}
    definition = k.indicator
    assert definition is not None
    args = [int(p) if kind is int else p for p, (_, kind, _, _) in
            zip(k.params, definition.params, strict=True)]
    values = definition.compute(data, *args)
    outputs = list(definition.outputs)
    if isinstance(values, tuple):
        if definition.name == "bb":  # bollinger returns (mid, upper, lower, pctb)
            return dict(zip(("mid", "upper", "lower", "pctb"), values, strict=True))
        return dict(zip(outputs, values, strict=True))
    return {outputs[0]: values}


class FeatureTable:
    """Distinct series computed once each, rows of one C-contiguous (series × bars) array.

    A GA epoch keeps one table across its generations, so a series computed for generation 1
    is reused by every later genome that mentions it.
    """

    def __init__(self, data: OHLCV):
        self.data = data
        self._rows: dict[str, int] = {}
        self._table = np.empty((0, len(data)), dtype=np.float64)
        self._used = 0

    @property
    def table(self) -> np.ndarray:
        return self._table[: self._used]

    def row(self, key: str) -> int:
        return self._rows[key]

    def ensure(self, keys: Iterable[str]) -> None:
        """Compute every key not yet in the table (multi-output indicators once per group)."""
        missing = sorted({k for k in keys if k not in self._rows})
        if not missing:
            return
        needed = self._used + len(missing)
        if needed > self._table.shape[0]:
            grown = np.empty((max(needed, 2 * self._table.shape[0], 8), len(self.data)))
            grown[: self._used] = self._table[: self._used]
            self._table = grown
        groups: dict[SeriesKey, list[str]] = {}
        for key in missing:
            parsed = parse_key(key)
            groups.setdefault(SeriesKey(parsed.name, "", parsed.params), []).append(key)
        for group, keys_in_group in groups.items():
            outputs = _compute_group(self.data, group)
            for key in keys_in_group:
                self._table[self._used] = outputs[parse_key(key).output]
                self._rows[key] = self._used
                self._used += 1

    @property
    def nbytes(self) -> int:
        return int(self._table.nbytes)
