"""Resuming a run from its saved config.yaml: the stage fingerprints must not change, or a killed
run would redo finished stages and throw its checkpoints away (the kill -9 harness, test_kill9.py,
checks the whole pipeline; this is the fast check of the config round trip)."""

from __future__ import annotations

import pytest

from mint_core import io
from mint_core.config import load_config_file, parse_overrides, resolve
from mint_core.pipeline import Run
from mint_core.rundir import fingerprint
from mint_core.registry import Registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    registry = Registry()
    registry.load_entry_points()
    return registry


@pytest.mark.parametrize("flags", [{}, {"optimizer": "dpo"}, {"optimizer": "kto"}, {"teacher": "pathclip"}])
def test_a_run_resumed_from_its_config_yaml_has_the_same_stage_fingerprints(registry, tmp_path, flags):
    first = resolve(registry, flags=flags, overrides=parse_overrides(["optimizer.max_steps=3", "seed=2"]))
    io.write_yaml(tmp_path / "config.yaml", first)
    again = resolve(registry, file=load_config_file(tmp_path / "config.yaml"))  # what `--run-dir` resumes with
    assert again == first  # values equal (1 == 1.0); YAML may have turned an int default into a float
    for kinds in (("task", "teacher"), ("task", "teacher", "student"), ("task", "teacher", "student", "eval")):
        a = Run(registry=registry, config=first, run_dir=tmp_path / "a").section_fp(*kinds)
        b = Run(registry=registry, config=again, run_dir=tmp_path / "b").section_fp(*kinds)
        assert a == b, kinds
    for kind in ("builder", "optimizer"):
        assert fingerprint(first[kind]) == fingerprint(again[kind]), kind


def test_fingerprint_tells_changed_values_apart():
    assert fingerprint({"epochs": 1}) == fingerprint({"epochs": 1.0})
    assert fingerprint({"epochs": 1}) != fingerprint({"epochs": 1.5})
    assert fingerprint({"lr": 1e-4}) != fingerprint({"lr": 2e-4})
    assert fingerprint({"flag": True}) != fingerprint({"flag": 1})  # a bool is not a number here
