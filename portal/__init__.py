"""Strategy@Home portal: the Django project (settings, URLs, WSGI/ASGI entry points)."""
