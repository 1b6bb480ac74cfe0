"""The island GA: one *epoch* evolves one island's population for a few generations.

An epoch is the work unit a volunteer runs: given the data, the search space, the GA settings, a
seed, a starting population (the island's survivors plus migrants) and a number of generations,
it returns the final population, the best genomes with their metrics, how many distinct
strategies it evaluated and a **digest** two hosts can compare.

Determinism is the contract. Every random choice comes from one PCG64 generator seeded with
``seed``, whose state is part of the checkpoint; genomes are evaluated in a fixed order and
ranked by (fitness, hash), never by arrival; an epoch stopped after any generation and resumed
from its :class:`EpochState` ends with the same digest as one that never stopped, on any number
of threads.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .backtest import METRIC_FIELDS, Costs, Metrics, evaluate_population
from .data import OHLCV
from .genome import Genome
from .series import FeatureTable
from .space import SearchSpace

STATE_FORMAT = 1
FITNESS_CHOICES = ("sharpe", "sortino", "calmar", "total_return", "profit_factor")
_FITNESS_CAP = 1e6  # an infinite ratio (no losing bar, no losing trade) ranks as this
_UNDERTRADING_PENALTY = 100.0  # per missing fraction of min_trades: below any real Sharpe


class EpochError(ValueError):
    """Settings, a starting population or a checkpoint that this epoch cannot use."""


@dataclass(frozen=True)
class GASettings:
    """How an island evolves and how strategies are scored. Stored with each campaign."""

    population_size: int = 48
    elite: int = 2
    tournament_size: int = 3
    crossover_rate: float = 0.7
    mutation_rate: float = 0.5
    immigrants: int = 4  # fresh random genomes per generation: diversity against stagnation
    top_k: int = 10
    fitness: str = "sharpe"
    min_trades: int = 20  # fewer trades than this are penalised (too few to trust)
    fee: float = 0.001
    slippage: float = 0.0005
    initial_cash: float = 10_000.0

    def __post_init__(self) -> None:
        checks = [
            (self.population_size >= 4, "population_size must be at least 4"),
            (0 <= self.elite < self.population_size, "elite must be in [0, population_size)"),
            (0 <= self.immigrants <= self.population_size - self.elite,
             "immigrants must fit in the population beside the elite"),
            (1 <= self.tournament_size <= self.population_size,
             "tournament_size must be in [1, population_size]"),
            (0 <= self.crossover_rate <= 1 and 0 <= self.mutation_rate <= 1,
             "crossover_rate and mutation_rate must be in [0, 1]"),
            (self.top_k >= 1, "top_k must be at least 1"),
            (self.fitness in FITNESS_CHOICES,
             f"fitness must be one of {', '.join(FITNESS_CHOICES)}"),
            (self.min_trades >= 0, "min_trades must be >= 0"),
            (math.isfinite(self.initial_cash) and self.initial_cash > 0,
             "initial_cash must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise EpochError(message)
        self.costs  # validates fee and slippage  # noqa: B018

    @property
    def costs(self) -> Costs:
        return Costs(fee=self.fee, slippage=self.slippage)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GASettings:
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise EpochError(f"unknown GA setting(s) {sorted(unknown)}")
        try:
            return cls(**raw)
        except (TypeError, ValueError) as exc:
            raise EpochError(str(exc)) from None


def fitness_of(metrics: np.ndarray, settings: GASettings) -> np.ndarray:
    """Fitness per row of a metrics array: the chosen figure, penalised below ``min_trades``.

    A genome with too few trades scores at most 0 less 100 times the missing fraction of
    ``min_trades``: it ranks below every genome that trades enough, yet the search still sees
    a slope towards trading more.
    """
    value = np.clip(np.nan_to_num(metrics[settings.fitness].astype(np.float64), nan=-_FITNESS_CAP),
                    -_FITNESS_CAP, _FITNESS_CAP)
    if settings.min_trades > 0:
        missing = np.maximum(settings.min_trades - metrics["n_trades"], 0) / settings.min_trades
        value = np.where(missing > 0, np.minimum(value, 0.0) - _UNDERTRADING_PENALTY * missing,
                         value)
    return value


@dataclass(frozen=True)
class ScoredGenome:
    genome: Genome
    fitness: float
    metrics: Metrics

    def to_dict(self) -> dict[str, Any]:
        return {"genome": self.genome.to_dict(), "hash": self.genome.hash,
                "fitness": _finite_or_none(self.fitness), "metrics": self.metrics.to_dict()}


@dataclass(frozen=True)
class TrialsSharpe:
    """The spread of every trial's Sharpe ratio, for the deflated Sharpe ratio's V: the count,
    sum and sum of squares of the per-bar Sharpe ratios (``return_mean / return_std``) of the
    strategies evaluated, those with a positive return deviation (a strategy that never
    trades has no Sharpe ratio). Sums, so that epochs add up; ``math.fsum``, so that they do not
    depend on the order of evaluation."""

    n: int = 0
    sharpe_sum: float = 0.0
    sharpe_sq_sum: float = 0.0

    @classmethod
    def of_columns(cls, mean: Sequence[float], std: Sequence[float]) -> TrialsSharpe:
        """From the ``return_mean`` and ``return_std`` of each strategy evaluated."""
        sharpes = [float(m) / float(s) for m, s in zip(mean, std, strict=True)
                   if math.isfinite(s) and s > 0 and math.isfinite(m)]
        return cls(n=len(sharpes), sharpe_sum=math.fsum(sharpes),
                   sharpe_sq_sum=math.fsum(x * x for x in sharpes))

    @classmethod
    def from_dict(cls, raw: Any) -> TrialsSharpe:
        """From ``to_dict()``; raises ``EpochError`` unless it is three finite, coherent sums."""
        try:
            n, total, squares = raw["n"], raw["sharpe_sum"], raw["sharpe_sq_sum"]
        except (KeyError, TypeError):
            raise EpochError("trials must hold n, sharpe_sum and sharpe_sq_sum") from None
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise EpochError(f"trials.n must be a count, got {n!r}")
        for name, value in (("sharpe_sum", total), ("sharpe_sq_sum", squares)):
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value)):
                raise EpochError(f"trials.{name} must be a finite number, got {value!r}")
        # Cauchy-Schwarz: (sum x)^2 <= n * sum x^2, with room for rounding.
        if squares < 0 or total * total > n * squares * (1 + 1e-9) + 1e-300:
            raise EpochError("trials: the sums cannot come from any set of Sharpe ratios")
        return cls(n=n, sharpe_sum=float(total), sharpe_sq_sum=float(squares))

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "sharpe_sum": self.sharpe_sum, "sharpe_sq_sum": self.sharpe_sq_sum}


@dataclass(frozen=True)
class EpochResult:
    population: tuple[Genome, ...]  # the final population, in rank order
    top: tuple[ScoredGenome, ...]  # the best distinct genomes evaluated in the epoch
    evaluated: int  # distinct strategies backtested in this epoch
    generations: int
    digest: str  # sha256 over the canonical summary below: what two hosts compare
    trials: TrialsSharpe = TrialsSharpe()  # the Sharpe ratios of all ``evaluated``

    def to_dict(self) -> dict[str, Any]:
        return {"population": [g.to_dict() for g in self.population],
                "top": [s.to_dict() for s in self.top], "evaluated": self.evaluated,
                "generations": self.generations, "trials": self.trials.to_dict(),
                "digest": self.digest}


@dataclass
class EpochState:
    """Everything needed to resume an epoch where it stopped; serialisable to bytes.

    ``evaluated`` maps each genome hash to its canonical JSON and metrics row: the cache that
    keeps an elite from being re-run, the count of strategies tried and the source of the top-K.
    """

    task: str  # fingerprint of (data, space, settings, seed, start population, generations)
    generation: int  # breeding generations completed (0: the start population is evaluated)
    population: list[str]  # genome hashes, in order
    rng_state: dict[str, Any]
    evaluated: dict[str, tuple[str, list[float]]]

    def to_bytes(self) -> bytes:
        """Compact, deterministic bytes (zlib-compressed JSON; floats round-trip exactly)."""
        text = json.dumps({"format": STATE_FORMAT, **asdict(self)}, sort_keys=True,
                          separators=(",", ":"))
        return zlib.compress(text.encode(), 6)

    @classmethod
    def from_bytes(cls, blob: bytes) -> EpochState:
        try:
            raw = json.loads(zlib.decompress(blob))
        except (zlib.error, ValueError) as exc:
            raise EpochError(f"checkpoint is unreadable: {exc}") from None
        if not isinstance(raw, dict) or raw.pop("format", None) != STATE_FORMAT:
            raise EpochError("checkpoint was written by an incompatible engine")
        try:
            raw["evaluated"] = {h: (j, list(m)) for h, (j, m) in raw["evaluated"].items()}
            return cls(**raw)
        except (TypeError, ValueError, KeyError) as exc:
            raise EpochError(f"checkpoint is malformed: {exc}") from None


def task_fingerprint(data: OHLCV, space: SearchSpace, settings: GASettings, seed: int,
                     start_population: Sequence[Genome], generations: int) -> str:
    h = hashlib.sha256()
    for array in (data.timestamp, data.open, data.high, data.low, data.close):
        h.update(np.ascontiguousarray(array).tobytes())
    h.update(json.dumps({"space": space.to_dict(), "settings": settings.to_dict(),
                         "seed": seed, "generations": generations,
                         "start": [g.hash for g in start_population]},
                        sort_keys=True).encode())
    return h.hexdigest()


class IslandEpoch:
    """An epoch in progress: ``step()`` runs one generation, ``state`` is the checkpoint."""

    def __init__(self, data: OHLCV, space: SearchSpace, settings: GASettings, seed: int,
                 start_population: Sequence[Genome], generations: int, *,
                 checkpoint: EpochState | None = None, threads: int = 1):
        if generations < 0:
            raise EpochError("generations must be >= 0")
        if not isinstance(seed, int) or seed < 0:
            raise EpochError("seed must be a non-negative integer")
        for genome in start_population:
            space.check(genome)
        self.data = data
        self.space = space
        self.settings = settings
        self.generations = generations
        self.threads = threads
        self._features = FeatureTable(data)
        task = task_fingerprint(data, space, settings, seed, start_population, generations)
        self._rng = np.random.Generator(np.random.PCG64(seed))
        if checkpoint is not None:
            if checkpoint.task != task:
                raise EpochError("checkpoint belongs to another task")
            self._rng.bit_generator.state = checkpoint.rng_state
            self._evaluated = {h: (Genome.from_json(j), np.array(m, dtype=np.float64))
                               for h, (j, m) in checkpoint.evaluated.items()}
            self._population = [self._evaluated[h][0] for h in checkpoint.population]
            self._generation = checkpoint.generation
        else:
            self._evaluated = {}
            population = list(start_population)[: settings.population_size]
            while len(population) < settings.population_size:
                population.append(space.random_genome(self._rng))
            self._population = population
            self._evaluate(population)
            self._generation = 0
        self._task = task

    @property
    def done(self) -> bool:
        return self._generation >= self.generations

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def evaluated(self) -> int:
        """Distinct genomes backtested so far in this epoch."""
        return len(self._evaluated)

    @property
    def state(self) -> EpochState:
        return EpochState(
            task=self._task, generation=self._generation,
            population=[g.hash for g in self._population],
            rng_state=dict(self._rng.bit_generator.state),
            evaluated={h: (g.to_json(), [float(x) for x in m])
                       for h, (g, m) in self._evaluated.items()},
        )

    def _evaluate(self, genomes: Sequence[Genome]) -> None:
        new = list({g.hash: g for g in genomes if g.hash not in self._evaluated}.values())
        if not new:
            return
        s = self.settings
        rows = evaluate_population(self.data, new, costs=s.costs, initial_cash=s.initial_cash,
                                   threads=self.threads, features=self._features)
        for genome, row in zip(new, rows, strict=True):
            self._evaluated[genome.hash] = (genome, np.array(row.tolist(), dtype=np.float64))

    def _fitness(self, genomes: Sequence[Genome]) -> np.ndarray:
        rows = np.array([self._evaluated[g.hash][1] for g in genomes])
        rows = np.ascontiguousarray(rows.reshape(-1, len(METRIC_FIELDS)))
        return fitness_of(rows.view(_ROW_DTYPE).reshape(-1), self.settings)

    def _ranked(self, genomes: Sequence[Genome]) -> list[tuple[float, Genome]]:
        """Best first; ties broken by hash so that order never depends on anything else."""
        fitness = self._fitness(genomes)
        return sorted(zip(fitness.tolist(), genomes, strict=True),
                      key=lambda fg: (-fg[0], fg[1].hash))

    def step(self) -> None:
        """Breed and evaluate one generation."""
        if self.done:
            raise EpochError("the epoch is already complete")
        s, rng, space = self.settings, self._rng, self.space
        fitness = self._fitness(self._population)
        population = self._population

        def tournament() -> Genome:
            picks = rng.integers(len(population), size=s.tournament_size)
            best = min(picks.tolist(), key=lambda i: (-fitness[i], population[i].hash))
            return population[best]

        ranked = self._ranked(list({g.hash: g for g in population}.values()))
        children = [g for _, g in ranked[: s.elite]]
        children += [space.random_genome(rng) for _ in range(s.immigrants)]
        while len(children) < s.population_size:
            mother = tournament()
            child = space.crossover(mother, tournament(), rng) if (
                rng.random() < s.crossover_rate) else mother
            if rng.random() < s.mutation_rate:
                child = space.mutate(child, rng)
            children.append(child)
        self._evaluate(children)
        self._population = children
        self._generation += 1

    def result(self) -> EpochResult:
        if not self.done:
            raise EpochError(f"the epoch has run {self._generation} of {self.generations} "
                             "generations")
        ranked_population = self._ranked(self._population)
        everything = self._ranked([g for g, _ in self._evaluated.values()])
        top = tuple(ScoredGenome(g, f, Metrics.from_row(self._evaluated[g.hash][1].view(
            _ROW_DTYPE)[0])) for f, g in everything[: self.settings.top_k])
        population = tuple(g for _, g in ranked_population)
        rows = [row for _, row in self._evaluated.values()]
        mean, std = METRIC_FIELDS.index("return_mean"), METRIC_FIELDS.index("return_std")
        trials = TrialsSharpe.of_columns([row[mean] for row in rows], [row[std] for row in rows])
        digest = result_digest(
            population_hashes=[g.hash for g in population],
            top=[(t.genome.hash, t.fitness, asdict(t.metrics)) for t in top],
            evaluated=len(self._evaluated), generations=self.generations, trials=trials)
        return EpochResult(population=population, top=top, evaluated=len(self._evaluated),
                           generations=self.generations, digest=digest, trials=trials)


_ROW_DTYPE = np.dtype([(name, np.float64) for name in METRIC_FIELDS])


def result_digest(*, population_hashes: Sequence[str],
                  top: Sequence[tuple[str, float, dict[str, Any]]], evaluated: int,
                  generations: int, trials: TrialsSharpe) -> str:
    """The digest two hosts compare: sha256 of a canonical summary of an epoch's answer.

    ``top`` holds (genome hash, fitness, metrics) of the best genomes, best first.
    """
    summary = {
        "population": list(population_hashes),
        "top": [{"genome": h, "fitness": _digest_number(f),
                 "metrics": {k: _digest_number(v) for k, v in metrics.items()}}
                for h, f, metrics in top],
        "evaluated": evaluated,
        "generations": generations,
        "trials": [trials.n, _digest_number(trials.sharpe_sum),
                   _digest_number(trials.sharpe_sq_sum)],
    }
    text = json.dumps(summary, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def digest_of_output(output: dict[str, Any]) -> str:
    """Recompute the digest from a reported ``EpochResult.to_dict()``.

    The portal checks that a host's digest matches the answer it sent, so agreement on the
    digest is agreement on the answer. Raises ``EpochError`` if the output is malformed.
    """
    try:
        population = [Genome.from_dict(g).hash for g in output["population"]]
        top = []
        for entry in output["top"]:
            if Genome.from_dict(entry["genome"]).hash != entry["hash"]:
                raise EpochError("a top genome's hash does not match the genome")
            metrics = {k: _none_as_nonfinite(k, entry["metrics"][k]) for k in METRIC_FIELDS}
            top.append((entry["hash"], _none_as_nonfinite("fitness", entry["fitness"]),
                        metrics))
        return result_digest(population_hashes=population, top=top,
                             evaluated=int(output["evaluated"]),
                             generations=int(output["generations"]),
                             trials=TrialsSharpe.from_dict(output["trials"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise EpochError(f"malformed epoch output: {exc}") from None


def _none_as_nonfinite(name: str, value: Any) -> float:
    # to_dict() writes undefined figures (NaN) and infinite ratios as null. Both spell "nan"
    # or "inf" in the digest; null can only have come from one of those.
    if value is None:
        return math.nan if name in ("return_skew", "return_kurtosis") else math.inf
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EpochError(f"{name} must be a number, got {value!r}")
    return float(value)


def _digest_number(x: float) -> str:
    # 12 significant digits: identical hosts agree to the last bit anyway; this keeps a
    # last-ulp difference of a platform's libm (pow in the annual return) out of the digest.
    return f"{x:.12g}"


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def run_epoch(data: OHLCV, space: SearchSpace, settings: GASettings, seed: int,
              start_population: Sequence[Genome], generations: int,
              checkpoint: EpochState | None = None, *,
              on_generation: Callable[[EpochState], None] | None = None,
              threads: int = 1) -> EpochResult:
    """Run (or resume from ``checkpoint``) one island epoch to the end.

    ``on_generation`` receives the state after every generation, to save it; raising from it
    stops the epoch, which can later resume from the last state saved.
    """
    epoch = IslandEpoch(data, space, settings, seed, start_population, generations,
                        checkpoint=checkpoint, threads=threads)
    if on_generation is not None and checkpoint is None:
        on_generation(epoch.state)
    while not epoch.done:
        epoch.step()
        if on_generation is not None:
            on_generation(epoch.state)
    return epoch.result()
