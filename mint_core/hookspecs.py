"""MINT's hook specifications: the contract between the core and every plugin.

A plugin is a module (or object) with functions decorated by :data:`hookimpl`, exposed through
the ``mint`` entry-point group of its distribution::

    [project.entry-points.mint]
    simpo = "mint_simpo"

Each registration hook receives ``register``, a callable with this signature::

    register(name, factory, *, config=None, description="", pairs_with=None, demo=None)

- ``name``: the component's registry name (``--teacher NAME``), unique per kind.
- ``factory``: ``factory(config) -> component``, called only when a run uses the component.
  Import torch and friends inside it, never at module level: listing plugins must stay fast.
- ``config``: a dataclass whose fields (with defaults and docstring-style ``metadata["help"]``)
  are the component's options (``teacher.epochs=3``). ``None`` means no options.
- ``description``: one line shown by ``mint plugins list``.
- ``pairs_with``: defaults for the other sections when this component is picked explicitly,
  e.g. ``{"task": "tissue", "student": "llama-vision"}`` for a pathology teacher.
- ``demo``: demo sizing for runs started without a config file, ``{section: {option: value}}``,
  applied over the core's demo layer when this component is chosen (the tissue task trains its
  vision student a fixed number of steps). Options a chosen component lacks are ignored.

Hooks are called with keyword arguments only and are only ever extended: new arguments may be
added, none removed, so a plugin written today keeps working.
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "mint"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


@hookspec
def mint_register_tasks(register: Register) -> None:
    """Register tasks: data sources with a label space. Factories return a :class:`mint_core.components.Task`."""


@hookspec
def mint_register_teachers(register: Register) -> None:
    """Register teachers: multimodal rankers. Factories return a :class:`mint_core.components.Teacher`."""


@hookspec
def mint_register_builders(register: Register) -> None:
    """Register preference builders. Factories return a :class:`mint_core.components.PreferenceBuilder`."""


@hookspec
def mint_register_optimizers(register: Register) -> None:
    """Register optimizers and baselines. Factories return a :class:`mint_core.components.Optimizer`."""


@hookspec
def mint_register_students(register: Register) -> None:
    """Register students: unimodal LLMs. Factories return a :class:`mint_core.components.Student`."""


@hookspec
def mint_register_commands(cli: object) -> None:
    """Add commands to the ``mint`` CLI: ``cli`` is the root :class:`click.Group`; call ``cli.add_command``."""
