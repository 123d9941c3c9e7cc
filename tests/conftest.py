"""Shared fixtures. Fixtures of the data stages start with ``data_``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cast import cli

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_sample_root() -> Path:
    """The committed sample: ``data/sample`` with ``images/``, ``ATTRIBUTION.csv`` and ``LICENSES.md``."""
    root = REPOSITORY / "data" / "sample"
    assert (root / "images").is_dir(), f"{root}/images is missing; rebuild it with scripts/build_sample.py"
    return root


@pytest.fixture(scope="session")
def data_photos(data_sample_root) -> list[Path]:
    """Every sample photo, sorted by path."""
    return sorted((data_sample_root / "images").rglob("*.jpg"))


@pytest.fixture
def data_cli(caplog):
    """Run a ``cast`` command in this process; return its exit status and the log text it produced."""

    def run(*argv: object) -> tuple[int, str]:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            status = cli.main([str(arg) for arg in argv])
        return status, caplog.text

    return run
