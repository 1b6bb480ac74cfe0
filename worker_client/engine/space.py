"""The search space: which genomes the GA may build, and its variation operators.

Parameters come from small grids (periods, multipliers, thresholds with a step), so that a
population mentions a bounded number of distinct series — each computed once and shared — and
so that every gene has a canonical value. All randomness comes from the ``numpy.random.Generator``
passed in (integers and uniforms only), so the same seed gives the same genomes everywhere.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .genome import (
    DIRECTIONS,
    MAX_CONDITIONS,
    SIZE_RANGE,
    STOP_LOSS_RANGE,
    TAKE_PROFIT_RANGE,
    TRAILING_STOP_RANGE,
    Condition,
    Genome,
    GenomeError,
)
from .series import (
    INDICATORS,
    PRICE,
    THRESHOLD_RANGES,
    SeriesKeyError,
    format_number,
    parse_key,
)

_OPERATORS = ("gt", "lt", "cross_above", "cross_below")
_DEFAULT_INDICATORS = ("sma", "ema", "rsi", "macd", "bb", "natr", "roc", "stoch_k",
                       "volatility", "highest", "lowest")


class SpaceError(ValueError):
    """A search space that cannot be used (unknown indicator, empty grid …)."""


def _grid(lo: float, hi: float, step: float) -> tuple[float, ...]:
    count = round((hi - lo) / step) + 1
    return tuple(float(format_number(round(lo + i * step, 10))) for i in range(count))


@dataclass(frozen=True)
class SearchSpace:
    """What the GA may try. Stored with each campaign as JSON (``to_dict``/``from_dict``)."""

    indicators: tuple[str, ...] = _DEFAULT_INDICATORS
    periods: tuple[int, ...] = (5, 7, 10, 14, 20, 30, 50, 100, 200)
    macd_params: tuple[tuple[int, int, int], ...] = ((12, 26, 9), (8, 17, 9), (5, 35, 5))
    bollinger_k: tuple[float, ...] = (2.0,)
    max_conditions: int = 2
    directions: tuple[str, ...] = ("long",)
    stop_loss: tuple[float, ...] = (0.005, 0.01, 0.02, 0.03, 0.05)
    take_profit: tuple[float, ...] = (0.01, 0.02, 0.04, 0.06, 0.1)
    trailing_stop: tuple[float, ...] = (0.005, 0.01, 0.02, 0.04)
    sizes: tuple[float, ...] = (1.0,)  # the campaign's risk level: fractions of equity
    stop_probability: float = 0.5  # chance that a new genome has each of the three stops
    _series: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)
    _usable: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)
    _by_scale: dict[str, tuple[str, ...]] = field(default_factory=dict, init=False, repr=False,
                                                  compare=False)

    def __post_init__(self) -> None:
        for name in ("indicators", "periods", "macd_params", "bollinger_k", "directions",
                     "stop_loss", "take_profit", "trailing_stop", "sizes"):
            value = getattr(self, name)
            if name == "macd_params":
                value = tuple(tuple(int(x) for x in triple) for triple in value)
            else:
                value = tuple(value)
            object.__setattr__(self, name, value)
        for p in self.periods:
            if not isinstance(p, int) or isinstance(p, bool) or p < 1:
                raise SpaceError(f"periods must be positive whole numbers, got {p!r}")
        if not isinstance(self.max_conditions, int) or isinstance(self.max_conditions, bool):
            raise SpaceError(f"max_conditions must be a whole number, got {self.max_conditions!r}")
        unknown = set(self.indicators) - set(INDICATORS)
        if unknown:
            raise SpaceError(f"indicators: unknown {sorted(unknown)}; known: {sorted(INDICATORS)}")
        if not self.periods or not self.sizes or not self.directions:
            raise SpaceError("periods, sizes and directions must not be empty")
        if not 1 <= self.max_conditions <= MAX_CONDITIONS:
            raise SpaceError(f"max_conditions must be 1 to {MAX_CONDITIONS}")
        if not 0.0 <= self.stop_probability <= 1.0:
            raise SpaceError("stop_probability must be in [0, 1]")
        bad = set(self.directions) - set(DIRECTIONS)
        if bad:
            raise SpaceError(f"directions: unknown {sorted(bad)}")
        for name, bounds in (("stop_loss", STOP_LOSS_RANGE), ("take_profit", TAKE_PROFIT_RANGE),
                             ("trailing_stop", TRAILING_STOP_RANGE), ("sizes", SIZE_RANGE)):
            for x in getattr(self, name):
                if not bounds[0] <= x <= bounds[1]:
                    raise SpaceError(f"{name}: {x} is outside [{bounds[0]}, {bounds[1]}]")
        series = ["close"]
        for name in self.indicators:
            series.extend(self._keys_of(name))
        by_scale: dict[str, list[str]] = {}
        for key in series:
            try:
                scale = parse_key(key).scale  # every grid point must be a valid series
            except SeriesKeyError as exc:
                raise SpaceError(str(exc)) from None
            by_scale.setdefault(scale, []).append(key)
        # A series can start a condition if a number or another series can stand beside it.
        usable = tuple(k for k in series if parse_key(k).scale in THRESHOLD_RANGES
                       or len(by_scale[parse_key(k).scale]) > 1)
        if not usable:
            raise SpaceError("this space cannot build any condition: add an oscillator "
                             "(e.g. rsi) or two comparable series (e.g. sma and ema)")
        object.__setattr__(self, "_series", tuple(series))
        object.__setattr__(self, "_usable", usable)
        object.__setattr__(self, "_by_scale", {k: tuple(v) for k, v in by_scale.items()})

    def _keys_of(self, name: str) -> list[str]:
        outputs = [o for o in INDICATORS[name].outputs]
        if name == "macd":
            return [f"macd.{o}({f},{s},{g})" for f, s, g in self.macd_params for o in outputs]
        if name == "bb":  # the middle band is sma(n), already in the space when sma is
            return [f"bb.{o}({n},{format_number(k)})" for n in self.periods if n >= 2
                    for k in self.bollinger_k for o in outputs if o != "mid"]
        periods = [n for n in self.periods if n >= (2 if name in ("rsi", "volatility") else 1)]
        return [f"{name}({n})" for n in periods]

    @property
    def series(self) -> tuple[str, ...]:
        """Every series key a genome of this space may use."""
        return self._series

    # -- serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        for private in ("_series", "_usable", "_by_scale"):
            raw.pop(private)
        return {k: [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple)
                else v for k, v in raw.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SearchSpace:
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        unknown = set(raw) - known
        if unknown:
            raise SpaceError(f"unknown field(s) {sorted(unknown)}")
        try:
            return cls(**raw)
        except (TypeError, ValueError) as exc:
            raise SpaceError(str(exc)) from None

    # -- random genomes --------------------------------------------------------------------

    def _pick(self, rng: np.random.Generator, options: tuple[Any, ...] | list[Any]) -> Any:
        return options[int(rng.integers(len(options)))]

    def random_condition(self, rng: np.random.Generator) -> Condition:
        a = self._pick(rng, self._usable)
        scale = parse_key(a).scale
        peers = [k for k in self._by_scale[scale] if k != a]
        op = self._pick(rng, _OPERATORS)
        if scale in THRESHOLD_RANGES and (not peers or rng.random() < 0.7):
            return Condition(a, op, self._pick(rng, _grid(*THRESHOLD_RANGES[scale])))
        if scale == PRICE and a != "close" and rng.random() < 0.5:
            return Condition("close", op, a)  # "close > EMA(200)" reads naturally
        return Condition(a, op, self._pick(rng, peers))

    def _random_rule(self, rng: np.random.Generator, minimum: int) -> tuple[Condition, ...]:
        count = int(rng.integers(minimum, self.max_conditions + 1))
        rule: list[Condition] = []
        while len(rule) < count:
            cond = self.random_condition(rng)
            if cond not in rule:
                rule.append(cond)
        return tuple(rule)

    def _maybe(self, rng: np.random.Generator, options: tuple[float, ...]) -> float | None:
        if not options or rng.random() >= self.stop_probability:
            return None
        return float(self._pick(rng, options))

    def random_genome(self, rng: np.random.Generator) -> Genome:
        return Genome(
            entry=self._random_rule(rng, 1),
            exit=self._random_rule(rng, 0),
            direction=self._pick(rng, self.directions),
            stop_loss=self._maybe(rng, self.stop_loss),
            take_profit=self._maybe(rng, self.take_profit),
            trailing_stop=self._maybe(rng, self.trailing_stop),
            size=float(self._pick(rng, self.sizes)),
        )

    # -- variation -------------------------------------------------------------------------

    def crossover(self, mother: Genome, father: Genome, rng: np.random.Generator) -> Genome:
        """Uniform crossover of whole genes: each rule and each risk setting from either parent.

        With probability 1/2 the entry rule is instead mixed condition by condition.
        """
        def either(name: str) -> Any:
            return getattr(mother if rng.random() < 0.5 else father, name)

        if rng.random() < 0.5:
            pool = list(dict.fromkeys(mother.entry + father.entry))
            count = int(rng.integers(1, min(len(pool), self.max_conditions) + 1))
            order = rng.permutation(len(pool))[:count]
            entry = tuple(pool[i] for i in sorted(order))
        else:
            entry = either("entry")
        return Genome(entry=entry, exit=either("exit"), direction=either("direction"),
                      stop_loss=either("stop_loss"), take_profit=either("take_profit"),
                      trailing_stop=either("trailing_stop"), size=either("size"))

    def mutate(self, genome: Genome, rng: np.random.Generator) -> Genome:
        """One small change, chosen at random among the kinds below; always a valid genome."""
        for _ in range(8):  # a change can be impossible (e.g. removing the only condition)
            try:
                changed = self._mutate_once(genome, rng)
            except GenomeError:
                continue
            if changed is not None and changed != genome:
                return changed
        return self.random_genome(rng)  # nothing applied: a random immigrant instead

    def _mutate_once(self, g: Genome, rng: np.random.Generator) -> Genome | None:
        kind = int(rng.integers(7))
        rules = {"entry": list(g.entry), "exit": list(g.exit)}
        rule_name = "entry" if (not g.exit or rng.random() < 0.6) else "exit"
        rule = rules[rule_name]
        risk = {"stop_loss": g.stop_loss, "take_profit": g.take_profit,
                "trailing_stop": g.trailing_stop}
        if kind == 0 and rule:  # nudge one threshold along its grid
            i = int(rng.integers(len(rule)))
            cond = rule[i]
            if isinstance(cond.b, str):
                return None
            grid = _grid(*THRESHOLD_RANGES[parse_key(cond.a).scale])
            j = _nearest(grid, cond.b) + int(rng.integers(-3, 4))
            rule[i] = Condition(cond.a, cond.op, grid[min(max(j, 0), len(grid) - 1)])
        elif kind == 1 and rule:  # move one series to a neighbouring parameter
            i = int(rng.integers(len(rule)))
            cond = rule[i]
            side = "a" if isinstance(cond.b, float) or rng.random() < 0.5 else "b"
            key = getattr(cond, side)
            same = [k for k in self._series if parse_key(k).name == parse_key(key).name
                    and parse_key(k).output == parse_key(key).output]
            if len(same) < 2 or key not in same:
                return None
            j = same.index(key) + (1 if rng.random() < 0.5 else -1)
            new_key = same[min(max(j, 0), len(same) - 1)]
            rule[i] = Condition(new_key, cond.op, cond.b) if side == "a" else Condition(
                cond.a, cond.op, new_key)
        elif kind == 2 and rule:  # replace a condition
            rule[int(rng.integers(len(rule)))] = self.random_condition(rng)
        elif kind == 3:  # add a condition
            if len(rule) >= self.max_conditions:
                return None
            rule.append(self.random_condition(rng))
        elif kind == 4 and rule:  # remove a condition
            del rule[int(rng.integers(len(rule)))]
        elif kind == 5 and rule:  # flip an operator
            i = int(rng.integers(len(rule)))
            cond = rule[i]
            flipped = {"gt": "lt", "lt": "gt", "cross_above": "cross_below",
                       "cross_below": "cross_above"}[cond.op]
            rule[i] = Condition(cond.a, flipped, cond.b)
        elif kind == 6:  # change a risk setting: toggle it or move it along its grid
            name = ("stop_loss", "take_profit", "trailing_stop")[int(rng.integers(3))]
            grid = getattr(self, name)
            if not grid:
                return None
            current = risk[name]
            if current is None:
                risk[name] = float(self._pick(rng, grid))
            elif rng.random() < 0.3:
                risk[name] = None
            else:
                j = _nearest(grid, current) + (1 if rng.random() < 0.5 else -1)
                risk[name] = float(grid[min(max(j, 0), len(grid) - 1)])
        else:
            return None
        return Genome(entry=tuple(dict.fromkeys(rules["entry"])),
                      exit=tuple(dict.fromkeys(rules["exit"])), direction=g.direction,
                      size=g.size, **risk)

    def check(self, genome: Genome) -> None:
        """Raise :class:`GenomeError` if the genome uses anything outside this space."""
        outside = genome.series_keys() - set(self._series)
        if outside:
            raise GenomeError(f"series outside the search space: {sorted(outside)}")
        if genome.direction not in self.directions:
            raise GenomeError(f"direction {genome.direction!r} is not allowed by the space")
        if genome.size not in self.sizes:
            raise GenomeError(f"size {genome.size} is not one of the space's sizes {self.sizes}")
        if max(len(genome.entry), len(genome.exit)) > self.max_conditions:
            raise GenomeError(f"more than {self.max_conditions} conditions in a rule")


def _nearest(grid: tuple[float, ...], value: float) -> int:
    return int(np.argmin(np.abs(np.asarray(grid) - value)))
