"""Shared fixtures: the real data in ../shared/data."""
from __future__ import annotations

from pathlib import Path

import pytest
from support import SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a clean skip where it is absent (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA}")
    return SHARED_DATA
