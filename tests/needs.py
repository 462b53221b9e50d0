"""Tools some tests need from the machine (php, supervisord).

Locally a missing tool skips the test with the reason; in CI (``CI`` set)
it fails it, because ``.ci/run`` installs them and a silent skip would hide
a broken install step.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: .ci/run should have installed it)", pytrace=False)
    pytest.skip(reason)


def program(name: str, package: str) -> str:
    """Absolute path of ``name`` on PATH, or skip/fail naming the Debian package."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (apt-get install {package})")
    return path


def php_with_redis() -> str:
    php = program("php", "php-cli php-redis")
    modules = subprocess.run([php, "-m"], capture_output=True, text=True, timeout=30).stdout
    if "redis" not in modules.lower().split():
        missing("php has no redis extension (apt-get install php-redis)")
    return php
