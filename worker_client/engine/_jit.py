"""Numba options, in one place.

Every kernel is compiled the same way: cached on disk (a worker restarts fast), no ``fastmath``
(it would let LLVM reorder floating-point sums, and two hosts must agree to the last bit),
``nogil`` so that threads can share a process, and NumPy's error model so that a division by
zero gives inf/NaN like the reference implementations instead of raising inside a kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba

_OPTIONS: dict[str, Any] = {
    "cache": True,
    "nogil": True,
    "fastmath": False,
    "error_model": "numpy",
}


def njit(fn: Callable[..., Any] | None = None, *, parallel: bool = False,
         inline: bool = False) -> Any:
    """``numba.njit`` with the project's options; usable bare or with arguments.

    ``inline=True`` inlines a small helper into its callers at numba's IR level: a call that
    passes arrays otherwise costs atomic reference-count updates, which dominate a per-bar
    helper.
    """
    options = dict(_OPTIONS, parallel=parallel)
    if inline:
        options["inline"] = "always"
    if fn is None:
        return lambda f: numba.njit(**options)(f)
    return numba.njit(**options)(fn)
