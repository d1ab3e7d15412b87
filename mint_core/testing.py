"""Helpers for testing plugins (and the core) without touching installed entry points.

    from mint_core.testing import isolated_registry, invoke

    def test_my_optimizer_is_listed():
        with isolated_registry(my_plugin_module, name="my-plugin") as registry:
            assert "optimizer:simpo" in registry.plugins["my-plugin"].provides
            result = invoke(["plugins", "list", "--json"])
            assert result.exit_code == 0

``isolated_registry`` swaps the process-wide registry for one that holds only the plugins you
give it (optionally the installed ones too), and restores the previous registry afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from click.testing import CliRunner, Result

from mint_core import registry as registry_module
from mint_core.registry import Registry


@contextmanager
def isolated_registry(*plugins: object, name: str | None = None, names: Sequence[str] | None = None,
                      load_entry_points: bool = False) -> Iterator[Registry]:
    """A registry with only ``plugins`` registered (plus installed ones if ``load_entry_points``)."""
    previous = registry_module._registry
    registry = Registry()
    if load_entry_points:
        registry.load_entry_points()
    plugin_names = list(names or [])
    for index, plugin in enumerate(plugins):
        plugin_name = plugin_names[index] if index < len(plugin_names) else (
            name if name and len(plugins) == 1 else getattr(plugin, "__name__", f"plugin-{index}"))
        registry.register_plugin(plugin, name=plugin_name)
    registry_module.set_registry(registry)
    try:
        yield registry
    finally:
        registry_module.set_registry(previous)


def invoke(args: Sequence[str], *, catch_exceptions: bool = False) -> Result:
    """Run the ``mint`` CLI in-process against the current registry; returns click's ``Result``."""
    from mint_core.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=catch_exceptions)
