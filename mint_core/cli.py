"""The ``mint`` command line: composes registry components into runs.

    mint plugins list [--json]          what is installed, and whether it loaded
    mint plugins info NAME              one plugin's components and their options
    mint validate [flags] [overrides]   resolve a config without building anything
    mint teach | prefs | train | eval   one stage, reading the previous stage's artifacts
    mint run [flags] [overrides]        all four stages (no flags: the offline demo)
    mint compare [flags] [overrides]    base, RAG, SFT, DPO, KTO, ORPO... on one task and split
    mint predict --run-dir R [INPUT]    a trained student on new cases (answers + label ranking)
    mint export --run-dir R --out DIR   the adapter / merged model with a model card, or --preferences

Overrides are trailing ``section.key=value`` words (``teacher.epochs=5 seed=3``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mint_core import __version__
from mint_core.registry import KINDS, MintError, Registry, get_registry

console = Console()
err_console = Console(stderr=True)


def _component_options(func: Callable) -> Callable:
    """The options every config-taking command shares."""
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Run config (YAML)."),
        click.option("--run-dir", type=click.Path(file_okay=False), help="Run directory (default: runs/<name>)."),
        click.option("--name", help="Run name (default: from the config, else task-teacher-optimizer)."),
        click.option("--seed", type=int, help="Seed for python, numpy and torch."),
        *(click.option(f"--{kind}", kind, metavar="NAME", help=f"{kind.capitalize()} component (registry name).")
          for kind in KINDS),
        click.argument("overrides", nargs=-1),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _resolve_run(registry: Registry, *, config_file: str | None, run_dir: str | None, name: str | None,
                 seed: int | None, overrides: tuple[str, ...], **components: str | None) -> tuple[dict, Path]:
    from mint_core.config import DEMO_DEFAULTS, load_config_file, parse_overrides, resolve

    file_layer: dict[str, Any] = {}
    saved = Path(run_dir) / "config.yaml" if run_dir else None
    if config_file:
        file_layer = load_config_file(config_file)
    elif saved is not None and saved.exists():
        file_layer = load_config_file(saved)  # a stage run on an existing run directory continues it
    flags = {kind: components.get(kind) for kind in KINDS}
    flags.update(name=name, seed=seed)
    # Without a config file, runs are demo-sized (see DEMO_DEFAULTS; `mint validate` shows them).
    resolved = resolve(registry, file=file_layer, flags=flags, overrides=parse_overrides(overrides),
                       soft=None if file_layer else DEMO_DEFAULTS)
    if not (name or file_layer.get("name") or parse_overrides(overrides).get("name")):
        resolved["name"] = f"{resolved['task']['name']}-{resolved['teacher']['name']}-{resolved['optimizer']['name']}"
    return resolved, Path(run_dir) if run_dir else Path("runs") / resolved["name"]


def _open_run(**kwargs: Any):
    from mint_core import distributed
    from mint_core.pipeline import Run

    if not distributed.is_main():  # under a launcher, process 0 alone prints (and writes)
        console.quiet = err_console.quiet = True
    registry = get_registry()
    config, run_dir = _resolve_run(registry, **kwargs)
    run = Run(registry=registry, config=config, run_dir=run_dir, console=err_console)
    run.save_config()
    err_console.print(f"[bold]run[/bold] {run_dir}  (task {config['task']['name']}, teacher "
                      f"{config['teacher']['name']}, builder {config['builder']['name']}, optimizer "
                      f"{config['optimizer']['name']}, student {config['student']['name']}, seed {config['seed']})")
    return run


class MintGroup(click.Group):
    """Adds plugin commands lazily and turns MintError into a clean message and exit code 2."""

    def _load_plugin_commands(self) -> None:
        if getattr(self, "_plugins_loaded", False):
            return
        self._plugins_loaded = True
        get_registry().pm.hook.mint_register_commands(cli=self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self._load_plugin_commands()
            command = super().get_command(ctx, cmd_name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        # The one place errors become messages. MintError: bad input, said by the code that found it.
        # OSError: the file system refused (permission, disk full, a name too long); its message names
        # the file. Anything else is a bug in MINT or a plugin and keeps its traceback.
        # MINT_DEBUG=1 re-raises both, for the full traceback.
        try:
            return super().invoke(ctx)
        except (MintError, OSError) as exc:
            if os.environ.get("MINT_DEBUG", "").strip() in {"1", "true", "yes"}:
                raise
            message = str(exc) if isinstance(exc, MintError) else _os_error_message(exc)
            # The message is plain text: brackets in it ("[1, 3]", a file name) are not rich markup.
            err_console.quiet = False  # every process says its error (_error_text says why)
            err_console.print(_error_text(message), highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code if isinstance(exc, MintError) else 1)


def _error_text(message: str) -> Text:
    """The error line, named by process under a launcher.

    Processes other than 0 print nothing else (``_open_run``), but each prints its error: when process
    1 fails first, torchrun stops process 0 before it prints the same error (seen in CI on an AVX2
    host), and an error that only process 1 meets would otherwise not be shown at all.
    """
    from mint_core import distributed

    label = f"Error (process {distributed.rank()}):" if distributed.active() else "Error:"
    return Text.assemble((label, "bold red"), " ", message)


def _os_error_message(exc: OSError) -> str:
    """``[Errno 36] File name too long: 'x'`` -> ``File name too long: x`` (MINT_DEBUG=1 shows the traceback)."""
    reason = exc.strerror or str(exc)
    files = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    return f"{reason}: {files}" if files else reason


@click.group(cls=MintGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mint")
def cli() -> None:
    """MINT: align unimodal LLMs with multimodal biomedical teachers through preference optimization."""


# -- plugins -------------------------------------------------------------------------------------
@cli.group()
def plugins() -> None:
    """Installed plugins and the components they provide."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def plugins_list(as_json: bool) -> None:
    """Every plugin of the 'mint' entry-point group: version, status, what it provides."""
    registry = get_registry()
    infos = sorted(registry.plugins.values(), key=lambda p: p.name)
    if as_json:
        click.echo(json.dumps([info.to_dict() for info in infos], indent=2))
        return
    table = Table(title="MINT plugins")
    for column in ("name", "version", "status", "provides"):
        table.add_column(column)
    colors = {"ok": "green", "failed": "red", "blocked": "yellow"}
    for info in infos:
        provides = ", ".join(info.provides) if info.status == "ok" else info.error
        table.add_row(info.name, info.version, f"[{colors[info.status]}]{info.status}[/]", provides)
    console.print(table)


@plugins.command("info")
@click.argument("name")
def plugins_info(name: str) -> None:
    """One plugin's components with their config fields, types and defaults."""
    from mint_core.registry import suggest

    registry = get_registry()
    if name not in registry.plugins:
        guess = suggest(name, registry.plugins)
        hint = f" Did you mean {guess!r}?" if guess else ""
        raise MintError(f"Unknown plugin {name!r}.{hint} Available: {', '.join(sorted(registry.plugins))}")
    info = registry.plugins[name]
    console.print(f"[bold]{info.name}[/bold] {info.version} ({info.distribution or 'local'}): {info.status}")
    if info.error:
        console.print(f"[red]{info.error}[/red]")
    for kind in KINDS:
        for spec in registry.components[kind].values():
            if spec.plugin != name:
                continue
            table = Table(title=f"{kind} {spec.name}: {spec.description}", title_justify="left")
            for column in ("option", "type", "default", "help"):
                table.add_column(column)
            for field_name, field_type, default, help_text in spec.config_fields():
                table.add_row(f"{kind}.{field_name}", field_type, repr(default), help_text)
            console.print(table)
            if spec.pairs_with:
                console.print("  pairs with: " + ", ".join(f"{k}={v}" for k, v in spec.pairs_with.items()))


# -- config --------------------------------------------------------------------------------------
@cli.command()
@_component_options
def validate(**kwargs: Any) -> None:
    """Resolve and check a run configuration without building anything; print it as YAML."""
    import yaml

    config, run_dir = _resolve_run(get_registry(), **kwargs)
    click.echo(yaml.safe_dump(config, sort_keys=False), nl=False)
    err_console.print(f"[green]valid[/green] (run dir {run_dir})")


# -- stages --------------------------------------------------------------------------------------
@cli.command()
@_component_options
def teach(**kwargs: Any) -> None:
    """Load the task, fit the teacher if it needs fitting, rank every case."""
    _open_run(**kwargs).teach()


@cli.command()
@_component_options
def prefs(**kwargs: Any) -> None:
    """Build preference data from the teacher's rankings."""
    _open_run(**kwargs).prefs()


@cli.command()
@_component_options
def train(**kwargs: Any) -> None:
    """Align the student with the chosen optimizer (resumes from its last checkpoint)."""
    _open_run(**kwargs).train()


@cli.command("eval")
@click.option("--roles", default="", help="Comma-separated roles to evaluate: base and/or optimizer names "
                                           "(default: base and the run's optimizer if trained).")
@_component_options
def eval_command(roles: str, **kwargs: Any) -> None:
    """Evaluate the base student and the aligned student(s) on the test split."""
    run = _open_run(**kwargs)
    chosen = [r.strip() for r in roles.split(",") if r.strip()]
    if not chosen:
        chosen = ["base"]
        if (run.student_dir(run.config["optimizer"]["name"]) / "result.json").exists():
            chosen.append(run.config["optimizer"]["name"])
    _show(run.evaluate(chosen), run_dir=run.run_dir)


@cli.command()
@_component_options
def run(**kwargs: Any) -> None:
    """All four stages. With no flags: the offline rare-disease demo (hpo-sim, gestalt, ORPO, SmolLM2)."""
    mint_run = _open_run(**kwargs)
    mint_run.teach()
    mint_run.prefs()
    mint_run.train()
    _show(mint_run.evaluate(["base", mint_run.config["optimizer"]["name"]]), run_dir=mint_run.run_dir)
    err_console.print(f"report: {mint_run.run_dir / 'report.md'}")


@cli.command()
@click.option("--methods", default="", help="Comma-separated methods (default: base, rag, sft, dpo, kto, orpo "
                                             "and every other installed optimizer).")
@click.option("--seeds", default="", help="Comma-separated training seeds, e.g. 0,1,2: each trains and evaluates "
                                           "every method on the shared teacher and preferences; mean ± sd reported.")
@_component_options
def compare(methods: str, seeds: str, **kwargs: Any) -> None:
    """The paper's grid on one task and split, sharing one teacher and one preference set."""
    from mint_core.compare import run_comparison

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()] or None
    except ValueError:
        raise MintError(f"--seeds {seeds!r}: expected comma-separated integers such as 0,1,2") from None
    mint_run = _open_run(**kwargs)
    chosen = [m.strip() for m in methods.split(",") if m.strip()] or None
    results = run_comparison(mint_run, methods=chosen, explicit_overrides=kwargs.get("overrides", ()),
                             seeds=seed_list)
    from mint_core import io
    from mint_core.compare import seeds_table

    comparison = io.read_json(mint_run.run_dir / "comparison.json")
    _show(results, title="MINT comparison", deltas=comparison.get("deltas") or [])  # ORPO - each method too
    seed_summary = comparison.get("seeds")
    if seed_summary:
        console.print(seeds_table(seed_summary))


# -- using a trained student ---------------------------------------------------------------------
@cli.command()
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="A finished run directory.")
@click.option("--role", default="orpo", show_default=True, help="Which student: an optimizer trained in the run, or base.")
@click.option("--constrained", is_flag=True, help="Greedy generation restricted to the label names (no hallucination).")
@click.option("--top", default=10, show_default=True, type=click.IntRange(0), help="Labels of the ranking to show.")
@click.option("--no-rank", is_flag=True, help="Skip ranking the label space (generation only).")
@click.option("--json", "as_json", is_flag=True, help="Write one JSON object per case (JSONL) to stdout.")
@click.argument("input_path", metavar="[INPUT]", required=False)
def predict(run_dir: str, role: str, constrained: bool, top: int, no_rank: bool, as_json: bool,
            input_path: str | None) -> None:
    """Answer new cases with a run's student: INPUT is a text file (one case per line), JSONL (id, text,
    image), a phenopacket file or folder, or '-' / nothing for standard input."""
    from mint_core.predict import Predictor, predictions_table

    predictor = Predictor(run_dir, role=role, console=err_console)
    cases = predictor.read(input_path)
    err_console.print(f"predict: {len(cases)} case(s), student {role}" + (" (constrained)" if constrained else ""))
    results = predictor.predict(cases, constrained=constrained, top=top, rank=not no_rank)
    if as_json:
        for prediction in results:
            click.echo(json.dumps(prediction.to_dict()))
        return
    console.print(predictions_table(results, predictor.labels, top=top))


@cli.command("export")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="A finished run directory.")
@click.option("--role", default="orpo", show_default=True, help="Which student: an optimizer trained in the run, or base.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--merged", is_flag=True, help="The base model with the adapter merged in (plain transformers loads it).")
@click.option("--preferences", is_flag=True, help="Export the run's preference data (TRL conversational JSONL) instead.")
@click.option("--builder", default=None, help="With --preferences: another builder's examples (default: the run's).")
def export_command(run_dir: str, role: str, out_dir: str, merged: bool, preferences: bool, builder: str | None) -> None:
    """Write a run's student (LoRA adapter, or --merged model) with a model card, or its --preferences."""
    from mint_core.export import export_model, export_preferences

    if preferences:
        if merged:
            raise MintError("--preferences and --merged do not go together: export the data and the model separately")
        path = export_preferences(run_dir, out_dir=out_dir, builder=builder)
        err_console.print(f"preferences: {path} (TRL conversational format)")
        return
    out = export_model(run_dir, role=role, out_dir=out_dir, merged=merged, console=err_console)
    err_console.print(f"exported {role}{' (merged)' if merged else ' adapter'}: {out} (model card {out / 'README.md'})")


def _show(all_metrics: dict[str, dict[str, Any]], title: str = "MINT results", run_dir: Path | None = None,
          deltas: list[dict[str, Any]] | None = None) -> None:
    """The closing tables (fit the terminal, at most 100 columns), then the paired differences:
    ``deltas``, else the run's ``deltas.json``."""
    from mint_core import io
    from mint_core.report import TABLE_WIDTH, deltas_table, metrics_tables

    for table in metrics_tables(all_metrics, title=title, width=min(console.width, TABLE_WIDTH)):
        console.print(table)
    deltas_path = run_dir / "deltas.json" if run_dir is not None else None
    if deltas is None and deltas_path is not None and deltas_path.exists():
        deltas = io.read_json(deltas_path)
    if deltas:
        console.print(deltas_table(deltas))


def main() -> None:
    from mint_core import distributed

    if not distributed.active():
        cli(prog_name="mint")
        return
    # Under a launcher: end without the interpreter's finalization (distributed.exit_process says why).
    try:
        cli(prog_name="mint")
        status = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            status = exc.code or 0
        else:  # sys.exit("message"): Python would print it and end with 1
            print(exc.code, file=sys.stderr)
            status = 1
    except BaseException:  # noqa: BLE001 - shown as Python would, then the process ends with 1
        import traceback

        traceback.print_exc()
        status = 1
    distributed.exit_process(status)


if __name__ == "__main__":
    main()
