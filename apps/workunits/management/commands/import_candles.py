"""Import a CSV file of OHLCV candles as a data set (see apps.workunits.marketdata for layouts).

    manage.py import_candles BTC-USD-5m.csv --symbol BTC-USD --timeframe 5m --exchange coinbase
"""

from django.core.management.base import BaseCommand, CommandError

from apps.common.errors import ApplicationError
from apps.workunits.marketdata import (
    dataset_get_or_create,
    format_timestamp,
    parse_candles,
)
from worker_client.datafile import TIMEFRAMES


class Command(BaseCommand):
    help = ("Import OHLCV candles from a CSV file (Coinbase, Binance klines, CryptoDataDownload "
            "or timestamp,open,high,low,close,volume; .gz and .zip too) as a data set.")

    def add_arguments(self, parser):
        parser.add_argument("file", help="the CSV file")
        parser.add_argument("--symbol", required=True, help="e.g. BTC-USD")
        parser.add_argument("--timeframe", required=True, choices=list(TIMEFRAMES),
                            help="the bar length the file holds")
        parser.add_argument("--exchange", default="", help="where the candles come from")

    def handle(self, *args, file, symbol, timeframe, exchange, **options):
        try:
            candles = parse_candles(file, timeframe=timeframe)
            dataset, created = dataset_get_or_create(data=candles.data, symbol=symbol,
                                                     timeframe=timeframe, exchange=exchange)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Read {candles.rows_read:,} rows (layout: {candles.layout})")
        self.stdout.write(f"Duplicates dropped: {candles.duplicates_dropped:,}")
        self.stdout.write(f"Gaps: {candles.gaps.describe()}")
        verb = "Created" if created else "Already imported as"
        self.stdout.write(self.style.SUCCESS(
            f"{verb} data set #{dataset.pk}: {dataset.symbol} {dataset.timeframe}, "
            f"{dataset.bar_count:,} bars from {format_timestamp(candles.data.timestamp[0])} "
            f"to {format_timestamp(candles.data.timestamp[-1])}"))
        self.stdout.write(f"sha256 {dataset.sha256}")
