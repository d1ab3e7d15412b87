"""Run configuration: defaults < config file < CLI flags < ``section.key=value`` overrides.

A resolved configuration is a plain dict, saved as the run's ``config.yaml``::

    name: demo
    seed: 0
    task:      {name: rare-disease, source: hpo-sim, ...every option of the task...}
    teacher:   {name: gestalt, ...}
    builder:   {name: topk, ...}
    optimizer: {name: orpo, ...}
    student:   {name: llama-text, ...}
    eval:      {mode: generation, ...}
    compare:   {learning_rates: ''}         # mint compare only: per-method learning rates

Component names are picked first, because the options a section accepts depend on the
component: ``teacher.epochs`` is valid for ``gestalt`` and unknown for ``predictions``.
A component chosen explicitly may pick defaults for its neighbours (``pairs_with``): choosing
``--teacher pathclip`` selects the tissue task and the vision student unless those were chosen too.

Every value is checked where the configuration is built (so ``mint validate`` catches it): against
its field's type, and against the bounds in the field's metadata, one mechanism for every plugin::

    learning_rate: float = field(default=2e-4, metadata={"help": "...", "gt": 0})
    max_steps: int = field(default=-1, metadata={"help": "...; -1 uses epochs", "min": -1})

``min`` / ``max`` are inclusive bounds, ``gt`` / ``lt`` exclusive ones; ``None`` always passes
(an optional field's "unset"). Floats must be finite everywhere: ``nan`` and ``inf`` are rejected.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from mint_core.registry import KINDS, MintError, Registry, suggest

SECTIONS = (*KINDS, "eval", "compare")
TOP_LEVEL = ("name", "seed")
#: Bounds metadata keys and the comparison each stands for (see the module docstring).
BOUNDS = {"min": (lambda v, b: v >= b, ">="), "max": (lambda v, b: v <= b, "<="),
          "gt": (lambda v, b: v > b, ">"), "lt": (lambda v, b: v < b, "<")}
DEFAULT_NAMES = {"task": "rare-disease", "teacher": "gestalt", "builder": None, "optimizer": "orpo",
                 "student": "llama-text"}
DEFAULT_BUILDER = "topk"


class ConfigError(MintError):
    pass


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML run config; errors name the file and what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file {path} does not exist (--config).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Config file {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8.") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of sections, not {type(data).__name__}.")
    for key, value in data.items():
        if key in SECTIONS:
            if isinstance(value, str):  # `teacher: pathclip` is shorthand for `teacher: {name: pathclip}`
                data[key] = {"name": value}
            elif value is not None and not isinstance(value, dict):
                raise ConfigError(f"{path}: section {key!r} must be a mapping, not {type(value).__name__}.")
        elif key not in TOP_LEVEL:
            raise ConfigError(_unknown_key_message(f"{path}: unknown top-level key {key!r}.", key,
                                                   [*SECTIONS, *TOP_LEVEL]))
    return data


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["task.source=phenopackets", "seed=3"]`` -> nested dict, values parsed as YAML scalars."""
    result: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} is not of the form section.key=value (e.g. teacher.epochs=5).")
        dotted, raw = item.split("=", 1)
        value = _parse_scalar(raw)
        parts = dotted.strip().split(".")
        if len(parts) == 1:
            if parts[0] not in TOP_LEVEL and parts[0] not in SECTIONS:
                raise ConfigError(_unknown_key_message(f"Override {item!r}: unknown key {parts[0]!r}.", parts[0],
                                                       [*TOP_LEVEL, *SECTIONS]))
            if parts[0] in SECTIONS:  # `teacher=pathclip` picks the component
                result.setdefault(parts[0], {})["name"] = value
            else:
                result[parts[0]] = value
        elif len(parts) == 2:
            section, key = parts
            if section not in SECTIONS:
                raise ConfigError(_unknown_key_message(f"Override {item!r}: unknown section {section!r}.", section,
                                                       SECTIONS))
            result.setdefault(section, {})[key] = value
        else:
            raise ConfigError(f"Override {item!r}: use section.key=value with one dot.")
    return result


def _parse_scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw


def _unknown_key_message(head: str, key: str, options: Sequence[str]) -> str:
    guess = suggest(key, options)
    hint = f" Did you mean {guess!r}?" if guess else ""
    return f"{head}{hint} Valid keys: {', '.join(options)}."


def _merge(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            elif isinstance(value, Mapping):
                merged[key] = dict(value)
            else:
                merged[key] = value
    return merged


#: Demo-sized settings, the lowest layer of a run started without ``--config``: the offline demo
#: must finish in minutes on 2 CPU cores. A config file, a saved run, or an override replaces them
#: (``optimizer.max_steps=-1`` trains full epochs). Keys a component lacks are ignored.
DEMO_DEFAULTS: dict[str, dict[str, Any]] = {
    # 4 epochs of the demo's 160 pairs at lr 1e-3, answer-only NLL, LoRA on the top 8 layers (epochs
    # 2-4 reuse the frozen bottom's states): benchmarks/demo_sweep.py on the validation split, README
    # "Demo sizing" (2 epochs at lr 2e-3 or 3e-3 left val top-10 at 0.20-0.25 against 0.60; top 4 = 0.45).
    "optimizer": {"epochs": 4, "max_steps": -1, "learning_rate": 1e-3, "batch_size": 4, "nll_on_prompt": False},
    "student": {"lora_layers": 8},
    # Every test case in both modes (hpo-sim: 60), generation capped for larger splits; see issue 10.
    # Batch 32: greedy answers to 32 demo prompts took 148 / 97 / 79 s at batch 8 / 16 / 32 (2 threads).
    "eval": {"max_cases": None, "max_generation_cases": 100, "batch_size": 64, "mode": "both"},
}


def resolve(registry: Registry, *, file: Mapping[str, Any] | None = None, flags: Mapping[str, Any] | None = None,
            overrides: Mapping[str, Any] | None = None, soft: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Resolve a full run configuration; raises :class:`ConfigError` / ``UnknownComponentError``.

    Layers, lowest first: component defaults, ``soft`` (options applied only where the chosen
    component has them, e.g. :data:`DEMO_DEFAULTS`), ``file``, ``flags``, ``overrides``. A file's
    options for a section are dropped when a flag or override picks another component there.
    """
    file = dict(file or {})
    flag_layer = {k: ({"name": v} if k in SECTIONS else v) for k, v in (flags or {}).items() if v is not None}
    explicit = _merge(file, flag_layer, overrides or {})

    names = _pick_names(registry, explicit)
    if soft is not None:  # a demo run: the chosen components' own demo sizing goes over the core's
        soft = _merge(soft, *(registry.get(kind, names[kind]).demo for kind in KINDS))
    resolved: dict[str, Any] = {"name": str(explicit.get("name") or "default"), "seed": _seed(explicit.get("seed", 0))}
    for kind in KINDS:
        spec = registry.get(kind, names[kind])
        valid = {name for name, *_ in spec.config_fields()}
        file_section = dict(file.get(kind) or {})
        if file_section.get("name") not in (None, spec.name):
            file_section = {}  # the file configured another component for this section
        options = {k: v for k, v in (soft or {}).get(kind, {}).items() if k in valid}
        options.update(file_section)
        options.update((overrides or {}).get(kind) or {})
        options.pop("name", None)
        resolved[kind] = {"name": spec.name, **config_to_dict(build_config(spec.config, options, section=kind,
                                                                           component=spec.name))}
    from mint_core.evaluation import EvalConfig  # the core's own eval section

    eval_options = {**(soft or {}).get("eval", {}), **(explicit.get("eval") or {})}
    resolved["eval"] = config_to_dict(build_config(EvalConfig, eval_options, section="eval", component=None))
    compare_options = {**(soft or {}).get("compare", {}), **(explicit.get("compare") or {})}
    resolved["compare"] = config_to_dict(build_config(CompareConfig, compare_options, section="compare",
                                                      component=None))
    return resolved


@dataclasses.dataclass
class CompareConfig:
    """``mint compare``'s own options (the ``compare`` section; ``mint run`` ignores it)."""

    learning_rates: str = dataclasses.field(default="", metadata={
        "help": "Per-method learning rates over the shared one, e.g. 'dpo=2e-4,kto=1e-4': a comparison is "
                "fair when each method trains at its own rate, chosen on the validation split "
                "(benchmarks/method_lr_sweep.py). Methods not named use the run's optimizer learning rate."})

    def __post_init__(self) -> None:
        method_learning_rates(self.learning_rates)  # fail at resolve time, naming the flag


def method_learning_rates(text: str) -> dict[str, float]:
    """``"dpo=2e-4, kto=1e-4"`` -> ``{"dpo": 0.0002, "kto": 0.0001}``; a clear error for anything else."""
    rates: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in str(text or "").split(","))):
        method, sep, value = item.partition("=")
        try:
            rate = float(value) if sep and method.strip() else float("nan")
        except ValueError:
            rate = float("nan")
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"compare.learning_rates item {item!r}: expected method=rate with a positive rate, "
                             "e.g. compare.learning_rates=dpo=2e-4,kto=1e-4")
        rates[method.strip()] = rate
    return rates


def _seed(value: Any) -> int:
    """The run seed: a non-negative integer (numpy's generators reject negative seeds)."""
    seed = _coerce(value, int, where="seed", cls=object)
    if seed < 0:
        raise ConfigError(f"seed={seed} is negative: use an integer >= 0 (--seed N or seed=N).")
    return seed


def _pick_names(registry: Registry, explicit: Mapping[str, Any]) -> dict[str, str]:
    names: dict[str, str | None] = {kind: (explicit.get(kind) or {}).get("name") for kind in KINDS}
    chosen = {kind for kind, name in names.items() if name}
    # Pairing: explicitly chosen components fill the sections nobody chose, in a fixed order so
    # the result never depends on dict ordering. The teacher speaks first: it defines the task.
    for kind in ("teacher", "task", "optimizer", "student", "builder"):
        if kind not in chosen:
            continue
        for other, name in registry.get(kind, names[kind]).pairs_with.items():
            if other in KINDS and not names.get(other):
                names[other] = name
    for kind, default in DEFAULT_NAMES.items():
        if not names[kind]:
            names[kind] = default
    if not names["builder"]:
        optimizer = registry.get("optimizer", names["optimizer"])
        names["builder"] = optimizer.pairs_with.get("builder", DEFAULT_BUILDER)
    return names  # type: ignore[return-value]


def build_config(cls: type | None, options: Mapping[str, Any], *, section: str, component: str | None) -> Any:
    """An instance of a component's config dataclass from ``options``, each value checked and coerced."""
    if cls is None:
        if options:
            raise ConfigError(f"[{section}] {component!r} takes no options, got: {', '.join(options)}.")
        return None
    valid = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in options.items():
        if key not in valid:
            owner = f"{section} {component!r}" if component else section
            raise ConfigError(_unknown_key_message(f"Unknown key {section}.{key} for {owner}.", key, sorted(valid)))
        values[key] = _coerce(value, valid[key].type, where=f"{section}.{key}", cls=cls)
        check_bounds(values[key], valid[key], where=f"{section}.{key}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}] invalid options for {component or section}: {exc}") from exc


def check_bounds(value: Any, spec: dataclasses.Field, *, where: str) -> None:
    """Raise :class:`ConfigError` when ``value`` breaks a bound in ``spec.metadata`` (``min``, ``max``,
    ``gt``, ``lt``); the message names the option, the bound and the option's help."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    for key, (holds, symbol) in BOUNDS.items():
        bound = spec.metadata.get(key)
        if bound is not None and not holds(value, bound):
            help_text = spec.metadata.get("help", "")
            raise ConfigError(f"{where}={value!r} is out of range: it must be {symbol} {bound}."
                              + (f" ({where}: {help_text})" if help_text else ""))


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config) if config is not None else {}


def _coerce(value: Any, annotation: Any, *, where: str, cls: type) -> Any:
    """Check ``value`` against a field annotation (string annotations resolved), converting safely."""
    if isinstance(annotation, str):
        try:
            annotation = typing.get_type_hints(cls).get(where.split(".", 1)[1], annotation)
        except Exception:  # noqa: BLE001 - an unresolvable annotation is simply not checked
            return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any or annotation is None:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where=where, cls=cls)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}={value!r} is not one of: {', '.join(map(str, args))}.")
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        items = value if isinstance(value, (list, tuple)) else [v.strip() for v in str(value).split(",") if v.strip()]
        if len(args) == 1 or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
            items = [_coerce(item, args[0], where=where, cls=cls) for item in items]  # ks=1,3,10 -> [1, 3, 10]
        if annotation in (list, tuple):
            return annotation(items)
        return tuple(items) if origin is tuple else list(items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in {"true", "1", "yes", "on"}:
            return True
        if str(value).lower() in {"false", "0", "no", "off"}:
            return False
        raise ConfigError(f"{where}={value!r} is not a boolean (true/false).")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
            return int(value)
        raise ConfigError(f"{where}={value!r} is not an integer.")
    if annotation is float:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{where}={value!r} is not a number.") from None
        if isinstance(value, bool) or not math.isfinite(number):
            raise ConfigError(f"{where}={value!r} is not a finite number.")
        return number
    if annotation is str:
        return "" if value is None else str(value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping.")
        return value
    return value


def instantiate(registry: Registry, resolved: Mapping[str, Any], kind: str) -> Any:
    """Create the component of section ``kind`` from a resolved config."""
    section = dict(resolved[kind])
    name = section.pop("name")
    spec = registry.get(kind, name)  # type: ignore[arg-type]
    return spec.create(build_config(spec.config, section, section=kind, component=name))
