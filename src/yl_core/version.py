"""The package version, from the installed distribution's metadata (one source: pyproject)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _installed_version() -> str:
    try:
        return version("yl-status")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


PACKAGE_VERSION = _installed_version()
