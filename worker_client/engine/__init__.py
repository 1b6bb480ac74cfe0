"""The Strategy@Home engine: numba backtests, strategy genomes and an island GA.

Imports only NumPy, numba and itself. The public names below are the engine's API; modules
and names starting with an underscore are private kernels.
"""

from .backtest import (
    METRIC_FIELDS,
    METRICS_DTYPE,
    TRADE_DTYPE,
    BacktestResult,
    Costs,
    Metrics,
    backtest,
    evaluate_population,
)
from .data import OHLCV, DataError, synthetic_ohlcv
from .genome import MAX_CONDITIONS, Condition, Genome, GenomeError
from .series import FeatureTable, SeriesKeyError

__all__ = [
    "MAX_CONDITIONS",
    "METRICS_DTYPE",
    "METRIC_FIELDS",
    "OHLCV",
    "TRADE_DTYPE",
    "BacktestResult",
    "Condition",
    "Costs",
    "DataError",
    "FeatureTable",
    "Genome",
    "GenomeError",
    "Metrics",
    "SeriesKeyError",
    "backtest",
    "evaluate_population",
    "synthetic_ohlcv",
]
