"""Strategy@Home worker client. Never imports Django: volunteers install it alone."""

__version__ = "0.2.0"

# SIGTERMs that arrived before the runner installed its own handler (a service manager may stop
# the worker while it is still starting): the runner starts by honouring them. Here, not in
# cli.py, because `python -m worker_client.cli` runs that module as __main__, a second copy.
EARLY_STOPS: list[int] = []
