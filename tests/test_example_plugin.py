"""The third-party example (examples/mint-simpo) installs like any package and MINT lists it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mint-simpo"


def test_example_plugin_installed_is_listed_with_its_version(tmp_path):
    target = tmp_path / "site"
    source = shutil.copytree(EXAMPLE, tmp_path / "mint-simpo", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    # A real pip install (no dependencies: MINT itself is already installed), into a private folder;
    # built from a copy so the checkout stays clean.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "mint_core.cli", "plugins", "list", "--json"], env=env,
                         capture_output=True, text=True, check=True)
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert rows["simpo"]["status"] == "ok", rows["simpo"]
    assert rows["simpo"]["version"] == "0.2.0"
    assert rows["simpo"]["provides"] == ["optimizer:simpo"]
    assert rows["orpo"]["status"] == "ok"  # the built-ins are unaffected


def test_broken_installed_plugin_shows_failed_and_list_exits_0(tmp_path):
    pkg = tmp_path / "src"
    (pkg / "mint_broken").mkdir(parents=True)
    (pkg / "mint_broken" / "__init__.py").write_text("raise ImportError('mint_broken needs libfoo')\n")
    (pkg / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "mint-broken"\nversion = "1.2.3"\n'
        '[project.entry-points.mint]\nbroken = "mint_broken"\n'
        '[tool.setuptools]\npackages = ["mint_broken"]\n')
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(pkg)], check=True, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-m", "mint_core.cli", "plugins", "list", "--json"], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert rows["broken"]["status"] == "failed" and rows["broken"]["version"] == "1.2.3"
    assert "needs libfoo" in rows["broken"]["error"]
    table = subprocess.run([sys.executable, "-m", "mint_core.cli", "plugins", "list"], env=env,
                           capture_output=True, text=True)
    assert table.returncode == 0 and "failed" in table.stdout
    strict = subprocess.run([sys.executable, "-m", "mint_core.cli", "plugins", "list"],
                            env={**env, "MINT_STRICT_PLUGINS": "1"}, capture_output=True, text=True)
    assert strict.returncode != 0 and "needs libfoo" in strict.stderr
