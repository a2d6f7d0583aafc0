"""Helpers the test modules import: paths of the test data and the implementation switch.

(Kept out of conftest.py: benchmarks/ has a conftest of its own, and two modules named
"conftest" cannot both be imported by name.)
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from connscan import _native

SHARED_DATA = Path(os.environ.get("CONNSCAN_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
TEST_DATA = Path(__file__).resolve().parent / "data"


def _impl_params(name: str):
    # The compiled twin is required when CONNSCAN_REQUIRE_EXTENSION is set (CI); otherwise
    # a missing build skips the "c" cases instead of failing them.
    required = os.environ.get("CONNSCAN_REQUIRE_EXTENSION", "") not in ("", "0")
    available = _native.implementations(name)
    params = []
    for impl in ("c", "py"):
        marks = []
        if impl not in available and not required:
            marks.append(pytest.mark.skip(reason=f"connscan._{name}_{impl} not built"))
        params.append(pytest.param(impl, id=impl, marks=marks))
    return params


def impl_fixture(name: str):
    """A fixture parametrised over the implementations of compiled module ``name``."""

    @pytest.fixture(params=_impl_params(name))
    def fixture(request):
        return _native.load(name, impl=request.param)

    return fixture
