"""The benchmarks' own argument parsing (their measurements live in benchmarks/README.md, not in tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from demo_sweep import parse_grid  # noqa: E402


def test_demo_sweep_grid_reads_the_rejected_side():
    assert parse_grid("8:4:1e-3, 8:4:1e-3:5:hard,4:2:2e-3:3") == [
        (8, 4.0, 1e-3, None, None), (8, 4.0, 1e-3, 5, "hard"), (4, 2.0, 2e-3, 3, "bottom")]


@pytest.mark.parametrize("item", ["8:4", "8:4:1e-3:5:random", "8:4:1e-3:five", "8:4:1e-3:5:hard:x"])
def test_demo_sweep_grid_rejects_a_malformed_item(item):
    with pytest.raises(SystemExit, match="lora_layers:epochs:lr"):
        parse_grid(item)
