"""The run context handed to every component: where to write, which seed, how to report."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = logging.getLogger("mint")


@dataclass
class RunContext:
    """Everything a component needs from the run besides its own config.

    ``run_dir`` holds the run's artifacts; components write only under ``path(...)`` and
    always atomically (:mod:`mint_core.io`).
    """

    run_dir: Path
    seed: int = 0
    console: Console = field(default_factory=lambda: Console(stderr=True))
    #: The resolved configuration of the whole run (section -> dict), for components that
    #: need to know their neighbours (a student's modality, the eval section).
    config: dict[str, Any] = field(default_factory=dict)
    #: Sections of the run config, filled by the pipeline: ``{"task": TaskData, ...}``.
    extras: dict[str, Any] = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        """A path inside the run directory, its parent created."""
        target = self.run_dir.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def resolve(self, path: str | Path) -> Path:
        """Resolve a path stored in an artifact (relative to the run directory) to a real path."""
        path = Path(path)
        return path if path.is_absolute() else self.run_dir / path

    def log(self, message: str) -> None:
        """A line for the person watching, also kept in the run's log file."""
        log.info(message)
        self.console.print(message, highlight=False)

    @contextmanager
    def progress(self) -> Iterator[Progress]:
        """A rich progress display: ``with ctx.progress() as p: task = p.add_task("train", total=n)``."""
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=False) as progress:
            original = progress.add_task

            def add_task(description: str, *args: Any, status: str = "", **kwargs: Any):
                return original(description, *args, status=status, **kwargs)

            progress.add_task = add_task  # type: ignore[method-assign]
            yield progress
