"""kill -9 anywhere: a tiny real `mint run` killed in every stage resumes to an uninterrupted run's result.

The driver (tests/kill9_driver.py) runs the real command line and SIGKILLs itself at a chosen
event: just before an atomic write's rename, half-way through a safetensors write, before a
checkpoint's ``torch.save``, before a training step, half-way through a ``metrics.jsonl`` line.
Two chains of kills (teach + prefs in one run directory, train + eval in another) are each
resumed with the same command; an uninterrupted run with the same seed runs beside them. After
every kill, no visible artifact may be half-written; at the end every deterministic artifact
must be byte-identical to the uninterrupted run's and the metrics equal (timings aside).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("kill9_driver.py")

# Each kill: (stage, event kind, detail substring, n-th such event in the process). Every process of
# a chain dies at its kill; the chain's last process runs to the end.
TEACH_PREFS_KILLS = [
    ("teach", "replace", "faces", 5),            # rendering the faces (the 5th image's rename)
    ("teach", "save_file", "gestalt", 1),        # the teacher checkpoint cut off half-way
    ("teach", "replace", "rankings.jsonl", 1),   # the teacher fitted and saved, rankings not yet in place
    ("prefs", "replace", "preferences.jsonl", 1),
    ("prefs", "replace", "prefs_summary", 1),
    ("prefs", "replace", "stages.json", 1),      # everything written, the stage not yet marked done
]
TRAIN_EVAL_KILLS = [
    ("train", "step", "3", 1),                   # between checkpoint-2 and checkpoint-4
    ("train", "log", "", 1),                     # resumed from checkpoint-2: step 3's metrics line cut off
    ("train", "torch_save", "optimizer.pt", 1),  # inside checkpoint-4's save (no trainer_state.json yet)
    ("train", "save_file", ".adapter.", 1),      # the final adapter half-written in its temporary folder
    ("train", "replace", "result.json", 1),      # adapter saved, the stage's result not yet
    ("eval", "replace", "predictions", 1),
    ("eval", "replace", "metrics.json", 1),
    ("eval", "replace", "report.md", 1),
]
TIMING_KEYS = {"seconds", "train_seconds", "train_runtime", "train_samples_per_second", "train_steps_per_second"}


def _args(model_dir: Path, run_dir: Path) -> list[str]:
    return ["run", "--run-dir", str(run_dir), "--student", "llama-text", f"student.model={model_dir}",
            "student.lora_r=4", "student.device=cpu", "task.n_diseases=3", "task.cases_per_disease=4",
            "teacher.modalities=image", "teacher.epochs=1", "builder.k=2", "builder.q=2", "optimizer.max_steps=5",
            "optimizer.save_steps=2", "optimizer.batch_size=2", "eval.max_cases=4", "eval.max_new_tokens=16"]


class Driver:
    """The kill -9 driver in serve mode: one warm parent that forks every run."""

    def __init__(self, tmp: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MINT_KILL9": "", "MINT_KILL9_TRACE": ""}
        self.process = subprocess.Popen([sys.executable, str(DRIVER), "--serve"], env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=(tmp / "driver.log").open("ab"), text=True)

    def run(self, args: list[str], kill: tuple | None, trace: Path, log: Path) -> int:
        job = {"args": args, "kill": ":".join(map(str, kill)) if kill else "", "trace": str(trace), "log": str(log)}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        assert answer, "the kill -9 driver died (see driver.log)"
        return json.loads(answer)["status"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def run_chain(driver: Driver, model_dir: Path, run_dir: Path, kills: list[tuple], tmp: Path) -> None:
    """Each kill in its own process on ``run_dir``, then one more process that runs to the end."""
    trace, log = tmp / f"{run_dir.name}.trace", tmp / f"{run_dir.name}.log"
    for kill in [*kills, None]:
        status = driver.run(_args(model_dir, run_dir), kill, trace, log)
        last = trace.read_text().splitlines()[-1] if trace.exists() else ""
        if kill is None:
            assert status == 0, log.read_text()[-3000:]
            # A resumed run continued from the killed one's checkpoints, never afresh (the outcome
            # alone could not tell: training afresh gives the same numbers).
            assert "training afresh" not in log.read_text()
            continue
        assert status == -signal.SIGKILL, (kill, status, log.read_text()[-3000:])
        stage, kind, match, _ = kill
        # It died at the event it was aimed at, not at the end of the stage (the aim would be off).
        assert last.startswith(f"{stage} {kind} ") and match in last, (kill, last)
        assert_nothing_half_written(run_dir)


def visible_files(run_dir: Path) -> list[Path]:
    """Artifacts a reader may open: no hidden temporary files, no checkpoint a kill cut off (a
    ``checkpoint-N`` without ``trainer_state.json``, which the Trainer writes last and resuming skips)."""
    files = []
    for path in sorted(run_dir.rglob("*")):
        parts = path.relative_to(run_dir).parts
        if not path.is_file() or any(p.startswith(".") for p in parts):
            continue
        checkpoint = next((run_dir.joinpath(*parts[:i + 1]) for i, p in enumerate(parts)
                           if p.startswith("checkpoint-")), None)
        if checkpoint is not None and not (checkpoint / "trainer_state.json").is_file():
            continue
        files.append(path)
    return files


def assert_nothing_half_written(run_dir: Path) -> None:
    from PIL import Image
    from safetensors import safe_open

    for path in visible_files(run_dir):
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            lines = path.read_text().split("\n")
            assert lines[-1] == "" or path.name == "metrics.jsonl", f"{path}: last line cut off"
            for number, line in enumerate(lines[:-1], 1):  # only an append-only log's last line may be cut
                _parses(line, f"{path}:{number}")
        elif path.suffix == ".yaml":
            assert isinstance(yaml.safe_load(path.read_text()), dict), path
        elif path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    handle.get_tensor(key)
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.load()


def _parses(line: str, where: str) -> None:
    try:
        json.loads(line)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{where}: a half-written line is visible ({exc.msg})") from exc


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def assert_same_result(reference: Path, resumed: Path) -> None:
    """Byte-identical deterministic artifacts; equal metrics with wall-clock timings left out (and
    the run directory's own path, which result.json records)."""
    skip = {"logs", "checkpoints"}
    names = {p.relative_to(reference) for p in visible_files(reference) if not skip & set(p.relative_to(reference).parts)}
    got = {p.relative_to(resumed) for p in visible_files(resumed) if not skip & set(p.relative_to(resumed).parts)}
    assert names == got
    for name in sorted(names):
        want, have = reference / name, resumed / name
        if name.name == "stages.json":  # the eval fingerprint holds result.json's mtime: compare the stages
            assert json.loads(want.read_text()).keys() == json.loads(have.read_text()).keys()
        elif name.name == "config.yaml":  # a resumed run re-saves it from itself: 1 may come back as 1.0
            assert yaml.safe_load(have.read_text()) == yaml.safe_load(want.read_text())
        elif name.suffix == ".json":  # metrics.json, result.json, teacher/gestalt.json hold timings
            assert _without_timings(json.loads(have.read_text().replace(str(resumed), "RUN"))) == \
                _without_timings(json.loads(want.read_text().replace(str(reference), "RUN"))), name
        elif name.name == "metrics.jsonl":
            rows = [_without_timings(json.loads(line)) for line in have.read_text().splitlines()]
            assert rows == [_without_timings(json.loads(line)) for line in want.read_text().splitlines()], name
        else:
            assert have.read_bytes() == want.read_bytes(), f"{name} differs from the uninterrupted run's"


def test_kill9_in_every_stage_resumes_to_the_uninterrupted_result(tmp_path):
    from mint_llama.testing import build_tiny_llama

    model_dir = build_tiny_llama(tmp_path / "tiny")
    reference, teach_prefs, train_eval = tmp_path / "reference", tmp_path / "killed-teach", tmp_path / "killed-train"
    driver = Driver(tmp_path)
    try:
        assert driver.run(_args(model_dir, reference), None, tmp_path / "reference.trace",
                          tmp_path / "reference.log") == 0, (tmp_path / "reference.log").read_text()[-3000:]
        run_chain(driver, model_dir, teach_prefs, TEACH_PREFS_KILLS, tmp_path)
        run_chain(driver, model_dir, train_eval, TRAIN_EVAL_KILLS, tmp_path)
    finally:
        driver.close()

    assert "resuming from" in (tmp_path / "killed-train.log").read_text()
    assert_nothing_half_written(reference)
    for resumed in (teach_prefs, train_eval):
        assert_same_result(reference, resumed)
    kills = TEACH_PREFS_KILLS + TRAIN_EVAL_KILLS
    assert all(sum(k[0] == stage for k in kills) >= 3 for stage in ("teach", "prefs", "train", "eval"))
