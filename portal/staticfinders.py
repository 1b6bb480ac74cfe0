"""Static files that come from installed Python packages rather than from ``static/``.

The charts use plotly.js as the ``plotly`` PyPI package ships it (``package_data/plotly.min.js``),
so the portal's own setup installs the library and no page fetches it from a CDN: the site works
offline. This finder exposes that one file as ``vendor/plotly.min.js`` to ``findstatic``,
``collectstatic`` and whitenoise's finder mode (DEBUG and tests).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import Error
from django.core.files.storage import FileSystemStorage

# URL path under STATIC_URL -> (package, file inside the package)
PACKAGE_STATIC_FILES = {
    "vendor/plotly.min.js": ("plotly", "package_data/plotly.min.js"),
}


def _package_file(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


class PackageFileFinder(BaseFinder):
    """Finds the files of :data:`PACKAGE_STATIC_FILES` inside their installed packages."""

    def check(self, **kwargs):
        return [
            Error(f"static file {url} needs {relative} from the {package!r} package, which is "
                  "not installed", hint='install the portal extra: pip install -e ".[portal]"',
                  id="portal.E001")
            for url, (package, relative) in PACKAGE_STATIC_FILES.items()
            if _package_file(package, relative) is None
        ]

    def find(self, path, find_all=False, **kwargs):
        found = None
        if path in PACKAGE_STATIC_FILES:
            file = _package_file(*PACKAGE_STATIC_FILES[path])
            found = str(file) if file is not None else None
        if find_all:
            return [found] if found else []
        return found

    def list(self, ignore_patterns):
        for url in PACKAGE_STATIC_FILES:
            file = _package_file(*PACKAGE_STATIC_FILES[url])
            if file is None:
                continue
            storage = FileSystemStorage(location=file.parent)
            # collectstatic and whitenoise put a storage's files under its prefix.
            storage.prefix = str(Path(url).parent)
            yield file.name, storage
