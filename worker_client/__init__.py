"""Strategy@Home worker client. Never imports Django: volunteers install it alone."""

__version__ = "0.1.0"
