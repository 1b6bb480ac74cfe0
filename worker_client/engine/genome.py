"""Strategy genomes: a fixed-size record of rules and risk settings, with a canonical JSON form.

A genome is data, never code: it names series by key (see :mod:`.series`) and comparison
operators from a closed list, so a worker interprets it with its own engine and nothing the
server sends is ever executed.

Canonical form: ``to_json()`` writes sorted keys, no spaces, floats in their shortest
round-trip spelling; ``from_json(g.to_json()) == g`` and ``hash`` is the sha256 of that text,
so two hosts name the same strategy with the same 64 hex digits.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .series import THRESHOLD_RANGES, SeriesKeyError, format_number, parse_key

SCHEMA_VERSION = 1
MAX_CONDITIONS = 3  # per rule; conditions are joined by AND
OPERATORS = ("gt", "lt", "cross_above", "cross_below")
DIRECTIONS = ("long", "short", "long_short")
# Bounds every genome must respect, whatever the search space (which may narrow them).
STOP_LOSS_RANGE = (0.0005, 0.5)  # fraction of the entry price
TAKE_PROFIT_RANGE = (0.0005, 5.0)
TRAILING_STOP_RANGE = (0.0005, 0.5)
SIZE_RANGE = (0.01, 1.0)  # fraction of equity committed per trade (no leverage)

_OP_WORDS = {"gt": ">", "lt": "<", "cross_above": "crosses above", "cross_below": "crosses below"}


class GenomeError(ValueError):
    """A genome that is malformed or has a gene out of range; the message names the gene."""


@dataclass(frozen=True)
class Condition:
    """``a op b``: ``a`` a series key; ``b`` a series key of the same scale, or a number."""

    a: str
    op: str
    b: str | float

    def __post_init__(self) -> None:
        if isinstance(self.b, int) and not isinstance(self.b, bool):
            object.__setattr__(self, "b", float(self.b))  # 30 and 30.0 are one threshold

    def validate(self, where: str) -> None:
        try:
            a = parse_key(self.a)
        except SeriesKeyError as exc:
            raise GenomeError(f"{where}.a: {exc}") from None
        if self.op not in OPERATORS:
            raise GenomeError(f"{where}.op: {self.op!r} is not one of {', '.join(OPERATORS)}")
        if isinstance(self.b, str):
            try:
                b = parse_key(self.b)
            except SeriesKeyError as exc:
                raise GenomeError(f"{where}.b: {exc}") from None
            if a.scale != b.scale:
                raise GenomeError(f"{where}: {self.a} ({a.scale}) cannot be compared with "
                                  f"{self.b} ({b.scale})")
            if self.a == self.b:
                raise GenomeError(f"{where}: compares {self.a} with itself")
        elif isinstance(self.b, float) and not isinstance(self.b, bool):
            if a.scale not in THRESHOLD_RANGES:
                raise GenomeError(f"{where}.b: {self.a} is a {a.scale} series; compare it with "
                                  "another series, not a number")
            lo, hi, _ = THRESHOLD_RANGES[a.scale]
            if not (math.isfinite(self.b) and lo <= self.b <= hi):
                raise GenomeError(f"{where}.b: threshold for {self.a} must be in "
                                  f"[{format_number(lo)}, {format_number(hi)}], got {self.b!r}")
        else:
            raise GenomeError(f"{where}.b: must be a series key or a float, got {self.b!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "op": self.op, "b": self.b}

    def words(self) -> str:
        b = parse_key(self.b).label() if isinstance(self.b, str) else format_number(self.b)
        return f"{parse_key(self.a).label()} {_OP_WORDS[self.op]} {b}"


@dataclass(frozen=True)
class Genome:
    """One strategy. Fractions are of the entry price (stops) or of equity (``size``)."""

    entry: tuple[Condition, ...]
    exit: tuple[Condition, ...] = ()
    direction: str = "long"
    stop_loss: float | None = None
    take_profit: float | None = None
    trailing_stop: float | None = None
    size: float = 1.0
    _json: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Normalise containers and numbers first so equal strategies compare and hash equal.
        object.__setattr__(self, "entry", tuple(self.entry))
        object.__setattr__(self, "exit", tuple(self.exit))
        for name in ("stop_loss", "take_profit", "trailing_stop", "size"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        self._validate()
        object.__setattr__(self, "_json", json.dumps(self.to_dict(), sort_keys=True,
                                                     separators=(",", ":"), allow_nan=False))

    def _validate(self) -> None:
        if not 1 <= len(self.entry) <= MAX_CONDITIONS:
            raise GenomeError(f"entry: needs 1 to {MAX_CONDITIONS} conditions, "
                              f"got {len(self.entry)}")
        if len(self.exit) > MAX_CONDITIONS:
            raise GenomeError(f"exit: at most {MAX_CONDITIONS} conditions, got {len(self.exit)}")
        for rule_name in ("entry", "exit"):
            rule = getattr(self, rule_name)
            for i, cond in enumerate(rule):
                if not isinstance(cond, Condition):
                    raise GenomeError(f"{rule_name}[{i}]: expected a Condition, got {cond!r}")
                cond.validate(f"{rule_name}[{i}]")
            if len(set(rule)) != len(rule):
                raise GenomeError(f"{rule_name}: the same condition appears twice")
        if self.direction not in DIRECTIONS:
            raise GenomeError(f"direction: {self.direction!r} is not one of "
                              f"{', '.join(DIRECTIONS)}")
        for name, bounds in (("stop_loss", STOP_LOSS_RANGE), ("take_profit", TAKE_PROFIT_RANGE),
                             ("trailing_stop", TRAILING_STOP_RANGE)):
            value = getattr(self, name)
            if value is not None:
                _check_fraction(name, value, bounds)
        _check_fraction("size", self.size, SIZE_RANGE)

    # -- canonical form -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "entry": [c.to_dict() for c in self.entry],
            "exit": [c.to_dict() for c in self.exit],
            "direction": self.direction,
            "stop_loss": self.stop_loss,
            "take_profit": self.take_profit,
            "trailing_stop": self.trailing_stop,
            "size": self.size,
        }

    def to_json(self) -> str:
        return self._json

    @property
    def hash(self) -> str:
        return hashlib.sha256(self._json.encode()).hexdigest()

    @classmethod
    def from_dict(cls, raw: Any) -> Genome:
        """Build from parsed JSON, strictly: unknown or missing fields are errors."""
        if not isinstance(raw, dict):
            raise GenomeError(f"a genome must be a JSON object, got {type(raw).__name__}")
        expected = {"v", "entry", "exit", "direction", "stop_loss", "take_profit",
                    "trailing_stop", "size"}
        if set(raw) != expected:
            unknown, missing = set(raw) - expected, expected - set(raw)
            parts = ([f"unknown field(s) {sorted(unknown)}"] if unknown else []) + (
                [f"missing field(s) {sorted(missing)}"] if missing else [])
            raise GenomeError("genome: " + "; ".join(parts))
        if type(raw["v"]) is not int or raw["v"] != SCHEMA_VERSION:
            raise GenomeError(f"v: this engine reads genome version {SCHEMA_VERSION}, "
                              f"got {raw['v']!r}")
        return cls(
            entry=_conditions(raw["entry"], "entry"),
            exit=_conditions(raw["exit"], "exit"),
            direction=raw["direction"],
            stop_loss=_optional_float(raw["stop_loss"], "stop_loss"),
            take_profit=_optional_float(raw["take_profit"], "take_profit"),
            trailing_stop=_optional_float(raw["trailing_stop"], "trailing_stop"),
            size=_float(raw["size"], "size"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Genome:
        try:
            raw = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise GenomeError(f"not valid JSON: {exc}") from None
        return cls.from_dict(raw)

    # -- reading ---------------------------------------------------------------------------

    def series_keys(self) -> set[str]:
        """Every series this genome reads (what the feature table must hold for it)."""
        keys = set()
        for cond in (*self.entry, *self.exit):
            keys.add(cond.a)
            if isinstance(cond.b, str):
                keys.add(cond.b)
        return keys

    def describe(self) -> str:
        """Plain words: 'Buy when RSI(14) crosses above 30 and close > EMA(200); sell when …'."""
        entry = " and ".join(c.words() for c in self.entry)
        exit_ = " and ".join(c.words() for c in self.exit)
        open_verb, close_verb = {
            "long": ("Buy", "sell"), "short": ("Sell short", "buy to cover"),
            "long_short": ("Go long", "go short"),
        }[self.direction]
        parts = [f"{open_verb} when {entry}"]
        if exit_:
            parts.append(f"{close_verb} when {exit_}")
        for name, label in (("stop_loss", "stop-loss"), ("take_profit", "take-profit"),
                            ("trailing_stop", "trailing stop")):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{label} {format_number(round(value * 100, 6))} %")
        if self.size != 1.0:
            parts.append(f"{format_number(round(self.size * 100, 6))} % of equity per trade")
        return "; ".join(parts)

    def __str__(self) -> str:
        return self.describe()

    @classmethod
    def sma_crossover(cls, fast: int, slow: int, **risk: Any) -> Genome:
        """The classic: buy when SMA(fast) crosses above SMA(slow), sell on the cross below."""
        f, s = f"sma({fast})", f"sma({slow})"
        return cls(entry=(Condition(f, "cross_above", s),),
                   exit=(Condition(f, "cross_below", s),), **risk)


def _check_fraction(name: str, value: Any, bounds: tuple[float, float]) -> None:
    if not isinstance(value, float) or isinstance(value, bool):
        raise GenomeError(f"{name}: must be a float, got {value!r}")
    lo, hi = bounds
    if not (math.isfinite(value) and lo <= value <= hi):
        raise GenomeError(f"{name}: must be in [{format_number(lo)}, {format_number(hi)}], "
                          f"got {value!r}")


def _float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GenomeError(f"{name}: must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise GenomeError(f"{name}: {str(value)[:20]}… is too large") from None


def _optional_float(value: Any, name: str) -> float | None:
    return None if value is None else _float(value, name)


def _conditions(raw: Any, rule: str) -> tuple[Condition, ...]:
    if not isinstance(raw, list):
        raise GenomeError(f"{rule}: must be a list of conditions")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"a", "op", "b"}:
            raise GenomeError(f"{rule}[{i}]: must be an object with exactly 'a', 'op' and 'b'")
        b = item["b"]
        if not isinstance(b, str):
            b = _float(b, f"{rule}[{i}].b")
        if not isinstance(item["a"], str) or not isinstance(item["op"], str):
            raise GenomeError(f"{rule}[{i}]: 'a' and 'op' must be strings")
        out.append(Condition(item["a"], item["op"], b))
    return tuple(out)
