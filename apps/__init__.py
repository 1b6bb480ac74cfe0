"""The portal's Django apps, layered credit → workunits → accounts → common."""
