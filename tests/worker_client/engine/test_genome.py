"""Genomes: canonical JSON round trips, the pinned hash, validation messages, plain words.

The canonical form is a contract between hosts (two volunteers must name one strategy with the
same 64 hex digits), so the expected JSON and its sha256 below are written out by hand rather
than produced by the code under test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker_client.engine import MAX_CONDITIONS, Condition, Genome, GenomeError
from worker_client.engine.space import SearchSpace

# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

# Valid series keys grouped by scale (what may be compared with what), and the threshold range
# of the scales that accept a number. Written out here from the documented scales, not read
# from the engine, so that a change to them shows up as a failing test.
KEYS_BY_SCALE = {
    "price": ["close", "sma(20)", "ema(200)", "bb.upper(20,2)", "bb.lower(20,2.5)",
              "bb.mid(30,2)", "highest(50)", "lowest(10)"],
    "oscillator": ["rsi(14)", "rsi(2)", "stoch_k(5)"],
    "percent_b": ["bb.pctb(20,2)", "bb.pctb(10,1.5)"],
    "roc": ["roc(1)", "roc(10)"],
    "volatility": ["volatility(20)"],
    "natr": ["natr(14)"],
    "macd": ["macd.line(12,26,9)", "macd.signal(12,26,9)", "macd.hist(5,35,5)"],
    "atr": ["atr(14)", "atr(7)"],
}
THRESHOLDS = {
    "oscillator": (5.0, 95.0),
    "percent_b": (-0.2, 1.2),
    "roc": (-5.0, 5.0),
    "volatility": (0.02, 1.0),
    "natr": (0.02, 2.0),
    "macd": (0.0, 0.0),
}
OPERATORS = ("gt", "lt", "cross_above", "cross_below")

SPACES = (
    SearchSpace(),
    SearchSpace(directions=("long", "short", "long_short"), max_conditions=3,
                sizes=(0.5, 1.0)),
    SearchSpace(indicators=("rsi", "bb", "macd", "atr", "natr"), periods=(2, 14, 50),
                bollinger_k=(1.5, 2.0, 2.5), max_conditions=1, stop_probability=1.0),
)


@st.composite
def conditions(draw: st.DrawFn) -> Condition:
    scale = draw(st.sampled_from(sorted(KEYS_BY_SCALE)))
    a = draw(st.sampled_from(KEYS_BY_SCALE[scale]))
    op = draw(st.sampled_from(OPERATORS))
    peers = [k for k in KEYS_BY_SCALE[scale] if k != a]
    if scale in THRESHOLDS and (not peers or draw(st.booleans())):
        lo, hi = THRESHOLDS[scale]
        return Condition(a, op, draw(st.floats(lo, hi, allow_nan=False)))
    return Condition(a, op, draw(st.sampled_from(peers)))


def fractions(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


hand_built_genomes = st.builds(
    Genome,
    entry=st.lists(conditions(), min_size=1, max_size=MAX_CONDITIONS, unique=True).map(tuple),
    exit=st.lists(conditions(), min_size=0, max_size=MAX_CONDITIONS, unique=True).map(tuple),
    direction=st.sampled_from(("long", "short", "long_short")),
    stop_loss=st.none() | fractions(0.0005, 0.5),
    take_profit=st.none() | fractions(0.0005, 5.0),
    trailing_stop=st.none() | fractions(0.0005, 0.5),
    size=fractions(0.01, 1.0),
)


@st.composite
def space_genomes(draw: st.DrawFn) -> Genome:
    space = draw(st.sampled_from(SPACES))
    seed = draw(st.integers(0, 2**63 - 1))
    return space.random_genome(np.random.default_rng(seed))


genomes = hand_built_genomes | space_genomes()


def shuffled(value: object, rnd: random.Random) -> object:
    """The same JSON value with the keys of every object in a random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Canonical form
# --------------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=200)
@given(genomes)
def test_json_round_trip_is_identity(genome: Genome) -> None:
    text = genome.to_json()
    again = Genome.from_json(text)
    assert again == genome
    assert again.to_json() == text
    assert again.hash == genome.hash
    assert hash(again) == hash(genome)
    assert Genome.from_dict(genome.to_dict()) == genome
    assert Genome.from_json(text.encode()) == genome  # bytes, as read from the wire


@settings(deadline=None, max_examples=200)
@given(genomes, st.randoms(use_true_random=False))
def test_canonical_text_ignores_key_order_and_spacing(genome: Genome, rnd: random.Random) -> None:
    text = genome.to_json()
    reordered = json.dumps(shuffled(json.loads(text), rnd), indent=rnd.choice([None, 1, 4]))
    parsed = Genome.from_json(reordered)
    assert parsed == genome
    assert parsed.to_json() == text
    assert parsed.hash == genome.hash


@settings(deadline=None, max_examples=200)
@given(genomes)
def test_canonical_text_has_sorted_keys_and_no_spaces(genome: Genome) -> None:
    text = genome.to_json()
    assert " " not in text and "\n" not in text
    assert json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")) == text
    assert json.loads(text) == genome.to_dict()
    assert genome.hash == hashlib.sha256(text.encode()).hexdigest()


def test_whole_numbers_are_one_value() -> None:
    # 30 and 30.0 are one threshold; size=1 and size=1.0 are one size.
    a = Genome(entry=(Condition("rsi(14)", "lt", 30),), size=1)
    b = Genome(entry=(Condition("rsi(14)", "lt", 30.0),), size=1.0)
    assert a == b and a.to_json() == b.to_json() and a.hash == b.hash
    assert Genome.from_json(a.to_json().replace("30.0", "30")) == a


def test_different_genomes_have_different_hashes() -> None:
    base = Genome(entry=(Condition("rsi(14)", "lt", 30.0),))
    variants = [
        dataclasses.replace(base, direction="short"),
        dataclasses.replace(base, stop_loss=0.01),
        dataclasses.replace(base, entry=(Condition("rsi(14)", "lt", 31.0),)),
        dataclasses.replace(base, exit=(Condition("rsi(14)", "gt", 70.0),)),
        dataclasses.replace(base, size=0.5),
    ]
    hashes = {g.hash for g in [base, *variants]}
    assert len(hashes) == 1 + len(variants)


# The canonical JSON of one fixed genome, written by hand: keys sorted at every level, no
# spaces, floats in their shortest round-trip spelling, absent stops as null.
PINNED_JSON = (
    '{"direction":"long_short",'
    '"entry":[{"a":"rsi(14)","b":30.0,"op":"cross_above"},{"a":"close","b":"ema(200)","op":"gt"}],'
    '"exit":[{"a":"macd.line(12,26,9)","b":"macd.signal(12,26,9)","op":"cross_below"}],'
    '"size":0.5,"stop_loss":0.025,"take_profit":null,"trailing_stop":0.01,"v":1}'
)
# sha256 of PINNED_JSON, computed once with hashlib over the text above (not with the engine).
PINNED_SHA256 = "c71db67846ad3cd1e963413df4808b33997df3d7f32644fca2f9d5d8d4584dc3"


def test_pinned_hash_of_a_fixed_genome() -> None:
    genome = Genome(
        entry=(Condition("rsi(14)", "cross_above", 30.0), Condition("close", "gt", "ema(200)")),
        exit=(Condition("macd.line(12,26,9)", "cross_below", "macd.signal(12,26,9)"),),
        direction="long_short",
        stop_loss=0.025,
        trailing_stop=0.01,
        size=0.5,
    )
    assert hashlib.sha256(PINNED_JSON.encode()).hexdigest() == PINNED_SHA256
    assert genome.to_json() == PINNED_JSON
    assert genome.hash == PINNED_SHA256
    assert Genome.from_json(PINNED_JSON) == genome


# --------------------------------------------------------------------------------------------
# Validation: each error names the gene that is wrong
# --------------------------------------------------------------------------------------------

RSI_LOW = Condition("rsi(14)", "lt", 30.0)
BASE = Genome(entry=(RSI_LOW,), exit=(Condition("rsi(14)", "gt", 70.0),))


def cond(a: object, op: object = "gt", b: object = "sma(20)") -> Condition:
    return Condition(a, op, b)  # type: ignore[arg-type]


BAD_CONDITIONS = [
    # (condition placed at entry[1], regex the message must match)
    (cond("foo(14)", "gt", 30.0), r"^entry\[1\]\.a: 'foo\(14\)': unknown indicator 'foo'"),
    (cond("close", "gt", "bar(3)"), r"^entry\[1\]\.b: 'bar\(3\)': unknown indicator 'bar'"),
    (cond("rsi(14.5)", "gt", 30.0), r"^entry\[1\]\.a: .*period must be a whole number"),
    (cond("rsi(1)", "gt", 30.0), r"^entry\[1\]\.a: .*period must be in \[2, 1000\], got 1"),
    (cond("sma(0)"), r"^entry\[1\]\.a: .*period must be in \[1, 5000\], got 0"),
    (cond("sma(x)"), r"^entry\[1\]\.a: .*period must be a number, got 'x'"),
    (cond("sma(20,3)"), r"^entry\[1\]\.a: .*'sma' takes 1 parameters \(period\)"),
    (cond("bb.pctb(20,20)", "gt", 0.5), r"^entry\[1\]\.a: .*k must be in \[0\.1, 10\], got 20"),
    (cond("macd.line(26,12,9)", "gt", 0.0), r"^entry\[1\]\.a: .*fast period must be shorter"),
    (cond("macd.foo(12,26,9)", "gt", 0.0), r"^entry\[1\]\.a: .*'macd' has no output 'foo'"),
    (cond("macd(12,26,9)", "gt", 0.0), r"^entry\[1\]\.a: .*'macd' has no output ''"),
    (cond("rsi.line(14)", "gt", 30.0), r"^entry\[1\]\.a: .*'rsi' has no output 'line'"),
    (cond("close.mid"), r"^entry\[1\]\.a: .*'close' takes no output or parameters"),
    (cond("rsi(14.0)", "gt", 30.0), r"^entry\[1\]\.a: .*not in canonical form; write 'rsi\(14\)'"),
    (cond("rsi( 14)", "gt", 30.0), r"^entry\[1\]\.a: .*not in canonical form; write 'rsi\(14\)'"),
    (cond("close", "gt", "bb.upper(20,2.0)"),
     r"^entry\[1\]\.b: .*not in canonical form; write 'bb\.upper\(20,2\)'"),
    (cond("RSI(14)", "gt", 30.0), r"^entry\[1\]\.a: 'RSI\(14\)' is not a series key"),
    (cond(14, "gt", 30.0), r"^entry\[1\]\.a: a series key must be a string"),
    (cond("rsi(14)", "ge", 30.0), r"^entry\[1\]\.op: 'ge' is not one of gt, lt, cross_above"),
    (cond("rsi(14)", "gt", 150.0),
     r"^entry\[1\]\.b: threshold for rsi\(14\) must be in \[5, 95\], got 150\.0"),
    (cond("rsi(14)", "gt", 4.0), r"^entry\[1\]\.b: threshold for rsi\(14\) must be in \[5, 95\]"),
    (cond("rsi(14)", "gt", float("nan")), r"^entry\[1\]\.b: threshold .* got nan"),
    (cond("rsi(14)", "gt", float("inf")), r"^entry\[1\]\.b: threshold .* got inf"),
    (cond("roc(10)", "gt", 7.5), r"^entry\[1\]\.b: threshold for roc\(10\) must be in \[-5, 5\]"),
    (cond("macd.hist(12,26,9)", "gt", 0.5), r"^entry\[1\]\.b: threshold .* must be in \[0, 0\]"),
    (cond("close", "gt", 30_000.0),
     r"^entry\[1\]\.b: close is a price series; compare it with another series, not a number"),
    (cond("ema(50)", "lt", 1.0), r"^entry\[1\]\.b: ema\(50\) is a price series"),
    (cond("atr(14)", "gt", 1.0), r"^entry\[1\]\.b: atr\(14\) is a atr series"),
    (cond("rsi(14)", "gt", "close"),
     r"^entry\[1\]: rsi\(14\) \(oscillator\) cannot be compared with close \(price\)"),
    (cond("atr(14)", "gt", "close"), r"^entry\[1\]: atr\(14\) \(atr\) cannot be compared"),
    (cond("bb.pctb(20,2)", "gt", "bb.upper(20,2)"), r"^entry\[1\]: .* cannot be compared"),
    (cond("close", "gt", "close"), r"^entry\[1\]: compares close with itself"),
    (cond("rsi(14)", "gt", True), r"^entry\[1\]\.b: must be a series key or a float, got True"),
    (cond("rsi(14)", "gt", None), r"^entry\[1\]\.b: must be a series key or a float, got None"),
]


@pytest.mark.parametrize(("condition", "message"), BAD_CONDITIONS,
                         ids=[repr(c) for c, _ in BAD_CONDITIONS])
def test_bad_condition_is_named(condition: Condition, message: str) -> None:
    with pytest.raises(GenomeError, match=message):
        Genome(entry=(RSI_LOW, condition))
    # The same mistake in the exit rule names the exit rule.
    with pytest.raises(GenomeError, match=message.replace("entry", "exit")):
        Genome(entry=(RSI_LOW,), exit=(RSI_LOW, condition))


BAD_GENES = [
    (dict(entry=()), r"^entry: needs 1 to 3 conditions, got 0"),
    (dict(entry=(RSI_LOW, RSI_LOW)), r"^entry: the same condition appears twice"),
    (dict(exit=(RSI_LOW, Condition("rsi(14)", "lt", 30))),
     r"^exit: the same condition appears twice"),
    (dict(entry=tuple(Condition("rsi(14)", "lt", float(x)) for x in (10, 20, 30, 40))),
     r"^entry: needs 1 to 3 conditions, got 4"),
    (dict(exit=tuple(Condition("rsi(14)", "gt", float(x)) for x in (60, 70, 80, 90))),
     r"^exit: at most 3 conditions, got 4"),
    (dict(entry=("rsi(14) < 30",)), r"^entry\[0\]: expected a Condition"),
    (dict(direction="up"), r"^direction: 'up' is not one of long, short, long_short"),
    (dict(direction=None), r"^direction: None is not one of"),
    (dict(stop_loss=0.6), r"^stop_loss: must be in \[0\.0005, 0\.5\], got 0\.6"),
    (dict(stop_loss=0.0001), r"^stop_loss: must be in \[0\.0005, 0\.5\], got 0\.0001"),
    (dict(stop_loss=0), r"^stop_loss: must be in \[0\.0005, 0\.5\], got 0\.0"),
    (dict(stop_loss=-0.01), r"^stop_loss: must be in"),
    (dict(stop_loss=True), r"^stop_loss: must be a float, got True"),
    (dict(stop_loss="0.01"), r"^stop_loss: must be a float, got '0\.01'"),
    (dict(stop_loss=float("nan")), r"^stop_loss: must be in .*, got nan"),
    (dict(stop_loss=float("inf")), r"^stop_loss: must be in .*, got inf"),
    (dict(take_profit=6.0), r"^take_profit: must be in \[0\.0005, 5\], got 6\.0"),
    (dict(take_profit=False), r"^take_profit: must be a float, got False"),
    (dict(take_profit=float("-inf")), r"^take_profit: must be in .*, got -inf"),
    (dict(trailing_stop=0.75), r"^trailing_stop: must be in \[0\.0005, 0\.5\], got 0\.75"),
    (dict(trailing_stop="tight"), r"^trailing_stop: must be a float, got 'tight'"),
    (dict(trailing_stop=float("nan")), r"^trailing_stop: must be in .*, got nan"),
    (dict(size=0.0), r"^size: must be in \[0\.01, 1\], got 0\.0"),
    (dict(size=1.5), r"^size: must be in \[0\.01, 1\], got 1\.5"),
    (dict(size=None), r"^size: must be a float, got None"),
    (dict(size=True), r"^size: must be a float, got True"),
    (dict(size="1"), r"^size: must be a float, got '1'"),
    (dict(size=float("nan")), r"^size: must be in .*, got nan"),
    (dict(size=float("inf")), r"^size: must be in .*, got inf"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_GENES, ids=[m for _, m in BAD_GENES])
def test_bad_gene_is_named(changes: dict[str, object], message: str) -> None:
    with pytest.raises(GenomeError, match=message):
        dataclasses.replace(BASE, **changes)


def test_bounds_are_inclusive() -> None:
    for name, lo, hi in (("stop_loss", 0.0005, 0.5), ("take_profit", 0.0005, 5.0),
                         ("trailing_stop", 0.0005, 0.5), ("size", 0.01, 1.0)):
        assert getattr(dataclasses.replace(BASE, **{name: lo}), name) == lo
        assert getattr(dataclasses.replace(BASE, **{name: hi}), name) == hi
    Genome(entry=(Condition("rsi(14)", "gt", 5.0), Condition("rsi(14)", "lt", 95.0)))


def test_genome_error_is_a_value_error() -> None:
    assert issubclass(GenomeError, ValueError)


# --------------------------------------------------------------------------------------------
# Validation of JSON input
# --------------------------------------------------------------------------------------------


def raw(**changes: object) -> dict[str, object]:
    out = BASE.to_dict()
    out.update(changes)
    return out


BAD_JSON_VALUES = [
    (raw(v=2), r"^v: this engine reads genome version 1, got 2"),
    (raw(v=0), r"^v: this engine reads genome version 1, got 0"),
    (raw(v="1"), r"^v: this engine reads genome version 1, got '1'"),
    (raw(v=None), r"^v: this engine reads genome version 1, got None"),
    ({**raw(), "colour": "red"}, r"^genome: unknown field\(s\) \['colour'\]$"),
    ({k: v for k, v in raw().items() if k != "size"}, r"^genome: missing field\(s\) \['size'\]$"),
    ({k: v for k, v in raw().items() if k not in ("exit", "v")} | {"extra": 1},
     r"^genome: unknown field\(s\) \['extra'\]; missing field\(s\) \['exit', 'v'\]$"),
    ([], r"^a genome must be a JSON object, got list"),
    ("rsi", r"^a genome must be a JSON object, got str"),
    (raw(entry={"a": "rsi(14)", "op": "lt", "b": 30}), r"^entry: must be a list of conditions"),
    (raw(exit=None), r"^exit: must be a list of conditions"),
    (raw(entry=[]), r"^entry: needs 1 to 3 conditions, got 0"),
    (raw(entry=[["rsi(14)", "lt", 30]]), r"^entry\[0\]: must be an object with exactly"),
    (raw(entry=[{"a": "rsi(14)", "op": "lt"}]), r"^entry\[0\]: must be an object with exactly"),
    (raw(entry=[{"a": "rsi(14)", "op": "lt", "b": 30, "c": 1}]),
     r"^entry\[0\]: must be an object with exactly 'a', 'op' and 'b'"),
    (raw(exit=[{"a": 14, "op": "gt", "b": 70}]), r"^exit\[0\]: 'a' and 'op' must be strings"),
    (raw(entry=[{"a": "rsi(14)", "op": None, "b": 30}]),
     r"^entry\[0\]: 'a' and 'op' must be strings"),
    (raw(entry=[{"a": "rsi(14)", "op": "lt", "b": True}]),
     r"^entry\[0\]\.b: must be a number, got True"),
    (raw(entry=[{"a": "rsi(14)", "op": "lt", "b": None}]),
     r"^entry\[0\]\.b: must be a number, got None"),
    (raw(entry=[{"a": "rsi(14)", "op": "lt", "b": [30]}]),
     r"^entry\[0\]\.b: must be a number, got \[30\]"),
    (raw(entry=[{"a": "close", "op": "lt", "b": 30}]), r"^entry\[0\]\.b: close is a price"),
    (raw(direction="both"), r"^direction: 'both' is not one of"),
    (raw(stop_loss=True), r"^stop_loss: must be a number, got True"),
    (raw(stop_loss="0.01"), r"^stop_loss: must be a number, got '0\.01'"),
    (raw(take_profit=[0.1]), r"^take_profit: must be a number"),
    (raw(trailing_stop={}), r"^trailing_stop: must be a number"),
    (raw(size=None), r"^size: must be a number, got None"),
    (raw(size=2), r"^size: must be in \[0\.01, 1\], got 2\.0"),
    (raw(stop_loss=float("nan")), r"^stop_loss: must be in .*, got nan"),
    (raw(take_profit=float("inf")), r"^take_profit: must be in .*, got inf"),
]


@pytest.mark.parametrize(("value", "message"), BAD_JSON_VALUES, ids=[m for _, m in BAD_JSON_VALUES])
def test_bad_json_is_named(value: object, message: str) -> None:
    with pytest.raises(GenomeError, match=message):
        Genome.from_dict(value)
    # Through the text form too (json writes NaN/Infinity, which json.loads reads back).
    with pytest.raises(GenomeError, match=message):
        Genome.from_json(json.dumps(value))


@pytest.mark.parametrize("text", ["", "{", "{'v': 1}", "nonsense", '{"v":1,}', b"\xff\xfe{"])
def test_invalid_json_text(text: str | bytes) -> None:
    with pytest.raises(GenomeError, match=r"^not valid JSON: "):
        Genome.from_json(text)


def test_json_number_too_large_for_a_float_is_a_genome_error() -> None:
    # A JSON integer with 400 digits is valid JSON; float() of it raises OverflowError, which
    # must not escape from_json as anything but a GenomeError naming the gene.
    text = BASE.to_json().replace('"size":1.0', '"size":1' + "0" * 400)
    with pytest.raises(GenomeError, match=r"^size: "):
        Genome.from_json(text)


def test_schema_version_must_be_the_number_one() -> None:
    # JSON true == 1 in Python; a strict reader must not take a boolean for a version number.
    with pytest.raises(GenomeError, match=r"^v: "):
        Genome.from_dict(raw(v=True))


# --------------------------------------------------------------------------------------------
# Plain words
# --------------------------------------------------------------------------------------------

DESCRIPTIONS = [
    (Genome(entry=(Condition("rsi(14)", "cross_above", 30.0), Condition("close", "gt", "ema(200)")),
            exit=(Condition("rsi(14)", "gt", 70.0),), stop_loss=0.025),
     "Buy when RSI(14) crosses above 30 and close > EMA(200); sell when RSI(14) > 70; "
     "stop-loss 2.5 %"),
    (Genome.sma_crossover(10, 50),
     "Buy when SMA(10) crosses above SMA(50); sell when SMA(10) crosses below SMA(50)"),
    (Genome(entry=(Condition("close", "gt", "highest(20)"),), direction="short",
            take_profit=0.04, trailing_stop=0.005, size=0.5),
     "Sell short when close > 20-bar high; take-profit 4 %; trailing stop 0.5 %; "
     "50 % of equity per trade"),
    (Genome(entry=(Condition("macd.line(12,26,9)", "cross_above", "macd.signal(12,26,9)"),),
            exit=(Condition("macd.hist(12,26,9)", "lt", 0.0),), direction="long_short"),
     "Go long when MACD(12, 26, 9) crosses above MACD signal(12, 26, 9); "
     "go short when MACD histogram(12, 26, 9) < 0"),
    (Genome(entry=(Condition("bb.pctb(20,2)", "lt", 0.05),
                   Condition("close", "lt", "bb.lower(20,2)")),
            exit=(Condition("close", "cross_below", "lowest(10)"),), direction="short",
            stop_loss=0.0125),
     "Sell short when Bollinger %B(20, 2) < 0.05 and close < lower Bollinger band(20, 2); "
     "buy to cover when close crosses below 10-bar low; stop-loss 1.25 %"),
    (Genome(entry=(Condition("stoch_k(14)", "lt", 20.0), Condition("roc(10)", "gt", -1.5),
                   Condition("natr(14)", "gt", 0.5)), size=0.25),
     "Buy when Stochastic %K(14) < 20 and ROC(10) > -1.5 and ATR%(14) > 0.5; "
     "25 % of equity per trade"),
]


@pytest.mark.parametrize(("genome", "words"), DESCRIPTIONS, ids=[w[:40] for _, w in DESCRIPTIONS])
def test_describe_in_plain_words(genome: Genome, words: str) -> None:
    assert genome.describe() == words
    assert str(genome) == words


@settings(deadline=None, max_examples=100)
@given(genomes)
def test_describe_never_fails_and_mentions_every_stop(genome: Genome) -> None:
    words = genome.describe()
    assert words.startswith(("Buy when ", "Sell short when ", "Go long when "))
    assert ("stop-loss" in words) == (genome.stop_loss is not None)
    assert ("take-profit" in words) == (genome.take_profit is not None)
    assert ("trailing stop" in words) == (genome.trailing_stop is not None)
    assert words.count(" when ") == 1 + bool(genome.exit)
