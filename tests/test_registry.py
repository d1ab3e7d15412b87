"""Plugin loading, isolation, env filters, duplicates and did-you-mean."""

import inspect
import json
import types

import pytest

import core_plugins
from mint_core import hookspecs
from mint_core.hookspecs import hookimpl
from mint_core.registry import DuplicateComponentError, Registry, UnknownComponentError
from mint_core.testing import invoke, isolated_registry

BUILTINS = {
    "task:rare-disease", "task:tissue", "teacher:gestalt", "teacher:pathclip", "teacher:predictions",
    "builder:topk", "builder:kto", "builder:sft", "optimizer:orpo", "optimizer:dpo", "optimizer:kto",
    "optimizer:sft", "student:llama-text", "student:llama-vision",
}


def test_every_hookspec_is_documented_and_keyword_only():
    specs = [getattr(hookspecs, n) for n in dir(hookspecs) if n.startswith("mint_register")]
    assert len(specs) == 6
    for spec in specs:
        assert spec.__doc__ and len(spec.__doc__.strip()) > 30, spec.__name__
        params = inspect.signature(spec).parameters
        assert list(params) in (["register"], ["cli"]), spec.__name__
    assert "register(name, factory" in hookspecs.__doc__


def test_builtins_load_ok_and_provide_every_component():
    registry = Registry()
    registry.load_entry_points()
    failed = {p.name: p.error for p in registry.plugins.values() if p.status != "ok"}
    assert not failed, failed
    provides = {item for p in registry.plugins.values() for item in p.provides}
    assert BUILTINS <= provides, BUILTINS - provides


def test_broken_plugin_is_recorded_and_listing_still_works(monkeypatch):
    broken = types.ModuleType("broken_plugin")

    @hookimpl
    def mint_register_teachers(register):
        raise RuntimeError("cannot find my weights")

    broken.mint_register_teachers = mint_register_teachers
    with isolated_registry(core_plugins, broken, names=["core", "broken"]) as registry:
        assert registry.plugins["broken"].status == "failed"
        assert "cannot find my weights" in registry.plugins["broken"].error
        assert registry.plugins["core"].status == "ok"
        result = invoke(["plugins", "list", "--json"])
        assert result.exit_code == 0
        rows = {row["name"]: row for row in json.loads(result.output)}
        assert rows["broken"]["status"] == "failed" and "cannot find my weights" in rows["broken"]["error"]
        assert set(rows["core"]) == {"name", "version", "status", "provides", "hooks", "error"}
        assert "teacher:overlap" in rows["core"]["provides"]


def test_strict_mode_reraises(monkeypatch):
    monkeypatch.setenv("MINT_STRICT_PLUGINS", "1")
    broken = types.ModuleType("broken_plugin")

    @hookimpl
    def mint_register_tasks(register):
        raise RuntimeError("boom")

    broken.mint_register_tasks = mint_register_tasks
    with pytest.raises(RuntimeError, match="boom"):
        with isolated_registry(broken, name="broken"):
            pass


def test_load_and_disable_filters(monkeypatch):
    monkeypatch.setenv("MINT_LOAD_PLUGINS", "builders,gestalt")
    registry = Registry()
    registry.load_entry_points()
    status = {name: info.status for name, info in registry.plugins.items()}
    assert status["builders"] == "ok" and status["gestalt"] == "ok"
    assert status["pathclip"] == "blocked"
    assert "pathclip" not in registry.names("teacher")

    monkeypatch.setenv("MINT_LOAD_PLUGINS", "")
    registry = Registry()
    registry.load_entry_points()
    assert all(info.status == "blocked" for info in registry.plugins.values())
    assert registry.names("teacher") == []

    monkeypatch.delenv("MINT_LOAD_PLUGINS")
    monkeypatch.setenv("MINT_DISABLE_PLUGINS", "pathclip")
    registry = Registry()
    registry.load_entry_points()
    assert registry.plugins["pathclip"].status == "blocked"
    assert "gestalt" in registry.names("teacher") and "pathclip" not in registry.names("teacher")


def test_duplicate_component_names_both_plugins():
    twin = types.ModuleType("twin")

    @hookimpl
    def mint_register_teachers(register):
        register("overlap", lambda config: None)

    twin.mint_register_teachers = mint_register_teachers
    with isolated_registry(core_plugins, twin, names=["core", "twin"]) as registry:
        assert registry.plugins["twin"].status == "failed"
        assert "'core'" in registry.plugins["twin"].error and "'twin'" in registry.plugins["twin"].error
        with pytest.raises(DuplicateComponentError, match="'core' and 'twin'"):
            registry.get("teacher", "overlap")


def test_unknown_name_suggests_closest():
    with isolated_registry(core_plugins, name="core") as registry:
        with pytest.raises(UnknownComponentError) as info:
            registry.get("teacher", "overlapp")
    message = str(info.value)
    assert "Unknown teacher 'overlapp'. Did you mean 'overlap'? Available: overlap (see 'mint plugins list')" == message


def test_cli_unknown_teacher_exits_2_with_suggestion():
    result = invoke(["run", "--teacher", "pathclp"])
    assert result.exit_code == 2
    assert "Did you mean 'pathclip'?" in result.output
    assert "gestalt" in result.output and "predictions" in result.output


def test_plugins_info_shows_config_fields():
    result = invoke(["plugins", "info", "builders"])
    assert result.exit_code == 0, result.output
    assert "builder.k" in result.output
