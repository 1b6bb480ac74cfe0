"""The search space: random genomes, mutation and crossover stay valid and inside the space.

"Inside the space" is checked two ways: with ``SearchSpace.check`` (the engine's own test) and
with the independent checks in :func:`assert_inside`, which also look at what ``check`` does
not (every stop on its grid, every threshold on its scale's grid).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker_client.engine import Condition, Genome, GenomeError
from worker_client.engine.space import SearchSpace, SpaceError

SPACES = {
    "default": SearchSpace(),
    "wide": SearchSpace(directions=("long", "short", "long_short"), max_conditions=3,
                        sizes=(0.5, 1.0)),
    "narrow": SearchSpace(indicators=("rsi", "macd"), periods=(14,), max_conditions=1,
                          macd_params=((12, 26, 9),), stop_probability=0.0),
    "bands": SearchSpace(indicators=("bb", "atr", "natr", "volatility"), periods=(2, 20, 50),
                         bollinger_k=(1.5, 2.0), directions=("short",), stop_loss=(),
                         take_profit=(0.05,), trailing_stop=(0.01, 0.02), sizes=(0.1, 0.25),
                         stop_probability=1.0),
}
SEEDS = st.integers(0, 2**63 - 1)
SPACE_NAMES = st.sampled_from(sorted(SPACES))

# The threshold grid of each scale that accepts a number: (lowest, highest, step).
THRESHOLD_GRIDS = {
    "rsi": (5.0, 95.0, 1.0), "stoch_k": (5.0, 95.0, 1.0), "bb": (-0.2, 1.2, 0.05),
    "roc": (-5.0, 5.0, 0.1), "volatility": (0.02, 1.0, 0.02), "natr": (0.02, 2.0, 0.02),
    "macd": (0.0, 0.0, 1.0),
}


def on_grid(x: float, lo: float, hi: float, step: float) -> bool:
    i = round((x - lo) / step)
    return lo - 1e-12 <= x <= hi + 1e-12 and abs(lo + i * step - x) < 1e-9


def assert_inside(space: SearchSpace, genome: Genome) -> None:
    assert isinstance(genome, Genome)
    space.check(genome)
    assert Genome.from_json(genome.to_json()) == genome  # valid all the way through JSON
    assert genome.series_keys() <= set(space.series)
    assert genome.direction in space.directions
    assert genome.size in space.sizes
    assert 1 <= len(genome.entry) <= space.max_conditions
    assert len(genome.exit) <= space.max_conditions
    for name, grid in (("stop_loss", space.stop_loss), ("take_profit", space.take_profit),
                       ("trailing_stop", space.trailing_stop)):
        value = getattr(genome, name)
        assert value is None or value in grid, (name, value, grid)
    for cond in (*genome.entry, *genome.exit):
        if not isinstance(cond.b, str):
            name = cond.a.split("(")[0].split(".")[0]
            assert on_grid(cond.b, *THRESHOLD_GRIDS[name]), cond


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------------------------
# Random genomes
# --------------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=150)
@given(SPACE_NAMES, SEEDS)
def test_random_genomes_are_valid_and_inside(space_name: str, seed: int) -> None:
    space = SPACES[space_name]
    generator = rng(seed)
    for _ in range(5):
        assert_inside(space, space.random_genome(generator))


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_random_genomes_are_deterministic_for_a_seed(space_name: str) -> None:
    space = SPACES[space_name]
    first = [space.random_genome(g) for g in [rng(42)] for _ in range(50)]
    second = [space.random_genome(g) for g in [rng(42)] for _ in range(50)]
    other = [space.random_genome(g) for g in [rng(43)] for _ in range(50)]
    assert [g.hash for g in first] == [g.hash for g in second]
    assert [g.hash for g in first] != [g.hash for g in other]


def test_random_genomes_cover_the_space() -> None:
    # Not a statistical test: only that nothing the space allows is unreachable in practice.
    space = SPACES["wide"]
    generator = rng(1)
    population = [space.random_genome(generator) for _ in range(600)]
    assert {g.direction for g in population} == {"long", "short", "long_short"}
    assert {g.size for g in population} == {0.5, 1.0}
    assert {len(g.entry) for g in population} == {1, 2, 3}
    assert {len(g.exit) for g in population} == {0, 1, 2, 3}
    assert {c.op for g in population for c in g.entry} == {"gt", "lt", "cross_above",
                                                           "cross_below"}
    assert any(isinstance(c.b, float) for g in population for c in g.entry)
    assert any(isinstance(c.b, str) for g in population for c in g.entry)
    for name in ("stop_loss", "take_profit", "trailing_stop"):
        values = {getattr(g, name) for g in population}
        assert None in values and values - {None} == set(getattr(space, name))
    used = {k.split("(")[0].split(".")[0] for g in population for k in g.series_keys()}
    assert used == set(space.indicators) | {"close"}


def test_stop_probability_extremes() -> None:
    never = [SPACES["narrow"].random_genome(g) for g in [rng(3)] for _ in range(100)]
    assert all(g.stop_loss is g.take_profit is g.trailing_stop is None for g in never)
    always = [SPACES["bands"].random_genome(g) for g in [rng(3)] for _ in range(100)]
    # The bands space has no stop-loss grid: an empty grid means "never", whatever the odds.
    assert all(g.stop_loss is None for g in always)
    assert all(g.take_profit == 0.05 and g.trailing_stop in (0.01, 0.02) for g in always)


# --------------------------------------------------------------------------------------------
# Variation
# --------------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=150)
@given(SPACE_NAMES, SEEDS)
def test_mutation_stays_valid_and_inside(space_name: str, seed: int) -> None:
    space = SPACES[space_name]
    generator = rng(seed)
    genome = space.random_genome(generator)
    for _ in range(10):  # a chain of mutations, each from the previous child
        child = space.mutate(genome, generator)
        assert_inside(space, child)
        genome = child


@settings(deadline=None, max_examples=150)
@given(SPACE_NAMES, SEEDS)
def test_crossover_stays_valid_inside_and_inherits(space_name: str, seed: int) -> None:
    space = SPACES[space_name]
    generator = rng(seed)
    mother, father = space.random_genome(generator), space.random_genome(generator)
    for _ in range(5):
        child = space.crossover(mother, father, generator)
        assert_inside(space, child)
        # Whole genes come from one parent or the other; entry conditions from either parent.
        for name in ("exit", "direction", "stop_loss", "take_profit", "trailing_stop", "size"):
            assert getattr(child, name) in (getattr(mother, name), getattr(father, name)), name
        assert set(child.entry) <= set(mother.entry) | set(father.entry)


@settings(deadline=None, max_examples=50)
@given(SPACE_NAMES, SEEDS)
def test_variation_is_deterministic_for_a_seed(space_name: str, seed: int) -> None:
    space = SPACES[space_name]

    def run() -> list[str]:
        generator = rng(seed)
        a, b = space.random_genome(generator), space.random_genome(generator)
        out = []
        for _ in range(5):
            a, b = space.mutate(a, generator), space.crossover(a, b, generator)
            out += [a.hash, b.hash]
        return out

    assert run() == run()


def test_mutation_usually_changes_the_genome() -> None:
    space = SPACES["wide"]
    generator = rng(11)
    genomes = [space.random_genome(generator) for _ in range(200)]
    changed = sum(space.mutate(g, generator) != g for g in genomes)
    assert changed == len(genomes)


# --------------------------------------------------------------------------------------------
# check()
# --------------------------------------------------------------------------------------------


def test_check_rejects_genomes_outside_the_space() -> None:
    narrow = SPACES["narrow"]  # rsi(14) and macd(12,26,9), long only, one condition, size 1
    inside = Genome(entry=(Condition("rsi(14)", "lt", 30.0),))
    narrow.check(inside)
    outside = [
        (Genome(entry=(Condition("rsi(7)", "lt", 30.0),)), r"series outside .*'rsi\(7\)'"),
        (Genome(entry=(Condition("close", "gt", "sma(14)"),)), r"series outside .*'sma\(14\)'"),
        (Genome(entry=(Condition("rsi(14)", "lt", 30.0),), direction="short"),
         r"direction 'short' is not allowed"),
        (Genome(entry=(Condition("rsi(14)", "lt", 30.0),), size=0.5), r"size 0\.5 is not one"),
        (Genome(entry=(Condition("rsi(14)", "lt", 30.0), Condition("rsi(14)", "gt", 10.0))),
         r"more than 1 conditions"),
        (Genome(entry=(Condition("rsi(14)", "lt", 30.0),),
                exit=(Condition("rsi(14)", "gt", 70.0), Condition("rsi(14)", "lt", 90.0))),
         r"more than 1 conditions"),
    ]
    for genome, message in outside:
        with pytest.raises(GenomeError, match=message):
            narrow.check(genome)


# --------------------------------------------------------------------------------------------
# Serialisation and bad spaces
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_to_dict_from_dict_round_trip(space_name: str) -> None:
    space = SPACES[space_name]
    assert SearchSpace.from_dict(space.to_dict()) == space
    text = space.to_json()
    assert json.loads(text) == space.to_dict()
    assert " " not in text
    again = SearchSpace.from_dict(json.loads(text))
    assert again == space and again.to_json() == text and again.series == space.series
    # Same space, same random genomes.
    assert again.random_genome(rng(5)) == space.random_genome(rng(5))


def test_from_dict_fills_defaults() -> None:
    assert SearchSpace.from_dict({}) == SearchSpace()
    assert SearchSpace.from_dict({"periods": [14, 20]}).periods == (14, 20)


BAD_SPACES = [
    ({"indicators": ["rsi", "ichimoku"]}, r"indicators: unknown \['ichimoku'\]"),
    ({"periods": []}, r"periods, sizes and directions must not be empty"),
    ({"sizes": []}, r"periods, sizes and directions must not be empty"),
    ({"directions": []}, r"periods, sizes and directions must not be empty"),
    ({"directions": ["sideways"]}, r"directions: unknown \['sideways'\]"),
    ({"max_conditions": 0}, r"max_conditions must be 1 to 3"),
    ({"max_conditions": 4}, r"max_conditions must be 1 to 3"),
    ({"stop_probability": 1.5}, r"stop_probability must be in \[0, 1\]"),
    ({"stop_probability": -0.1}, r"stop_probability must be in \[0, 1\]"),
    ({"stop_loss": [0.01, 0.9]}, r"stop_loss: 0\.9 is outside"),
    ({"take_profit": [10.0]}, r"take_profit: 10\.0 is outside"),
    ({"trailing_stop": [0.0]}, r"trailing_stop: 0\.0 is outside"),
    ({"sizes": [0.0]}, r"sizes: 0\.0 is outside"),
    ({"sizes": [1.5]}, r"sizes: 1\.5 is outside"),
    ({"sizes": [float("nan")]}, r"sizes: nan is outside"),
    ({"periods": [14.5]}, r"periods must be positive whole numbers"),
    ({"periods": [6000]}, r"period must be in \[1, 5000\]"),
    ({"macd_params": [[26, 12, 9]]}, r"fast period must be shorter"),
    ({"bollinger_k": [0.0]}, r"k must be in \[0\.1, 10\]"),
    ({"colour": "red"}, r"unknown field\(s\) \['colour'\]"),
    ({"_series": ["close"]}, r"unknown field\(s\) \['_series'\]"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_SPACES, ids=[m for _, m in BAD_SPACES])
def test_bad_space_from_dict(raw: dict[str, object], message: str) -> None:
    with pytest.raises(SpaceError, match=message):
        SearchSpace.from_dict(raw)


@pytest.mark.parametrize(("raw", "message"),
                         [(r, m) for r, m in BAD_SPACES if not any(k.startswith(("_", "c"))
                                                                   for k in r)],
                         ids=[m for r, m in BAD_SPACES
                              if not any(k.startswith(("_", "c")) for k in r)])
def test_bad_space_constructed_directly(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SearchSpace(**raw)  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", [
    {"indicators": []},  # nothing but close, which can only be compared with a price series
    {"indicators": ["atr"], "periods": [14]},  # atr(14) has no peer and takes no threshold
])
def test_space_without_any_valid_condition_is_refused(raw: dict[str, object]) -> None:
    # Such a space cannot produce a single genome: random_condition() retries forever (a
    # RecursionError today). It should be refused when built, with a SpaceError.
    with pytest.raises(SpaceError):
        space = SearchSpace.from_dict(raw)
        space.random_genome(rng(0))
