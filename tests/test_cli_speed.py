"""`mint --help` and `mint plugins list` must stay fast: no plugin may import torch at load time."""

import json
import subprocess
import sys

import pytest

CHECK = """
import json, sys
from mint_core.registry import get_registry
from mint_core.cli import cli
registry = get_registry()
from mint_core.config import resolve
resolve(registry)  # resolving the default config needs no heavy import either
heavy = sorted(m for m in ("torch", "transformers", "trl", "peft", "timm", "open_clip", "matplotlib")
               if m in sys.modules)
print(json.dumps({"heavy": heavy, "failed": {p.name: p.error for p in registry.plugins.values()
                                              if p.status == "failed"}}))
"""


def test_listing_plugins_imports_no_heavy_module():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["failed"] == {}
    assert result["heavy"] == [], f"imported at plugin load time: {result['heavy']}"


@pytest.mark.parametrize("args", [["--help"], ["plugins", "list", "--json"]])
def test_cli_entry_point_runs(args):
    out = subprocess.run([sys.executable, "-m", "mint_core.cli", *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    if "--json" in args:
        names = {row["name"] for row in json.loads(out.stdout)}
        assert {"gestalt", "pathclip", "orpo", "trl", "llama_text"} <= names
