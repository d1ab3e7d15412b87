"""Run the ``mint`` command line, SIGKILLing itself at a chosen point (the kill -9 harness's driver).

    python tests/kill9_driver.py run --run-dir DIR ...          # same arguments as `mint`

``MINT_KILL9=stage:kind:match:n`` makes the process ``kill -9`` itself at the n-th event of
``kind`` in ``stage`` whose detail contains ``match`` (empty: any), counted in this process.
If the stage ends before that event, the process kills itself at the end of the stage, so every
armed process dies in the stage it was aimed at. Events (what a real kill can interrupt):

- ``replace``: an ``os.replace`` (an atomic write's rename), killed just before it;
- ``save_file``: a safetensors write (teacher checkpoint, adapter, Trainer checkpoint model), cut off
  after half its bytes;
- ``torch_save``: a ``torch.save`` (optimizer, scheduler, RNG state inside a Trainer checkpoint), killed
  before it, so the checkpoint folder is left without its ``trainer_state.json``;
- ``step``: a Trainer optimizer step, killed before it runs (a step between checkpoints);
- ``log``: a ``metrics.jsonl`` append, cut off after half its line.

``MINT_KILL9_TRACE=FILE`` appends one ``stage kind detail`` line per event, so a test can see where
a run dies and what an uninterrupted run goes through. The patching happens here, in the test
driver: the product code has no kill switch.

``python tests/kill9_driver.py --serve`` imports torch, transformers and the plugins once, then
reads one JSON job per stdin line (``{"args": [...], "kill": "stage:kind:match:n" or "", "trace":
FILE, "log": FILE}``), forks a fresh process for it (the ``mint`` command line with the job's
arguments, output to ``log``), waits for it and answers ``{"status": S}`` on stdout: the exit code,
or ``-9`` when it was killed. Forking keeps a dozen kills within seconds each instead of paying the
imports every time; each job is still a real process that dies by SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

_SPEC = os.environ.get("MINT_KILL9", "")
_TRACE = os.environ.get("MINT_KILL9_TRACE", "")
_stage = ["start"]
_counts: dict[str, int] = {}


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _target() -> tuple[str, str, str, int] | None:
    if not _SPEC:
        return None
    stage, kind, match, n = _SPEC.split(":")
    return stage, kind, match, int(n)


def event(kind: str, detail: str) -> bool:
    """Record an event; True when this is the one to die at (the caller then dies its own way)."""
    stage = _stage[-1]
    if _TRACE:
        with open(_TRACE, "a", encoding="utf-8") as handle:
            handle.write(f"{stage} {kind} {detail}\n")
    target = _target()
    if target is None or target[0] != stage or target[1] != kind or target[2] not in detail:
        return False
    _counts[kind] = _counts.get(kind, 0) + 1
    return _counts[kind] == target[3]


def _patch() -> None:
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if event("replace", str(dst)):
            _die()
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace

    import safetensors.torch
    import torch

    real_save_file = safetensors.torch.save_file

    def save_file(tensors, filename, *args, **kwargs):
        result = real_save_file(tensors, filename, *args, **kwargs)
        if event("save_file", str(filename)):
            size = Path(filename).stat().st_size
            with open(filename, "r+b") as handle:
                handle.truncate(size // 2)
            _die()
        return result

    safetensors.torch.save_file = save_file

    real_torch_save = torch.save

    def torch_save(obj, f, *args, **kwargs):
        if event("torch_save", str(f)):
            _die()
        return real_torch_save(obj, f, *args, **kwargs)

    torch.save = torch_save

    import transformers

    real_step = transformers.Trainer.training_step

    def training_step(self, *args, **kwargs):
        if event("step", str(self.state.global_step + 1)):
            _die()
        return real_step(self, *args, **kwargs)

    transformers.Trainer.training_step = training_step

    from mint_engine import callbacks as common

    real_on_log = common._MetricsLoggerImpl.on_log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and event("log", str(state.global_step)):
            import json

            line = json.dumps({"step": int(state.global_step), **common._numeric(logs)}) + "\n"
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line[: len(line) // 2])
            _die()
        return real_on_log(self, args, state, control, logs=logs, **kwargs)

    common._MetricsLoggerImpl.on_log = on_log

    from mint_core.pipeline import Run

    for name, stage in (("teach", "teach"), ("prefs", "prefs"), ("train", "train"), ("evaluate", "eval")):
        setattr(Run, name, _staged(getattr(Run, name), stage))


def _staged(method, stage: str):
    def wrapper(self, *args, **kwargs):
        _stage.append(stage)
        try:
            result = method(self, *args, **kwargs)
        finally:
            _stage.pop()
        target = _target()
        # The aimed-at stage ended before its event: die here, between this stage and the next.
        if target is not None and target[0] == stage and stage not in _stage:
            event("end", stage)
            _die()
        return result

    return wrapper


def _serve() -> None:
    import json

    # What a run imports lazily, imported once here so every forked job starts warm. No torch op runs
    # in this parent, so no thread pool exists yet when it forks.
    import mint_gestalt.teacher, mint_llama.student, mint_engine.optimizer, mint_engine.trainer  # noqa: E401,F401
    import mint_core.evaluation, mint_rare_disease.task  # noqa: E401,F401
    from mint_core.registry import get_registry

    get_registry()
    global _SPEC, _TRACE
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _SPEC, _TRACE = job["kill"], job["trace"]
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = 0
            try:
                from mint_core.cli import cli

                cli(args=job["args"], prog_name="mint")
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - reported through the exit code and the log
                import traceback

                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"status": code}), flush=True)


if __name__ == "__main__":
    _patch()
    if sys.argv[1:] == ["--serve"]:
        _serve()
    else:
        from mint_core.cli import cli

        cli(args=sys.argv[1:], prog_name="mint")
