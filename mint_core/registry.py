"""Plugin loading and the component registry.

Plugins come from the ``mint`` entry-point group, built-ins included. Loading is isolated: a
plugin whose import or registration raises is recorded as ``failed`` with its error, and the
rest of MINT goes on (``MINT_STRICT_PLUGINS=1`` re-raises instead).

Environment:
- ``MINT_LOAD_PLUGINS=a,b``: load only these plugins (entry-point or distribution names);
  set but empty, load none.
- ``MINT_DISABLE_PLUGINS=a,b``: never load these (shown as ``blocked``).
- ``MINT_STRICT_PLUGINS=1``: a plugin error is raised, not recorded.
"""

from __future__ import annotations

import difflib
import os
import traceback
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import metadata
from typing import Any, Callable, Iterable, Literal

import pluggy

from mint_core import hookspecs

KINDS = ("task", "teacher", "builder", "optimizer", "student")
Kind = Literal["task", "teacher", "builder", "optimizer", "student"]
HOOK_FOR_KIND = {
    "task": "mint_register_tasks",
    "teacher": "mint_register_teachers",
    "builder": "mint_register_builders",
    "optimizer": "mint_register_optimizers",
    "student": "mint_register_students",
}
ENTRY_POINT_GROUP = "mint"


class MintError(Exception):
    """An error meant for the user: printed without a traceback, exit code 2."""

    exit_code = 2


class UnknownComponentError(MintError):
    pass


class DuplicateComponentError(MintError):
    pass


@dataclass
class ComponentSpec:
    """One registered component: what ``register(...)`` was called with, and by whom."""

    kind: Kind
    name: str
    factory: Callable[[Any], Any]
    plugin: str
    config: type | None = None
    description: str = ""
    pairs_with: dict[str, str] = field(default_factory=dict)
    #: Demo sizing this component asks for (``{section: {option: value}}``), applied to runs
    #: without a config file on top of the core's :data:`mint_core.config.DEMO_DEFAULTS`.
    demo: dict[str, dict[str, Any]] = field(default_factory=dict)

    def default_config(self) -> Any:
        return self.config() if self.config is not None else None

    def config_fields(self) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) of each config field."""
        if self.config is None:
            return []
        instance = self.config()
        return [(f.name, str(f.type), getattr(instance, f.name), f.metadata.get("help", ""))
                for f in fields(self.config)]

    def create(self, config: Any = None) -> Any:
        return self.factory(config if config is not None else self.default_config())


@dataclass
class PluginInfo:
    """What ``mint plugins list`` shows for one plugin."""

    name: str
    version: str = ""
    distribution: str = ""
    status: Literal["ok", "failed", "blocked"] = "ok"
    error: str = ""
    traceback: str = ""
    hooks: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "status": self.status, "provides": self.provides,
                "hooks": self.hooks, "error": self.error}


def _csv_env(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {item.strip() for item in value.split(",") if item.strip()}


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def suggest(name: str, options: Iterable[str]) -> str | None:
    """The closest option to ``name``, for did-you-mean messages."""
    matches = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return matches[0] if matches else None


class Registry:
    """The plugin manager plus every component the loaded plugins registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.components: dict[str, dict[str, ComponentSpec]] = {kind: {} for kind in KINDS}
        self._conflicts: dict[tuple[str, str], list[str]] = {}
        self.strict = _truthy("MINT_STRICT_PLUGINS")

    # -- loading -----------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        """Import and register every plugin of the ``mint`` entry-point group, isolated."""
        only = _csv_env("MINT_LOAD_PLUGINS")
        blocked = _csv_env("MINT_DISABLE_PLUGINS") or set()
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else ""
            info = PluginInfo(name=ep.name, version=ep.dist.version if ep.dist else "", distribution=dist)
            if ep.name in self.plugins:
                continue  # the same distribution seen twice on sys.path
            self.plugins[ep.name] = info
            if ep.name in blocked or dist in blocked:
                info.status = "blocked"
                info.error = "disabled by MINT_DISABLE_PLUGINS"
                continue
            if only is not None and ep.name not in only and dist not in only:
                info.status = "blocked"
                info.error = "not in MINT_LOAD_PLUGINS"
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - a plugin may raise anything on import
                self._fail(info, exc)
                continue
            self.register_plugin(plugin, name=ep.name, info=info)

    def register_plugin(self, plugin: object, *, name: str, info: PluginInfo | None = None) -> PluginInfo:
        """Register one plugin object (a module or an instance with hookimpls) and its components."""
        info = info or self.plugins.get(name) or PluginInfo(name=name)
        self.plugins[name] = info
        try:
            self.pm.register(plugin, name=name)
            info.hooks = sorted(impl.name for impl in self.pm.get_hookcallers(plugin) or [])
            for kind, hook_name in HOOK_FOR_KIND.items():
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    if impl.plugin is plugin:
                        impl.function(register=self._registrar(kind, name, info))
        except Exception as exc:  # noqa: BLE001
            self._fail(info, exc)
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self._drop_components_of(name)
        return info

    def _registrar(self, kind: Kind, plugin_name: str, info: PluginInfo) -> Callable[..., None]:
        def register(name: str, factory: Callable[[Any], Any], *, config: type | None = None,
                     description: str = "", pairs_with: dict[str, str] | None = None,
                     demo: dict[str, dict[str, Any]] | None = None) -> None:
            if config is not None and not is_dataclass(config):
                raise TypeError(f"{kind} {name!r}: config must be a dataclass, got {config!r}")
            existing = self.components[kind].get(name)
            if existing is not None and existing.plugin != plugin_name:
                self._conflicts[(kind, name)] = [existing.plugin, plugin_name]
                raise DuplicateComponentError(
                    f"{kind} {name!r} is registered by two plugins: {existing.plugin!r} and {plugin_name!r}. "
                    f"Uninstall or disable one (MINT_DISABLE_PLUGINS={plugin_name}).")
            self.components[kind][name] = ComponentSpec(kind=kind, name=name, factory=factory, plugin=plugin_name,
                                                        config=config, description=description,
                                                        pairs_with=dict(pairs_with or {}),
                                                        demo={k: dict(v) for k, v in (demo or {}).items()})
            info.provides.append(f"{kind}:{name}")
        return register

    def _drop_components_of(self, plugin_name: str) -> None:
        for kind in KINDS:
            for name in [n for n, spec in self.components[kind].items() if spec.plugin == plugin_name]:
                del self.components[kind][name]
        self.plugins[plugin_name].provides = []

    def _fail(self, info: PluginInfo, exc: BaseException) -> None:
        if self.strict:
            raise exc
        info.status = "failed"
        info.error = f"{type(exc).__name__}: {exc}"
        info.traceback = "".join(traceback.format_exception(exc))

    # -- lookup ------------------------------------------------------------------------------
    def names(self, kind: Kind) -> list[str]:
        return sorted(self.components[kind])

    def get(self, kind: Kind, name: str) -> ComponentSpec:
        """The component ``name`` of ``kind``, or an error that suggests the closest name."""
        if (kind, name) in self._conflicts:
            first, second = self._conflicts[(kind, name)]
            raise DuplicateComponentError(f"{kind} {name!r} is registered by two plugins: {first!r} and {second!r}")
        try:
            return self.components[kind][name]
        except KeyError:
            pass
        options = self.names(kind)
        guess = suggest(name, options)
        hint = f" Did you mean {guess!r}?" if guess else ""
        available = ", ".join(options) if options else "none installed"
        raise UnknownComponentError(f"Unknown {kind} {name!r}.{hint} Available: {available} "
                                    f"(see 'mint plugins list')") from None

    def create(self, kind: Kind, name: str, config: Any = None) -> Any:
        return self.get(kind, name).create(config)


_registry: Registry | None = None


def get_registry(*, reload: bool = False) -> Registry:
    """The process-wide registry, loading entry points on first use."""
    global _registry
    if _registry is None or reload:
        registry = Registry()
        registry.load_entry_points()
        _registry = registry
    return _registry


def set_registry(registry: Registry | None) -> None:
    """Replace the process-wide registry (tests, embedding applications)."""
    global _registry
    _registry = registry
