"""Helpers of the security suite: the worker API's (``tests.api``) and a persona's password."""

from __future__ import annotations

from tests.api import (  # noqa: F401  re-exported for the suite
    ATTACH,
    DIGEST,
    HOST,
    HOST_INFO,
    SCHEDULER,
    assert_error,
)
from tests.api import post_json as post_raw  # noqa: F401
from tests.api import worker as api  # noqa: F401

PASSWORD = "correct horse battery staple"
