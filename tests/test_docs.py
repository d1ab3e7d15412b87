"""Every `mint ...` command in the README and docs/ parses: the stage commands through `mint validate`
(components, options and overrides resolved and checked), the others through their own --help or a
real quick run. Commands under torchrun / accelerate are checked from `-m mint_core.cli` on.

A command that only a GPU, the hub or the user's own files can run is still checked this way: its
options must exist and its values type-check. The quick ones run for real elsewhere (the demo in
.ci/run, `mint plugins list` here).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mint_core.testing import invoke

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
STAGES = {"run", "teach", "prefs", "train", "eval", "compare", "validate"}
OPTIONS_WITHOUT_VALIDATE = {"--methods", "--seeds", "--roles"}  # compare/eval flags validate does not take


def fenced_commands(path: Path) -> list[str]:
    """Shell lines of the fenced bash blocks of ``path`` that call mint, continuations joined, comments cut."""
    text = path.read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" # ")[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("mint ") or "-m mint_core.cli" in part:
                    commands.append(part)
    return commands


def mint_args(command: str) -> list[str]:
    args = shlex.split(command)
    if "mint_core.cli" in args:
        return args[args.index("mint_core.cli") + 1:]
    return args[1:]


COMMANDS = [(path.relative_to(REPO).as_posix(), command) for path in DOCS for command in fenced_commands(path)]


def test_the_docs_hold_commands():
    assert len(COMMANDS) >= 15 and any(path == "README.md" for path, _ in COMMANDS)


@pytest.mark.parametrize("where, command", COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in COMMANDS])
def test_documented_command_parses(where, command, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # commands are written from the repository root
    args = mint_args(command)
    name = args[0]
    if name in STAGES:
        rest, skip = [], False
        for arg in args[1:]:
            if skip:
                skip = False
                continue
            if arg in OPTIONS_WITHOUT_VALIDATE or arg == "--run-dir":  # a run dir of our own below
                skip = True
                continue
            rest.append(arg)
        result = invoke(["validate", "--run-dir", str(tmp_path / "run"), *rest])
        assert result.exit_code == 0, f"{where}: {command}\n{result.output}"
    elif name == "plugins":
        result = invoke(args)
        assert result.exit_code == 0, f"{where}: {command}\n{result.output}"
    else:  # predict, export: need a finished run; their options must exist
        result = invoke([name, "--help"])
        assert result.exit_code == 0, result.output
        flags = {a.split("=")[0] for a in args[1:] if a.startswith("--")}
        assert all(flag in result.output for flag in flags), f"{where}: {command} uses an unknown option"
