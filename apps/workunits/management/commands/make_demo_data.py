"""Create the seeded synthetic 5-minute data set used by the demo and the tests (idempotent)."""

from django.core.management.base import BaseCommand, CommandError

from apps.common.errors import ApplicationError
from apps.workunits.marketdata import dataset_create_synthetic


class Command(BaseCommand):
    help = "Create a seeded synthetic 5-minute candle data set (the same seed gives the same set)."

    def add_arguments(self, parser):
        parser.add_argument("--bars", type=int, default=100_000, help="number of candles")
        parser.add_argument("--seed", type=int, default=20240501, help="random seed")
        parser.add_argument("--symbol", default="BTC-USD")

    def handle(self, *args, bars, seed, symbol, **options):
        try:
            dataset = dataset_create_synthetic(bars=bars, seed=seed, symbol=symbol)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(self.style.SUCCESS(
            f"Data set #{dataset.pk}: {dataset} synthetic, seed {seed}, "
            f"{dataset.first_bar:%Y-%m-%dT%H:%M:%SZ} to {dataset.last_bar:%Y-%m-%dT%H:%M:%SZ}"))
        self.stdout.write(f"sha256 {dataset.sha256}")
