"""Atomic writes: a writer interrupted at its rename, or killed at any moment, leaves the old file or the
new one, never a partial one; the append-only metrics.jsonl tolerates a cut-off last line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mint_core import io
from mint_core.registry import MintError


class Crash(BaseException):
    """What a kill at the rename looks like to the writer (BaseException: no handler swallows it)."""


def _crash(src, dst):
    raise Crash(f"killed while renaming {src} -> {dst}")


@pytest.fixture
def crash_at_rename(monkeypatch):
    """Fault injection: every ``os.replace`` inside mint_core.io raises instead of renaming."""
    monkeypatch.setattr(io.os, "replace", _crash)


WRITERS = {
    "write_text": (lambda p: io.write_text(p, "new text\n"), lambda p: p.read_text()),
    "write_json": (lambda p: io.write_json(p, {"new": [1, 2]}), lambda p: io.read_json(p)),
    "write_yaml": (lambda p: io.write_yaml(p, {"new": 1}), lambda p: p.read_text()),
    "write_jsonl": (lambda p: io.write_jsonl(p, [{"row": i} for i in range(3)]), lambda p: io.read_jsonl(p)),
    "update_json": (lambda p: io.update_json(p, "new", 1), lambda p: io.read_json(p)),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_write_killed_at_its_rename_leaves_the_old_file(tmp_path, monkeypatch, writer):
    write, read = WRITERS[writer]
    path = tmp_path / "artifact"
    path.write_text('{"old": true}\n')
    before = path.read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(io.os, "replace", _crash)
        with pytest.raises(Crash):
            write(path)
    assert path.read_bytes() == before  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]  # no temporary file left behind
    write(path)  # and without the fault, the new one, whole
    assert read(path) != json.loads(before)


def test_a_new_file_killed_at_its_rename_does_not_exist(tmp_path, crash_at_rename):
    with pytest.raises(Crash):
        io.write_jsonl(tmp_path / "rankings.jsonl", [{"case_id": "a"}])
    assert list(tmp_path.iterdir()) == []


def test_adapter_folder_swap_killed_at_the_rename_keeps_the_old_adapter(tmp_path, monkeypatch):
    """atomic_save_adapter on a real peft model: killed at the folder rename, the old adapter stays whole."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from mint_llama.testing import build_tiny_llama
    from mint_engine import checkpoints as common

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(build_tiny_llama(tmp_path / "tiny")),
                           LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    target = tmp_path / "adapter"
    common.atomic_save_adapter(model, target)
    old = load_file(target / "adapter_model.safetensors")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.add_(1.0)
    calls = []
    real_replace = os.replace

    def replace(src, dst):  # the first rename (old folder aside) succeeds; the kill hits the second
        calls.append(dst)
        if len(calls) == 2:
            raise Crash(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)  # the os module every writer uses
    with pytest.raises(Crash):
        common.atomic_save_adapter(model, target)
    monkeypatch.setattr(os, "replace", real_replace)
    # The adapter folder itself may be missing for an instant, never half-written: the old one is
    # kept aside under a hidden name, and the next save puts the complete new one in place.
    if target.exists():
        assert load_file(target / "adapter_model.safetensors").keys() == old.keys()
    common.atomic_save_adapter(model, target)
    new = load_file(target / "adapter_model.safetensors")
    assert any(not torch.equal(new[k], old[k]) for k in old)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".adapter")] == []


# A writer in another process, SIGKILLed at arbitrary moments while it rewrites a large file:
# whatever moment the kill lands, the file holds one complete version.
_WRITER = """
import sys
from mint_core import io
path = sys.argv[1]
blobs = [{"version": v, "payload": str(v) * 2_000_000} for v in ("a", "b")]
print("ready", flush=True)
i = 0
while True:
    io.write_json(path, blobs[i % 2])
    i += 1
"""


def test_writer_killed_at_random_moments_leaves_a_complete_file(tmp_path):
    path = tmp_path / "big.json"
    seen = set()
    for delay in (0.05, 0.11, 0.17, 0.23, 0.31):
        process = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE,
                                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert process.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:  # at least one version in place
            time.sleep(0.01)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        data = json.loads(path.read_text())  # never a partial file
        assert data["payload"] == data["version"] * 2_000_000
        seen.add(data["version"])
    assert seen  # the file was always one whole version


# -- append-only metrics.jsonl ---------------------------------------------------------------------
def _state(step: int):
    from transformers import TrainerState

    state = TrainerState()
    state.global_step = step
    state.epoch = step / 10
    return state


def test_metrics_log_resumed_after_a_cut_off_line_keeps_one_whole_row_per_step(tmp_path):
    """A kill half-way through step 3's line, then a resume from checkpoint-2: the cut-off line is
    dropped, step 3 logged again on a line of its own, and the reader sees steps 1, 2, 3 once each."""
    from mint_engine.callbacks import MetricsLoggerCallback, read_metrics

    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "epoch": 0.1, "loss": 1.0}, {"step": 2, "epoch": 0.2, "loss": 0.9}]
    cut = json.dumps({"step": 3, "epoch": 0.3, "loss": 0.8})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + cut[: len(cut) // 2])
    assert [r["step"] for r in read_metrics(path)] == [1, 2]  # the reader skips the cut-off line

    logger = MetricsLoggerCallback(path)
    logger.on_train_begin(None, _state(2), None)
    logger.on_log(None, _state(3), None, logs={"loss": 0.8})
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [(1, 1.0), (2, 0.9), (3, 0.8)]
    assert all(json.loads(line) for line in path.read_text().splitlines())  # every line whole now


def test_metrics_log_resumed_drops_rows_after_the_checkpoint(tmp_path):
    """Rows the killed run logged after its last checkpoint are logged again by the resumed run: one each."""
    from mint_engine.callbacks import MetricsLoggerCallback, read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "epoch": s / 10, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3)))
    logger = MetricsLoggerCallback(path)
    logger.on_train_begin(None, _state(2), None)
    logger.on_log(None, _state(3), None, logs={"loss": 0.25})
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [(1, 1.0), (2, 0.5), (3, 0.25)]


@pytest.mark.parametrize("name", ["rankings.jsonl", "cases.jsonl", "preferences.jsonl"])
def test_strict_artifact_readers_report_a_cut_off_line(tmp_path, name):
    """Artifacts written whole (atomically) are read strictly: a cut-off line is a corruption, named with its line."""
    path = tmp_path / name
    path.write_text('{"case_id": "a"}\n{"case_id": "b"}\n{"case_id": "c", "lab')
    with pytest.raises((ValueError, MintError), match=rf"{name}:3"):
        io.read_jsonl(path)
