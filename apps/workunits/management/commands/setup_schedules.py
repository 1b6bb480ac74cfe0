"""Declare the django-q2 schedules of the server daemons (idempotent: run it on every deploy).

Each daemon also runs right after the event that needs it (a report enqueues the transitioner,
which enqueues the validator, which enqueues the assimilator); these one-minute schedules are
the sweepers that catch deadlines, ghosts and anything a lost task left behind.
"""

from django.core.management.base import BaseCommand
from django.db import transaction
from django_q.models import Schedule

from apps.workunits.tasks import ASSIMILATOR, FILE_DELETER, TRANSITIONER, VALIDATOR

# name -> (function, minutes between runs)
SCHEDULES = {
    "transitioner": (TRANSITIONER, 1),
    "validator": (VALIDATOR, 1),
    "assimilator": (ASSIMILATOR, 1),
    "file deleter": (FILE_DELETER, 10),
}


class Command(BaseCommand):
    help = "Create or update the django-q2 schedules of the server daemons."

    def handle(self, *args, **options):
        with transaction.atomic():
            for name, (func, minutes) in SCHEDULES.items():
                _, created = Schedule.objects.update_or_create(
                    name=name,
                    defaults={"func": func, "schedule_type": Schedule.MINUTES,
                              "minutes": minutes, "repeats": -1})
                verb = "created" if created else "up to date"
                self.stdout.write(f"{name}: {func} every {minutes} min ({verb})")
