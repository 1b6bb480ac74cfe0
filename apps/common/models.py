from collections.abc import Iterable

from django.db import models


class TimestampedModel(models.Model):
    """Base for the project's models: when a row was created and last saved (aware UTC).

    `save(update_fields=[...])` also writes `updated_at`, which Django would otherwise leave
    out. Queryset `.update()` bypasses `save()`, so conditional updates must set
    `updated_at=timezone.now()` themselves.
    """

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True

    def save(self, *args, update_fields: Iterable[str] | None = None, **kwargs) -> None:
        if update_fields is not None:
            update_fields = set(update_fields)
            if update_fields:  # an empty list means "save nothing": keep it that way
                update_fields.add("updated_at")
        super().save(*args, update_fields=update_fields, **kwargs)
