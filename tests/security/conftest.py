"""Personas of the security suite.

    ada, bob    two volunteers who log in with ``PASSWORD``, each with one attached host
                (``.host``; the raw token is ``.host.token``, the raw key ``.account_key``)
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import make_host, make_user, make_volunteer
from tests.security.helpers import PASSWORD


@pytest.fixture(autouse=True)
def _security_settings(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MIN_CLIENT_VERSION = "0.1.0"
    # Hashing a password costs ~0.3 s with the real hasher; the personas log in often.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _persona(name: str) -> Any:
    volunteer = make_volunteer(user=make_user(name, password=PASSWORD),
                               display_name=name.title())
    volunteer.host = make_host(volunteer=volunteer, name=f"{name}-rig")
    return volunteer


@pytest.fixture
def ada(db):
    return _persona("ada")


@pytest.fixture
def bob(db):
    return _persona("bob")


