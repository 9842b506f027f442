from __future__ import annotations

import pytest

from dlab.planner.snapshot import HardwareSnapshot, load_snapshot
from dlab.profiles import example_machines


@pytest.fixture
def machine():
    """Load an example snapshot by name; each call returns a fresh copy to modify."""

    def _load(name: str) -> HardwareSnapshot:
        return load_snapshot(example_machines()[name])

    return _load
